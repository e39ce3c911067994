"""Moved to `threadembed_assets.chat.retrievers`; this path keeps working: it is the same module object
(private names and monkeypatching included), and objects pickled under this path still load."""

import sys

from threadembed_assets.chat import retrievers

sys.modules[__name__] = retrievers
