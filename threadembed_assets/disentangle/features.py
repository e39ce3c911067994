"""Moved to `threadembed_assets.chat.link_features`; this path keeps working: it is the same module object
(private names and monkeypatching included), and objects pickled under this path still load."""

import sys

from threadembed_assets.chat import link_features

sys.modules[__name__] = link_features
