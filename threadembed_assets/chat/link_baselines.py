"""The obvious linkers a learned one must beat, online like it: "Previous" (the paper's baseline) and silence cuts."""

import numpy as np

from threadembed_assets.chat.corpus import Log


def previous_parents(log: Log) -> np.ndarray:
    """Each message's parent is the latest non-system line before it; a system line (and the first message) starts a
    conversation."""
    parents = np.arange(len(log))
    said = np.flatnonzero(~log.system)
    parents[said[1:]] = said[:-1]
    return parents


def silence_parents(log: Log, minutes: float) -> np.ndarray:
    """Like "Previous", but a message after a silence of more than `minutes` in the channel starts a conversation
    (the silence rule that cuts unlabelled chat into conversations)."""
    parents = previous_parents(log)
    said = np.flatnonzero(~log.system)
    gaps = log.minutes[said[1:]] - log.minutes[said[:-1]]
    cut = said[1:][gaps > minutes]
    parents[cut] = cut
    return parents
