"""Moved to `threadembed_assets.evaluation.tasks`; this path keeps working: it is the same module object
(private names and monkeypatching included), and objects pickled under this path still load."""

import sys

from threadembed_assets.evaluation import tasks

sys.modules[__name__] = tasks
