"""What a retrieval task is, apart from how one is built (`evaluation.tasks` builds them from the warehouse): the
`Task` record that retrievers, the chat ranker and the benchmark score, and the kinds of task names."""

from dataclasses import asdict, dataclass

import numpy as np

TASK_KINDS = ("thread", "thread_live", "response_message", "response_window", "summary")
THREAD_KINDS = ("thread", "thread_live")  # a message finds its conversation: in the archive, or as it arrives


def task_kind(name: str) -> str:
    """The kind of a task name: `summary_llm` -> summary, `thread@slack` -> thread."""
    return "summary" if name.startswith("summary") else name.split("@")[0]


def task_platform(name: str) -> str | None:
    """The platform a task is restricted to (`thread@slack` -> slack), or None."""
    return name.split("@", 1)[1] if "@" in name else None


@dataclass
class Task:
    """Queries with one relevant document each, over a corpus (optionally a candidate list per query).

    Where a task has a time context (`query_order` is set), each query has the channel, time and channel order of
    the moment it is asked (a thread query's own message; a response query's last prefix message), and each
    document the channel, times and orders of the messages it is made of (a thread query's message never counts
    for its own conversation).
    """

    name: str
    source: str
    queries: list[str]
    docs: list[str]
    doc_ids: list[str]
    relevant: list[int]  # index into docs per query
    candidates: list[list[int]] | None = None
    conversations: list[str] | None = None  # conversation of each query
    conversation_keys: list[str] | None = None  # provenance key of each query's conversation
    query_channel: list[str | None] | None = None
    query_ts: list[float | None] | None = None
    query_order: list[int] | None = None
    doc_channel: list[str | None] | None = None
    doc_times: list[list[float]] | None = None
    doc_orders: list[list[int]] | None = None
    # Who and what each query and document is made of, for the chat features (see `chat.features`): authors
    # (normalised; a document's per message, aligned with `doc_orders`), the names they mention, their message ids and
    # the ids they reply to (only where the platform has native replies, `NATIVE_REPLY_PLATFORMS`).
    query_platform: list[str] | None = None
    query_orders: list[list[int]] | None = None  # channel order of each of a query's messages
    query_authors: list[list[str]] | None = None
    query_mentions: list[list[str]] | None = None
    query_message_ids: list[list[str]] | None = None
    query_reply_to: list[list[str]] | None = None
    doc_authors: list[list[str]] | None = None
    doc_mentions: list[list[str]] | None = None
    doc_message_ids: list[list[str]] | None = None
    doc_reply_to: list[list[str]] | None = None

    def allowed(self) -> np.ndarray | None:
        """Boolean (queries x docs) mask of the candidates, or None when every document is a candidate."""
        if self.candidates is None:
            return None
        mask = np.zeros((len(self.queries), len(self.docs)), dtype=bool)
        for row, indices in enumerate(self.candidates):
            mask[row, indices] = True
        return mask

    def has_time_context(self) -> bool:
        """True when queries and documents carry channel order (and, where known, times)."""
        return self.query_order is not None

    def has_times(self) -> bool:
        return self.has_time_context() and any(t is not None for t in self.query_ts or [])

    def to_dict(self) -> dict:
        return asdict(self)
