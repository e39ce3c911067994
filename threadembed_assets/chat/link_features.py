"""Features of every (message, candidate parent) pair of a log, from what is known when the message arrives.

A message's candidates are itself (a new conversation) and the `window` lines before it. The pairs sit on a grid of
lines x offsets (offset k: the line k before; 0: itself) and every feature is computed on the whole grid at once. No
feature reads a line after the message: the same speaker's next line counts only as "before or after the message",
the vocabulary's weights are fixed when the linker is fitted, and a nick counts as one only once it has spoken.

| feature | what |
| --- | --- |
| `is_self`, `log_offset` | the message itself; log(1 + lines between) |
| `log_minutes`, `minutes_rank` | log(1 + minutes between); the candidate's place by time among the message's |
| `message_system`, `candidate_system` | joins, parts, quits and nick changes |
| `same_speaker` | one nick wrote both |
| `speaker_previous` | the candidate is the message's speaker's line before it |
| `candidate_speaker_last` | the candidate is its speaker's latest line before the message |
| `addresses_candidate`, `mentions_candidate` | the message begins with (names anywhere) the candidate's speaker |
| `candidate_addresses`, `candidate_mentions` | the candidate begins with (names anywhere) the message's speaker |
| `addresses_other` | the message begins with a nick that is not the candidate's speaker |
| `speaker_seen`, `log_speaker_gap` | the message's speaker spoke in the window; log(1 + lines since) |
| `tfidf`, `tfidf_rank` | cosine of the TF-IDF vectors; the candidate's place by it among the message's |
| `dense`, `dense_rank` | cosine of the model's vectors; the candidate's place by it |
| `message_question`, `candidate_question` | a `?` in the message / the candidate |
| `message_words`, `candidate_words` | log(1 + words) |
| `message_url`, `candidate_url` | a link |

The conversation pass adds, for each candidate, features of the conversation it belongs to so far, as a first
linking pass (over the lines before the message only) cut the window into conversations:

| feature | what |
| --- | --- |
| `conversation_lines` | lines of the candidate's conversation in the window |
| `conversation_latest` | the candidate is its conversation's latest line before the message |
| `conversation_log_minutes` | log(1 + minutes) since the conversation's latest line |
| `conversation_tfidf`, `conversation_dense` | the best TF-IDF / model similarity of the message to a line of it |
| `conversation_speaker` | the message's speaker wrote in it |
| `conversation_named` | the message addresses or names a speaker of it |
"""

import re
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from threadembed_assets.chat.corpus import Log
from threadembed_assets.chat.features import mentioned_names, normalize_name

DEFAULT_WINDOW = 100
FEATURES = (
    "is_self",
    "log_offset",
    "log_minutes",
    "minutes_rank",
    "message_system",
    "candidate_system",
    "same_speaker",
    "speaker_previous",
    "candidate_speaker_last",
    "addresses_candidate",
    "mentions_candidate",
    "candidate_addresses",
    "candidate_mentions",
    "addresses_other",
    "speaker_seen",
    "log_speaker_gap",
    "tfidf",
    "tfidf_rank",
    "dense",
    "dense_rank",
    "message_question",
    "candidate_question",
    "message_words",
    "candidate_words",
    "message_url",
    "candidate_url",
)
CONVERSATION_FEATURES = (
    "conversation_lines",
    "conversation_latest",
    "conversation_log_minutes",
    "conversation_tfidf",
    "conversation_dense",
    "conversation_speaker",
    "conversation_named",
)
_ADDRESS = re.compile(r"^\s*([^\s:,<>]+)\s*[:,]")
_URL = re.compile(r"https?://|www\.")


@dataclass
class Grid:
    """The candidate pairs of a log: `parent[i, k]` is line i's k-th candidate (i - k), valid where `mask`."""

    parent: np.ndarray  # lines x (window + 1)
    mask: np.ndarray

    @classmethod
    def of(cls, n: int, window: int) -> "Grid":
        parent = np.arange(n)[:, None] - np.arange(window + 1)[None, :]
        return cls(np.maximum(parent, 0), parent >= 0)


def _rank(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """log(1 + place) of each candidate among its message's candidates, highest value first."""
    order = np.argsort(-np.where(mask, values, -np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :], axis=1)
    return np.log1p(ranks)


def _speaker_ids(log: Log) -> tuple[np.ndarray, dict[str, int]]:
    ids: dict[str, int] = {}
    out = np.array([ids.setdefault(normalize_name(s), len(ids)) if s else -1 for s in log.speakers])
    return out, ids


def _mentions(log: Log, speaker: np.ndarray, ids: dict[str, int], window: int) -> tuple[np.ndarray, np.ndarray]:
    """The (line, nick) codes (line * nicks + nick, sorted) of the nicks each line names, and the nick each line
    begins by addressing (-1: none); a nick counts only if it spoke in the line's window or at the line itself."""
    names, n_nicks = list(ids), max(len(ids), 1)
    last_said = np.full(n_nicks, -(window + 2))
    codes, addressed = [], np.full(len(log), -1)
    for line, text in enumerate(log.texts):
        if speaker[line] >= 0:
            last_said[speaker[line]] = line
        if log.system[line]:
            continue
        known = {names[n] for n in np.flatnonzero(last_said >= line - window)}
        codes += [line * n_nicks + ids[name] for name in mentioned_names(text, known, log.speakers[line])]
        if (match := _ADDRESS.match(text)) and normalize_name(match.group(1)) in known:
            addressed[line] = ids[normalize_name(match.group(1))]
    return np.sort(np.array(codes, dtype=np.int64)), addressed


def _named(codes: np.ndarray, n_nicks: int, lines: np.ndarray, nicks: np.ndarray) -> np.ndarray:
    """Whether each line names the nick beside it (nick < 0: False)."""
    return np.isin(lines * max(n_nicks, 1) + nicks, codes) & (nicks >= 0)


def band_similarity(left, right, grid: "Grid", chunk: int = 512) -> np.ndarray:
    """left[i] . right[parent[i, k]] over the grid, one (chunk x (chunk + window)) product at a time (dense arrays or
    sparse matrices), so memory stays bounded by the window."""
    n, width = grid.parent.shape
    out = np.zeros((n, width), dtype=np.float32)
    for start in range(0, n, chunk):
        end, low = min(start + chunk, n), max(start - width + 1, 0)
        block = left[start:end] @ right[low:end].T
        block = block.toarray() if sparse.issparse(block) else np.asarray(block)
        rows = np.arange(end - start)[:, None]
        out[start:end] = block[rows, grid.parent[start:end] - low]
    return np.where(grid.mask, out, 0.0)


def _same_speaker_neighbours(speaker: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each line, the same speaker's previous and next line (-1 / len: none)."""
    n = len(speaker)
    previous, following, last = np.full(n, -1), np.full(n, n), {}
    for line, nick in enumerate(speaker):
        if nick >= 0:
            if nick in last:
                previous[line], following[last[nick]] = last[nick], line
            last[nick] = line
    return previous, following


def log_features(log: Log, window: int, tfidf: sparse.csr_matrix, dense: np.ndarray | None) -> tuple[Grid, np.ndarray]:
    """The grid of `log` and its features (lines x (window + 1) x FEATURES), NaN where a value is unknown.

    `tfidf` holds the lines' L2-normalised TF-IDF rows, `dense` their L2-normalised vectors (None: unknown)."""
    n = len(log)
    grid = Grid.of(n, window)
    i = np.broadcast_to(np.arange(n)[:, None], grid.parent.shape)
    j = grid.parent
    speaker, ids = _speaker_ids(log)
    mentions, addressed = _mentions(log, speaker, ids, window)
    previous, following = _same_speaker_neighbours(speaker)
    words = np.array([len(t.split()) for t in log.texts])
    question = np.array(["?" in t for t in log.texts])
    url = np.array([bool(_URL.search(t)) for t in log.texts])
    minutes = np.maximum(log.minutes[i] - log.minutes[j], 0)
    has_speaker = (speaker[i] >= 0) & (speaker[j] >= 0)
    tfidf_cos = band_similarity(tfidf, tfidf, grid)
    dense_cos = band_similarity(dense, dense, grid) if dense is not None else np.full(grid.parent.shape, np.nan)
    previous = np.where(previous >= np.arange(n) - window, previous, -1)  # what the window shows
    values = {
        "is_self": i == j,
        "log_offset": np.log1p(i - j),
        "log_minutes": np.log1p(minutes),
        "minutes_rank": np.where(np.isnan(minutes), np.nan, _rank(-np.nan_to_num(minutes) - 1e-4 * (i - j), grid.mask)),
        "message_system": log.system[i],
        "candidate_system": log.system[j],
        "same_speaker": has_speaker & (speaker[i] == speaker[j]),
        "speaker_previous": previous[i] == j,
        "candidate_speaker_last": (following[j] >= i) & (i != j),
        "addresses_candidate": has_speaker & (addressed[i] == speaker[j]),
        "mentions_candidate": _named(mentions, len(ids), i, speaker[j]),
        "candidate_addresses": has_speaker & (addressed[j] == speaker[i]),
        "candidate_mentions": _named(mentions, len(ids), j, speaker[i]),
        "addresses_other": (addressed[i] >= 0) & (addressed[i] != speaker[j]),
        "speaker_seen": previous[i] >= 0,
        "log_speaker_gap": np.log1p(np.where(previous[i] >= 0, i - previous[i], window + 1)),
        "tfidf": tfidf_cos,
        "tfidf_rank": _rank(np.where(i == j, -1.0, tfidf_cos), grid.mask),
        "dense": dense_cos,
        "dense_rank": _rank(np.where(i == j, -1.0, dense_cos), grid.mask) if dense is not None else dense_cos,
        "message_question": question[i],
        "candidate_question": question[j],
        "message_words": np.log1p(words[i]),
        "candidate_words": np.log1p(words[j]),
        "message_url": url[i],
        "candidate_url": url[j],
    }
    return grid, np.stack([np.asarray(values[f], dtype=np.float32) for f in FEATURES], axis=-1)


def conversation_features(grid: Grid, roots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The conversation features (lines x (window + 1) x CONVERSATION_FEATURES) of a log's grid, from `roots` (each
    line's first line by a first linking pass, which reads nothing after the line) and the pair features `values`;
    NaN for the message itself."""
    column = {name: values[..., FEATURES.index(name)] for name in FEATURES}
    width = grid.parent.shape[1]
    label = np.where(grid.mask, roots[grid.parent], -1)
    seen = grid.mask.copy()
    seen[:, 0] = False  # the message's own conversation is what is being decided
    same = (label[:, :, None] == label[:, None, :]) & seen[:, None, :]  # candidate k and window line k' share one
    later = np.arange(width)[None, :] < np.arange(width)[:, None]  # line k' came after candidate k

    def best(pair: np.ndarray) -> np.ndarray:  # over the lines of the candidate's conversation (NaN stays unknown)
        return np.where(same, pair[:, None, :], -np.inf).max(axis=-1)

    named = (column["addresses_candidate"] + column["mentions_candidate"]) > 0
    out = {
        "conversation_lines": same.sum(axis=-1),
        "conversation_latest": ~(same & later[None]).any(axis=-1),
        "conversation_log_minutes": np.where(same, column["log_minutes"][:, None, :], np.inf).min(axis=-1),
        "conversation_tfidf": best(column["tfidf"]),
        "conversation_dense": best(column["dense"]),
        "conversation_speaker": best(column["same_speaker"]),
        "conversation_named": best(named.astype(np.float32)),
    }
    stacked = np.stack([np.asarray(out[f], dtype=np.float32) for f in CONVERSATION_FEATURES], axis=-1)
    stacked[:, 0] = np.nan
    return np.where(grid.mask[..., None], stacked, np.nan)
