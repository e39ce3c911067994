"""Moved to `threadembed_assets.chat.link_baselines`; this path keeps working: it is the same module object
(private names and monkeypatching included), and objects pickled under this path still load."""

import sys

from threadembed_assets.chat import link_baselines

sys.modules[__name__] = link_baselines
