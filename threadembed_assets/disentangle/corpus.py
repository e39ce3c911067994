"""Moved to `threadembed_assets.chat.corpus`; this path keeps working: it is the same module object
(private names and monkeypatching included), and objects pickled under this path still load."""

import sys

from threadembed_assets.chat import corpus

sys.modules[__name__] = corpus
