"""Chat features of a (query, candidate) pair: what chat knows besides the words, for the ranker, the benchmark and
search alike.

A query is a moment in a channel (a thread query's own message; a response query's last prefix message) with the
messages it is made of; a candidate is a set of messages (a conversation, a window, one message). Every feature uses
only what is known without the answer: a thread query's own message is never part of its conversation's times,
authors, mentions or links (the task builder leaves it out), and nothing of a candidate depends on the query.

| feature | what |
| --- | --- |
| `dense`, `dense_window` | the model's cosine similarity to the whole candidate and to its best window |
| `dense_gap` | `dense` minus the best `dense` among the query's candidates (0 for the best) |
| `bm25`, `bm25_rel` | log(1 + BM25), and BM25 over the best BM25 among the query's candidates |
| `log_gap_minutes` | log(1 + minutes) to the candidate's nearest message in the channel |
| `log_gap_messages` | log(1 + messages) between the query's moment and the candidate's nearest message |
| `gap_rank` | log(1 + place) of the candidate among the query's candidates by that time gap (0: the nearest) |
| `inside_span` | the query's moment falls between the candidate's first and last message |
| `ended_before` | the candidate's last message is before the query's moment |
| `query_interleave` | log(1 + other messages between consecutive messages of a several-message query) |
| `candidate_density` | the share of the channel's messages within the candidate's span that are the candidate's |
| `author_participates` | an author of the query wrote in the candidate |
| `same_speaker` | the candidate's last message before the query's moment is by the query's last author |
| `query_mentions_candidate` | the query names an author of the candidate (`nick:` addressing, `<@...>`, `@name`) |
| `candidate_mentions_query` | a message of the candidate names an author of the query |
| `reply_link` | a native reply link joins the two (Discord and Slack replies; IRC has none) |
| `same_channel` | query and candidate are in one channel |
| `log_messages`, `log_chars` | the candidate's size |

Features that cannot be known are NaN (no timestamps, no authors, a platform without native replies), never zero:
the ranker imputes them and learns from a missing-indicator, so that where a platform lacks them it ranks by the
text signals alone.
"""

import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from scipy import sparse

FEATURES = (
    "dense",
    "dense_window",
    "dense_gap",
    "bm25",
    "bm25_rel",
    "log_gap_minutes",
    "log_gap_messages",
    "gap_rank",
    "inside_span",
    "ended_before",
    "query_interleave",
    "candidate_density",
    "author_participates",
    "same_speaker",
    "query_mentions_candidate",
    "candidate_mentions_query",
    "reply_link",
    "same_channel",
    "log_messages",
    "log_chars",
)
NATIVE_REPLY_PLATFORMS = frozenset({"discord", "slack"})  # IRC `reply_to` in annotated corpora is a label, not data

_EXPLICIT_MENTION = re.compile(r"<@[!&]?([^>|\s]+)(?:\|[^>]*)?>|(?<![\w<])@([\w.\-]+)")
_ADDRESSING = re.compile(r"^\s*([^\s:,<>@]+)\s*[:,]\s")
_WORD = re.compile(r"[\w\-\[\]\\`^{}|]+")
MIN_NAME_CHARS = 3  # a bare word counts as a mention only for names this long (explicit mentions always count)


def normalize_name(name: str) -> str:
    """One spelling of an author or mentioned name: lower case, no IRC decorations (`@nick`, `nick_`)."""
    return name.strip().lstrip("@+").rstrip("_`").lower()


def mentioned_names(text: str, known: set[str], author: str | None = None) -> list[str]:
    """Names of `known` authors (normalised) that `text` mentions: Slack and Discord `<@name>`, `@name`, IRC
    `nick:` / `nick,` addressing, or the bare name as a word (names of `MIN_NAME_CHARS`+ characters). The
    message's own `author` is never its own mention."""
    explicit = {normalize_name(a or b) for a, b in _EXPLICIT_MENTION.findall(text)}
    if match := _ADDRESSING.match(text):
        explicit.add(normalize_name(match.group(1)))
    words = {normalize_name(word) for word in _WORD.findall(text)}
    found = (explicit & known) | {w for w in words & known if len(w) >= MIN_NAME_CHARS}
    found.discard(normalize_name(author) if author else "")
    return sorted(found)


class ChatContext(Protocol):
    """What the features read of a task (see `chat.task.Task`): per query its moment (channel, time, channel
    order), authors, mentions, message ids and reply links; per candidate the same of its messages."""

    docs: list[str]
    query_platform: list[str]
    query_channel: list[str | None]
    query_ts: list[float | None]
    query_order: list[int]
    query_orders: list[list[int]]
    query_authors: list[list[str]]
    query_mentions: list[list[str]]
    query_message_ids: list[list[str]]
    query_reply_to: list[list[str]]
    doc_channel: list[str | None]
    doc_times: list[list[float]]
    doc_orders: list[list[int]]
    doc_authors: list[list[str]]  # the author of each message, aligned with `doc_orders`
    doc_mentions: list[list[str]]
    doc_message_ids: list[list[str]]
    doc_reply_to: list[list[str]]


def nearest_gaps(
    query_channel: Sequence,
    query_ts: Sequence,
    query_order: Sequence,
    doc_channel: Sequence,
    doc_times: Sequence[Sequence[float]],
    doc_orders: Sequence[Sequence[int]],
    chunk: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, messages) from each query's moment to the nearest message of each document in the same channel.

    Both are inf for a document of another channel; seconds are inf where a time is unknown.
    """
    n_queries, n_docs = len(query_order), len(doc_orders)
    seconds = np.full((n_queries, n_docs), np.inf)
    messages = np.full((n_queries, n_docs), np.inf)
    if not n_queries:
        return seconds, messages
    same = _same_channel(query_channel, doc_channel)
    points_ts = np.array([np.nan if t is None else t for t in query_ts], dtype=np.float64)
    points_order = np.array(query_order, dtype=np.float64)
    for values, points, out in [(doc_orders, points_order, messages), (doc_times, points_ts, seconds)]:
        lengths = np.array([len(v) for v in values])
        has = lengths > 0
        if not has.any():
            continue
        flat = np.concatenate([np.asarray(v, dtype=np.float64) for v in values if len(v)])
        offsets = np.concatenate([[0], np.cumsum(lengths[has])[:-1]])
        for start in range(0, n_queries, chunk):
            gaps = np.abs(flat[None, :] - points[start : start + chunk, None])
            nearest = np.minimum.reduceat(gaps, offsets, axis=1)
            out[start : start + chunk, has] = np.where(np.isnan(nearest), np.inf, nearest)
    seconds[~same] = np.inf
    messages[~same] = np.inf
    return seconds, messages


def _same_channel(query_channel: Sequence, doc_channel: Sequence) -> np.ndarray:
    codes = {name: code for code, name in enumerate(dict.fromkeys([*doc_channel, *query_channel]))}
    return np.array([codes[c] for c in query_channel])[:, None] == np.array([codes[c] for c in doc_channel])[None, :]


def candidate_pairs(n_queries: int, n_docs: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(query index, document index) of every candidate pair, grouped by query in query order."""
    if allowed is None:
        allowed = np.ones((n_queries, n_docs), dtype=bool)
    return np.nonzero(allowed)


def _membership(lists: Sequence[Sequence[str]], vocabulary: dict[str, int]) -> sparse.csr_matrix:
    """A (rows x vocabulary) 0/1 matrix: which names (or ids) each row holds."""
    rows, cols = [], []
    for row, items in enumerate(lists):
        for item in set(items):
            if item in vocabulary:
                rows.append(row)
                cols.append(vocabulary[item])
    data = np.ones(len(rows), dtype=np.float32)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(lists), len(vocabulary)))


def _shared(left: sparse.csr_matrix, right: sparse.csr_matrix, qi: np.ndarray, di: np.ndarray) -> np.ndarray:
    """1.0 where the pair's rows share an item, else 0.0 (one sparse product per pair list, no Python loop)."""
    if left.shape[1] == 0:
        return np.zeros(len(qi))
    return (np.asarray(left[qi].multiply(right[di]).sum(axis=1)).ravel() > 0).astype(np.float64)


def _per_query_max(values: np.ndarray, qi: np.ndarray) -> np.ndarray:
    """Each pair's query's maximum of `values` over that query's pairs (pairs grouped by query)."""
    starts = np.flatnonzero(np.r_[True, qi[1:] != qi[:-1]]) if len(qi) else np.array([], dtype=int)
    maxima = np.maximum.reduceat(values, starts) if len(qi) else values
    return np.repeat(maxima, np.diff(np.r_[starts, len(qi)]))


def _rank_within_query(values: np.ndarray, qi: np.ndarray) -> np.ndarray:
    """0-based place of each pair among its query's pairs by ascending `values` (ties share the lower place)."""
    order = np.lexsort((values, qi))
    ranks = np.empty(len(qi), dtype=np.float64)
    sorted_q, sorted_v = qi[order], values[order]
    new_group = np.r_[True, sorted_q[1:] != sorted_q[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(qi)), 0))
    new_value = np.r_[True, (sorted_v[1:] != sorted_v[:-1]) | new_group[1:]]
    first_of_value = np.maximum.accumulate(np.where(new_value, np.arange(len(qi)), 0))
    ranks[order] = first_of_value - group_start
    return ranks


def _interleave(orders: Sequence[Sequence[int]]) -> np.ndarray:
    """log(1 + mean other messages between consecutive messages) per item of several messages, else NaN."""
    values = np.full(len(orders), np.nan)
    for index, items in enumerate(orders):
        if len(items) > 1:
            values[index] = np.log1p(np.mean(np.diff(np.sort(items)) - 1))
    return values


def _density(orders: Sequence[Sequence[int]]) -> np.ndarray:
    """(messages - 1) / (channel positions spanned - 1) per item of several messages, else NaN."""
    values = np.full(len(orders), np.nan)
    for index, items in enumerate(orders):
        if len(items) > 1 and max(items) > min(items):
            values[index] = (len(items) - 1) / (max(items) - min(items))
    return values


def _spans(values: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    first = np.array([min(v) if len(v) else np.nan for v in values], dtype=np.float64)
    last = np.array([max(v) if len(v) else np.nan for v in values], dtype=np.float64)
    return first, last


def pair_features(
    task: ChatContext,
    qi: np.ndarray,
    di: np.ndarray,
    dense: np.ndarray,
    dense_window: np.ndarray,
    bm25: np.ndarray,
) -> np.ndarray:
    """The (pairs x `FEATURES`) matrix of the candidate pairs (`qi`, `di`) of a task, NaN where unknown; the text
    signals are (queries x documents) score matrices of the task."""
    out = np.full((len(qi), len(FEATURES)), np.nan)
    column = {name: index for index, name in enumerate(FEATURES)}

    def put(name: str, values: np.ndarray) -> None:
        out[:, column[name]] = values

    put("dense", dense[qi, di])
    put("dense_window", dense_window[qi, di])
    put("dense_gap", dense[qi, di] - _per_query_max(dense[qi, di], qi))
    raw_bm25 = bm25[qi, di]
    put("bm25", np.log1p(np.maximum(raw_bm25, 0)))
    best = _per_query_max(raw_bm25, qi)
    put("bm25_rel", np.divide(raw_bm25, best, out=np.zeros(len(qi)), where=best > 0))
    sizes = [len(orders) for orders in task.doc_orders] if task.doc_orders else [1] * len(task.docs)
    put("log_messages", np.log1p(np.array(sizes, dtype=np.float64))[di])
    put("log_chars", np.log1p(np.array([len(doc) for doc in task.docs], dtype=np.float64))[di])
    if task.query_order is None:
        return out  # no chat context at all (summaries, dialogue corpora without channels): text signals only
    seconds, messages = nearest_gaps(
        task.query_channel, task.query_ts, task.query_order, task.doc_channel, task.doc_times, task.doc_orders
    )
    same = _same_channel(task.query_channel, task.doc_channel)[qi, di]
    put("same_channel", same.astype(np.float64))
    pair_seconds, pair_messages = seconds[qi, di], messages[qi, di]
    put("log_gap_minutes", np.where(np.isfinite(pair_seconds), np.log1p(pair_seconds / 60), np.nan))
    put("log_gap_messages", np.where(np.isfinite(pair_messages), np.log1p(pair_messages), np.nan))
    recency = (
        np.where(np.isfinite(pair_seconds), pair_seconds, 1e12)
        + np.where(np.isfinite(pair_messages), pair_messages, 1e12) * 1e-4
    )
    put("gap_rank", np.log1p(_rank_within_query(recency, qi)))
    timed = np.array([t is not None for t in task.query_ts])[qi] & np.array([len(t) > 0 for t in task.doc_times])[di]
    point_ts = np.array([np.nan if t is None else t for t in task.query_ts], dtype=np.float64)[qi]
    point_order = np.array(task.query_order, dtype=np.float64)[qi]
    first_ts, last_ts = (v[di] for v in _spans(task.doc_times))
    first_order, last_order = (v[di] for v in _spans(task.doc_orders))
    first, last, point = (
        np.where(timed, a, b) for a, b in [(first_ts, first_order), (last_ts, last_order), (point_ts, point_order)]
    )
    known = same & np.isfinite(first)
    put("inside_span", np.where(known, (first <= point) & (point <= last), np.nan))
    put("ended_before", np.where(known, last < point, np.nan))
    put("query_interleave", _interleave(task.query_orders)[qi])
    put("candidate_density", _density(task.doc_orders)[di])
    _people_features(task, qi, di, put)
    return out


def _people_features(task: ChatContext, qi: np.ndarray, di: np.ndarray, put) -> None:
    """Author, mention, speaker and reply-link features of the pairs (NaN where authors or replies are unknown)."""
    names = sorted({n for side in (task.query_authors, task.doc_authors) for items in side for n in items if n})
    vocabulary = {name: index for index, name in enumerate(names)}
    query_authors, doc_authors = _membership(task.query_authors, vocabulary), _membership(task.doc_authors, vocabulary)
    known = np.asarray(query_authors.sum(axis=1)).ravel()[qi] > 0
    known &= np.asarray(doc_authors.sum(axis=1)).ravel()[di] > 0
    mentions_q, mentions_d = _membership(task.query_mentions, vocabulary), _membership(task.doc_mentions, vocabulary)
    put("author_participates", np.where(known, _shared(query_authors, doc_authors, qi, di), np.nan))
    put("query_mentions_candidate", np.where(known, _shared(mentions_q, doc_authors, qi, di), np.nan))
    put("candidate_mentions_query", np.where(known, _shared(query_authors, mentions_d, qi, di), np.nan))
    last_author = np.array([vocabulary.get(a[-1], -1) if a else -1 for a in task.query_authors])[qi]
    speaker = _speaker_before(task, vocabulary, qi, di)
    put("same_speaker", np.where(known, (speaker >= 0) & (speaker == last_author), np.nan))
    ids = sorted({i for side in (task.query_message_ids, task.doc_message_ids) for items in side for i in items})
    id_vocabulary = {message_id: index for index, message_id in enumerate(ids)}
    query_ids = _membership(task.query_message_ids, id_vocabulary)
    doc_ids = _membership(task.doc_message_ids, id_vocabulary)
    query_to, doc_to = _membership(task.query_reply_to, id_vocabulary), _membership(task.doc_reply_to, id_vocabulary)
    linked = np.maximum(_shared(query_to, doc_ids, qi, di), _shared(query_ids, doc_to, qi, di))
    replies_known = np.array([platform in NATIVE_REPLY_PLATFORMS for platform in task.query_platform], dtype=bool)
    put("reply_link", np.where(replies_known[qi], linked, np.nan))


def _speaker_before(task: ChatContext, vocabulary: dict[str, int], qi: np.ndarray, di: np.ndarray) -> np.ndarray:
    """Per pair, the author code of the candidate's last message before the query's moment in channel order (-1
    when none): one sorted search over every candidate message, keyed by (candidate, order)."""
    lengths = np.array([len(orders) for orders in task.doc_orders])
    if not lengths.sum():
        return np.full(len(qi), -1)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    orders = np.concatenate([np.asarray(o, dtype=np.int64) for o in task.doc_orders if len(o)])
    codes = np.array([vocabulary.get(a, -1) for authors in task.doc_authors for a in authors], dtype=np.int64)
    span = int(max(orders.max(), max(task.query_order))) + 2
    keys = owner * span + orders
    sort = np.argsort(keys, kind="stable")
    keys, owner, codes = keys[sort], owner[sort], codes[sort]
    at = np.searchsorted(keys, di * span + np.asarray(task.query_order, dtype=np.int64)[qi], side="left") - 1
    found = (at >= 0) & (owner[np.maximum(at, 0)] == di)
    return np.where(found, codes[np.maximum(at, 0)], -1)
