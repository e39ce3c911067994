"""Benchmark tasks built from the warehouse: thread retrieval, response retrieval, summary-to-thread, and the same on
one platform alone.

Queries come from conversations of the requested splits (the test split for scores); candidates and distractors
are every message and conversation of the query's channel and time, whatever their split: training never saw the
queries' conversations, and the real interleaved neighbours of a message are what makes chat retrieval hard. A
retriever sees only what is known without the answer: a thread query's own message is left out of its
conversation (text, times and order), and a response query is its prefix.

The `Task` record and the kinds of task names are `chat.task`'s (the chat ranker, below the warehouse, scores tasks
too); they are importable from here as well."""

import bisect
import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import dagster as dg
import duckdb
import numpy as np
from pydantic import Field

from threadembed_assets.chat.features import NATIVE_REPLY_PLATFORMS, mentioned_names, normalize_name
from threadembed_assets.chat.task import TASK_KINDS, THREAD_KINDS, Task, task_kind, task_platform  # noqa: F401
from threadembed_assets.warehouse.provenance import conversation_key
from threadembed_assets.warehouse.render import RENDER_MESSAGE_SQL
from threadembed_assets.warehouse.schema import table_names


class TaskConfig(dg.Config):
    """How benchmark tasks are cut (run config of `benchmark_tasks`)."""

    max_queries: int = Field(
        default=500,
        description="Queries per task and source, taken channel by channel (whole channels in a seeded order).",
    )
    window_messages: int = Field(default=3, description="Messages in a prefix or window.")
    candidates: int = Field(
        default=30,
        description="Response retrieval: the true next message and the channel's next messages of "
        "other conversations, this many in all.",
    )
    candidate_hours: float = Field(
        default=24.0,
        description="Thread retrieval: the candidates of a query are the conversations of its channel with a "
        "message within this many hours of it (the whole channel when times are unknown; 0: always the whole "
        "channel).",
    )
    max_doc_chars: int = Field(default=1500, description="A document longer than this is cut.")
    held_out_platform: str = Field(
        default="slack", description="Tasks 1 and 2 again on this platform alone (`<task>@<platform>`)."
    )
    seed: int = Field(default=0, description="Which conversations give queries.")


class Line(NamedTuple):
    """One message of the benchmark's view of the warehouse."""

    conversation_id: str
    position: int
    channel: str | None
    ts: float | None
    text: str  # rendered `author: text`
    message_id: str
    split: str
    platform: str
    author: str  # normalised (`normalize_name`); "" when unknown
    reply_to: str | None  # only where the platform has native replies
    order: int  # place in the channel, over every split
    mentions: tuple[str, ...]  # authors of the channel that the message names


def read_lines(
    con: duckdb.DuckDBPyConnection, source: str, platform: str | None, exclude_platforms: Sequence[str] = ()
) -> list[Line]:
    """Every message of `source` (of every split; of `platform` alone if given, of none of `exclude_platforms`), in
    channel order. Messages of one second are ordered by id, shorter ids first, so numbered ids (IRC lines, Discord
    snowflakes) keep their order."""
    rows = con.execute(
        f"""
        SELECT m.conversation_id, m.position, m.channel, epoch(m.ts), {RENDER_MESSAGE_SQL}, m.message_id, c.split,
            c.platform, coalesce(m.author, ''), CASE WHEN list_contains($native, c.platform) THEN m.reply_to END, m.text
        FROM messages m JOIN conversations c USING (source, conversation_id)
        WHERE m.source = $source AND ($platform IS NULL OR c.platform = $platform)
            AND NOT list_contains($excluded, c.platform)
        ORDER BY m.channel, m.ts, length(m.message_id), m.message_id
        """,
        {
            "source": source,
            "platform": platform,
            "excluded": list(exclude_platforms),
            "native": sorted(NATIVE_REPLY_PLATFORMS),
        },
    ).fetchall()
    authors_of_channel: dict[str | None, set[str]] = {}
    for _, _, channel, *_, author, _, _ in rows:
        authors_of_channel.setdefault(channel, set()).add(normalize_name(author))
    lines = []
    for order, row in enumerate(rows):
        conversation_id, position, channel, ts, rendered, message_id, split, platform, author, reply_to, text = row
        lines.append(
            Line(
                conversation_id=conversation_id,
                position=position,
                channel=channel,
                ts=ts,
                text=rendered,
                message_id=message_id,
                split=split,
                platform=platform,
                author=normalize_name(author),
                reply_to=reply_to,
                order=order,
                mentions=tuple(mentioned_names(text, authors_of_channel[channel], author)),
            )
        )
    return lines


def _pick(data: "ChatLines", eligible: list[str], n: int, seed: int) -> list[str]:
    """Up to `n` of the `eligible` conversations: whole channels in a seeded order (a seeded subset of the last),
    so that a budget of queries needs the candidates of as few channels as possible."""
    rng = np.random.default_rng(seed)
    by_channel: dict[str, list[str]] = {}
    for cid in sorted(eligible):
        by_channel.setdefault(str(data.by_conversation[cid][0].channel), []).append(cid)
    channels = sorted(by_channel)
    picked: list[str] = []
    for index in rng.permutation(len(channels)):
        room = n - len(picked)
        if room <= 0:
            break
        ids = by_channel[channels[index]]
        picked += ids if len(ids) <= room else [ids[i] for i in sorted(rng.permutation(len(ids))[:room])]
    return sorted(picked)


class Corpus:
    """Documents of a task, added once each, with what a retriever may know about them."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self.index: dict[str, int] = {}
        self.docs: list[str] = []
        self.doc_ids: list[str] = []
        self.channels: list[str | None] = []
        self.times: list[list[float]] = []
        self.orders: list[list[int]] = []
        self.people = People()

    def add(self, doc_id: str, lines: list[Line]) -> int:
        if doc_id not in self.index:
            self.index[doc_id] = len(self.docs)
            self.docs.append("\n".join(line.text for line in lines)[: self.max_chars])
            self.doc_ids.append(doc_id)
            self.channels.append(lines[0].channel)
            self.times.append([line.ts for line in lines if line.ts is not None])
            self.orders.append([line.order for line in lines])
            self.people.add(lines)
        return self.index[doc_id]


class People:
    """Authors (one per message), mentions, message ids and native reply links of queries or documents."""

    def __init__(self):
        self.authors, self.mentions, self.message_ids, self.reply_to = [], [], [], []

    def add(self, lines: list[Line]) -> None:
        self.authors.append([line.author for line in lines])
        self.mentions.append(sorted({name for line in lines for name in line.mentions}))
        self.message_ids.append([line.message_id for line in lines])
        self.reply_to.append([line.reply_to for line in lines if line.reply_to])


class Queries:
    """Queries of a task with their relevant document, candidates and time context."""

    def __init__(self):
        self.texts, self.relevant, self.candidates, self.conversations, self.keys = [], [], [], [], []
        self.channels, self.times, self.orders, self.all_orders, self.platforms = [], [], [], [], []
        self.people = People()

    def add(self, lines: list[Line], relevant: int, candidates: list[int] | None, cid: str, key: str) -> None:
        """A query made of `lines`, asked at the last of them."""
        at = lines[-1]
        self.texts.append("\n".join(line.text for line in lines))
        self.relevant.append(relevant)
        self.candidates.append(candidates)
        self.conversations.append(cid)
        self.keys.append(key)
        self.channels.append(at.channel)
        self.times.append(at.ts)
        self.orders.append(at.order)
        self.all_orders.append([line.order for line in lines])
        self.platforms.append(at.platform)
        self.people.add(lines)

    def task(self, name: str, source: str, corpus: Corpus) -> Task:
        return Task(
            name=name,
            source=source,
            queries=self.texts,
            docs=corpus.docs,
            doc_ids=corpus.doc_ids,
            relevant=self.relevant,
            candidates=self.candidates,
            conversations=self.conversations,
            conversation_keys=self.keys,
            query_channel=self.channels,
            query_ts=self.times,
            query_order=self.orders,
            doc_channel=corpus.channels,
            doc_times=corpus.times,
            doc_orders=corpus.orders,
            query_platform=self.platforms,
            query_orders=self.all_orders,
            query_authors=self.people.authors,
            query_mentions=self.people.mentions,
            query_message_ids=self.people.message_ids,
            query_reply_to=self.people.reply_to,
            doc_authors=corpus.people.authors,
            doc_mentions=corpus.people.mentions,
            doc_message_ids=corpus.people.message_ids,
            doc_reply_to=corpus.people.reply_to,
        )


@dataclass
class ChatLines:
    """One source's messages as the task builders read them."""

    name: str
    by_conversation: dict[str, list[Line]]  # in position order
    by_channel: dict[str | None, list[Line]]  # in channel order
    conversations_of_channel: dict[str | None, dict[str, list[Line]]]  # each conversation in channel order

    @classmethod
    def read(
        cls,
        con: duckdb.DuckDBPyConnection,
        source: str,
        platform: str | None,
        exclude_platforms: Sequence[str] = (),
    ) -> "ChatLines":
        by_conversation: dict[str, list[Line]] = {}
        by_channel: dict[str | None, list[Line]] = {}
        conversations_of_channel: dict[str | None, dict[str, list[Line]]] = {}
        for line in read_lines(con, source, platform, exclude_platforms):
            by_conversation.setdefault(line.conversation_id, []).append(line)
            by_channel.setdefault(line.channel, []).append(line)
            conversations_of_channel.setdefault(line.channel, {}).setdefault(line.conversation_id, []).append(line)
        for conversation in by_conversation.values():
            conversation.sort(key=lambda line: line.position)
        return cls(source, by_conversation, by_channel, conversations_of_channel)

    def next_of_others(self, line: Line, n: int) -> list[Line]:
        """The next `n` messages of `line`'s channel after it that belong to other conversations."""
        channel = self.by_channel[line.channel]
        found = []
        for other in itertools.islice(channel, line.order - channel[0].order + 1, None):
            if len(found) == n:
                break
            if other.conversation_id != line.conversation_id:
                found.append(other)
        return found

    def key(self, cid: str) -> str:
        return conversation_key(self.by_conversation[cid][0].message_id)


def build_tasks(
    con: duckdb.DuckDBPyConnection,
    source: str,
    query_splits: list[str],
    config: TaskConfig,
    platform: str | None = None,
    suffix: str = "",
) -> list[Task]:
    """The thread, response and summary tasks of one source, with queries from conversations of `query_splits`."""
    data = ChatLines.read(con, source, platform)
    picked = _query_conversations(data, query_splits, config)
    tasks = [
        _thread_task(data, picked, config, suffix),
        _thread_live_task(data, picked, config, suffix),
        *_response_tasks(data, picked, config, suffix),
    ]
    if platform is None:
        tasks += _summary_tasks(con, data, query_splits, config, picked)
    return [task for task in tasks if task.queries]


def _query_conversations(data: ChatLines, query_splits: list[str], config: TaskConfig) -> list[str]:
    """The conversations (of 3+ messages, in `query_splits`) that give a source's queries."""
    long = [cid for cid, lines in data.by_conversation.items() if len(lines) >= 3 and lines[0].split in query_splits]
    return _pick(data, long, config.max_queries, config.seed)


def thread_task(
    con: duckdb.DuckDBPyConnection,
    source: str,
    query_splits: list[str],
    config: TaskConfig,
    exclude_platforms: Sequence[str] = (),
) -> Task:
    """The thread task of one source (see `_thread_task`), without the conversations of `exclude_platforms`: the one
    builder of thread retrieval sets, for the benchmark and for the training stages' dev evaluator."""
    data = ChatLines.read(con, source, None, exclude_platforms)
    return _thread_task(data, _query_conversations(data, query_splits, config), config, "")


def _thread_task(data: ChatLines, picked: list[str], config: TaskConfig, suffix: str) -> Task:
    """A message finds its conversation among the conversations of its channel active within `candidate_hours`;
    the message is left out of its conversation's document, times and order."""
    query_of = {cid: data.by_conversation[cid][len(data.by_conversation[cid]) // 2] for cid in picked}
    left_out = {line.message_id for line in query_of.values()}
    corpus, queries = Corpus(config.max_doc_chars), Queries()
    window_s = config.candidate_hours * 3600
    for cid in picked:
        query = query_of[cid]
        candidates = []
        for other_cid, other in data.conversations_of_channel[query.channel].items():
            kept = [line for line in other if line.message_id not in left_out]
            if kept and (other_cid == cid or near(kept, query.ts, window_s)):
                candidates.append((other_cid, kept))
        if not any(other_cid == cid and near(kept, query.ts, window_s) for other_cid, kept in candidates):
            continue  # its own conversation is not active near it: no fair candidate set
        indices = [corpus.add(other_cid, kept) for other_cid, kept in candidates]
        queries.add([query], corpus.index[cid], indices, cid, data.key(cid))
    return queries.task("thread" + suffix, data.name, corpus)


def _thread_live_task(data: ChatLines, picked: list[str], config: TaskConfig, suffix: str) -> Task:
    """A message finds its conversation as it arrives: the same query messages as `thread` (never the first of their
    conversation), each candidate conversation of the channel cut to its messages before the query (none after it,
    and so no hole where the query was), among those active within `candidate_hours` before it. A cut conversation
    is a document of its own (`<conversation id>@<messages kept>`)."""
    corpus, queries = Corpus(config.max_doc_chars), Queries()
    window_s = config.candidate_hours * 3600
    for cid in picked:
        lines = data.by_conversation[cid]
        query = lines[len(lines) // 2]
        candidates, own = [], None
        for other_cid, other in data.conversations_of_channel[query.channel].items():
            before = other[: bisect.bisect_left(other, query.order, key=lambda line: line.order)]
            if before and (other_cid == cid or near(before, query.ts, window_s)):
                index = corpus.add(f"{other_cid}@{len(before)}", sorted(before, key=lambda line: line.position))
                candidates.append(index)
                own = index if other_cid == cid else own
        if own is None or not near([line for line in lines if line.order < query.order], query.ts, window_s):
            continue  # nothing of its conversation came before it near enough: no fair candidate set
        queries.add([query], own, candidates, cid, data.key(cid))
    return queries.task("thread_live" + suffix, data.name, corpus)


def near(lines: list[Line], ts: float | None, window_s: float) -> bool:
    """True when one of `lines` is within `window_s` of `ts` (always, when a time is unknown or window_s is 0)."""
    if ts is None or window_s <= 0:
        return True
    times = [line.ts for line in lines if line.ts is not None]
    return not times or min(abs(t - ts) for t in times) <= window_s


def _response_tasks(data: ChatLines, picked: list[str], config: TaskConfig, suffix: str) -> list[Task]:
    """A conversation's prefix (its last `window_messages` messages before the middle) finds what comes next:

    - `response_message`: its next message among the channel's next messages of other conversations;
    - `response_window`: its next `window_messages` messages among the windows that start at those messages.
    """
    k = config.window_messages
    messages, message_queries = Corpus(config.max_doc_chars), Queries()
    windows, window_queries = Corpus(config.max_doc_chars), Queries()
    for cid in picked:
        lines = data.by_conversation[cid]
        cut = max(1, len(lines) // 2)
        prefix, answer = lines[max(0, cut - k) : cut], lines[cut]
        others = data.next_of_others(prefix[-1], config.candidates - 1)
        if not others:
            continue
        key = data.key(cid)
        candidates = [messages.add(line.message_id, [line]) for line in [answer, *others]]
        message_queries.add(prefix, candidates[0], candidates, cid, key)
        starts = [answer, *others]
        candidates = [
            windows.add(
                f"{line.conversation_id}@{line.position}",
                data.by_conversation[line.conversation_id][line.position : line.position + k],
            )
            for line in starts
        ]
        window_queries.add(prefix, candidates[0], list(dict.fromkeys(candidates)), cid, key)
    return [
        message_queries.task("response_message" + suffix, data.name, messages),
        window_queries.task("response_window" + suffix, data.name, windows),
    ]


def _summary_tasks(
    con: duckdb.DuckDBPyConnection, data: ChatLines, query_splits: list[str], config: TaskConfig, picked: list[str]
) -> list[Task]:
    """A summary finds its conversation among every conversation of its channel (one task per summarizer: LLM and
    extractive are never mixed). Only summaries in the channels of the other tasks' queries are asked, so that every
    task of a source shares one corpus."""
    if "conversation_summaries" not in table_names(con):
        return []
    summaries = con.execute(
        "SELECT summarizer, conversation_id, summary FROM conversation_summaries "
        "WHERE source = $source AND list_contains($splits, split) ORDER BY conversation_id",
        {"source": data.name, "splits": query_splits},
    ).fetchall()
    channels = {data.by_conversation[cid][0].channel for cid in picked}
    tasks = []
    for summarizer in sorted({s for s, _, _ in summaries}):
        texts = {cid: text for s, cid, text in summaries if s == summarizer and cid in data.by_conversation}
        in_channels = [cid for cid in sorted(texts) if data.by_conversation[cid][0].channel in channels]
        chosen = [(cid, texts[cid]) for cid in _pick(data, in_channels, config.max_queries, config.seed)]
        corpus, candidates = Corpus(config.max_doc_chars), []
        for cid, _ in chosen:
            channel = data.conversations_of_channel[data.by_conversation[cid][0].channel]
            candidates.append(
                [corpus.add(other, sorted(lines, key=lambda line: line.position)) for other, lines in channel.items()]
            )
        task = Task(
            name=f"summary_{summarizer}",
            source=data.name,
            queries=[text for _, text in chosen],
            docs=corpus.docs,
            doc_ids=corpus.doc_ids,
            relevant=[corpus.index[cid] for cid, _ in chosen],
            candidates=candidates,
            conversations=[cid for cid, _ in chosen],
            conversation_keys=[data.key(cid) for cid, _ in chosen],
        )
        tasks.append(task)
    return tasks


PER_QUERY_FIELDS = (
    "queries",
    "relevant",
    "candidates",
    "conversations",
    "conversation_keys",
    "query_channel",
    "query_ts",
    "query_order",
    "query_platform",
    "query_orders",
    "query_authors",
    "query_mentions",
    "query_message_ids",
    "query_reply_to",
)


def queries_of(task: Task, keep: Sequence[int]) -> Task:
    """`task` with only the queries at `keep` (its documents unchanged)."""
    fields = {name: [values[i] for i in keep] for name in PER_QUERY_FIELDS if (values := getattr(task, name))}
    return replace(task, **fields)


def split_by_conversation(task: Task, share: float) -> tuple[Task, Task]:
    """Two tasks of disjoint queries, split by a stable hash of each query's conversation (so a conversation's
    queries stay on one side): about `share` of them, and the rest."""
    keys = task.conversation_keys or task.conversations or [str(i) for i in range(len(task.queries))]
    below = [int(hashlib.md5(str(key).encode()).hexdigest()[:8], 16) / 2**32 < share for key in keys]
    return (
        queries_of(task, [i for i, low in enumerate(below) if low]),
        queries_of(task, [i for i, low in enumerate(below) if not low]),
    )


def all_tasks(con: duckdb.DuckDBPyConnection, query_splits: list[str], config: TaskConfig) -> list[Task]:
    """Tasks of every source in the warehouse, plus the held-out platform's thread and response tasks."""
    sources = [s for (s,) in con.execute("SELECT DISTINCT source FROM conversations ORDER BY 1").fetchall()]
    tasks = []
    for source in sources:
        tasks += build_tasks(con, source, query_splits, config)
        if config.held_out_platform:
            platform = config.held_out_platform
            tasks += build_tasks(con, source, query_splits, config, platform=platform, suffix=f"@{platform}")
    return tasks
