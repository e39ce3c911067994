"""`ChatIndex`: search a chat archive, find the conversation a message belongs to, rank what comes next.

The archive is read the way the benchmark reads the warehouse (`evaluation.tasks.ChatLines`): conversations as the
warehouse cut them (gold ids, reply chains, silences), rendered as the models see them. A conversation's vector is
the mean of its messages' vectors (`retrievers.pooled_vectors`), as the chat ranker reads it, so that the build
encodes each message once and a question about the archive encodes little beyond itself. `search` fuses the model's
similarity and BM25 by reciprocal rank; `thread_of` and `next_message` build the benchmark's one-query tasks and
rank them with the published `chat_ranker` where it reads the index's model, else with the same fusion.
"""

import bisect
import logging
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import bm25s
import duckdb
import numpy as np

from threadembed_assets import settings
from threadembed_assets.chat.corpus import log_from_messages
from threadembed_assets.chat.encoders import ONNX_MODEL, OnnxEncoder, export_of, same_model
from threadembed_assets.chat.features import NATIVE_REPLY_PLATFORMS, mentioned_names, normalize_name
from threadembed_assets.chat.linker import DISENTANGLER, load_published
from threadembed_assets.chat.ranker import CHAT_RANKER, ChatRanker, model_features
from threadembed_assets.chat.retrievers import (
    CachedEncoder,
    bm25_scores,
    dense_scores,
    model_key,
    pooled_vectors,
    rrf_scores,
)
from threadembed_assets.chat.task import Task, task_kind
from threadembed_assets.evaluation.tasks import ChatLines, Corpus, Line, Queries, near
from threadembed_assets.resources import ModelStore
from threadembed_assets.search.store import load_stored
from threadembed_assets.search.vectors import VectorIndex
from threadembed_assets.sources.chat_jsonl import RequestError, epoch_seconds, platform_of
from threadembed_assets.sources.raw_cache import write_raw_cache
from threadembed_assets.sources.schema import batched
from threadembed_assets.training.assets import ranker_model
from threadembed_assets.training.train import load_model
from threadembed_assets.warehouse.connection import connect
from threadembed_assets.warehouse.conversations import build_conversations
from threadembed_assets.warehouse.load import LoadOptions, load_messages
from threadembed_assets.warehouse.render import render_message

log = logging.getLogger(__name__)

MAX_DOC_CHARS = 1500  # a conversation's text as the benchmark cuts it
CANDIDATE_HOURS = 24.0  # thread_of: conversations of the channel with a message this near the asked one
# thread_of: at most this many candidates (nearest in time, else best by the ANN index), so that no message, however
# vague about its channel and time, costs more than encoding this many conversations' windows.
MAX_THREAD_CANDIDATES = 50
FUSION_DEPTH = 50  # search: how deep each of dense and BM25 is read before fusing
SNIPPET_CHARS = 200
MAX_CACHED_TEXTS = 100_000  # message and query vectors an index remembers, least recently used dropped first


class NotPublished(LookupError):
    """What was asked needs a model that is not published yet (not a client's error, nor a bug)."""


@dataclass
class Hit:
    """One conversation found: its id, score (higher is better), where and when it happened, and its start."""

    conversation_id: str
    score: float
    source: str
    channel: str | None
    start: str | None  # ISO-8601 UTC of its first message, None where times are unknown
    end: str | None
    snippet: str

    def to_dict(self) -> dict:
        return asdict(self)


class ThreadHits(list):
    """`thread_of`'s answer: the hits, best first, and whether the message looks like the start of a new
    conversation (`is_new`: the best candidate's confidence is below the threshold tuned on dev; None untuned)."""

    def __init__(self, hits: Iterable[Hit], is_new: bool | None, confidence: float | None):
        super().__init__(hits)
        self.is_new = is_new
        self.confidence = confidence


class VectorCache(CachedEncoder):
    """Embeddings by text hash, in memory, of the most recently used texts this index encoded or read (its
    messages, queries); under `fallback`, a lasting cache (the run's, while an asset builds and tunes the index) read
    for what memory lacks and given what is encoded."""

    def __init__(self, capacity: int = MAX_CACHED_TEXTS, fallback: CachedEncoder | None = None):
        self.capacity = capacity
        self.fallback = fallback
        self.vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    def lookup(self, key: str, digests: list[str]) -> dict[str, np.ndarray]:
        found = {}
        for digest in digests:
            if (vector := self.vectors.get(digest)) is not None:
                self.vectors.move_to_end(digest)
                found[digest] = vector
        if self.fallback is not None and len(found) < len(digests):
            lasting = self.fallback.lookup(key, [digest for digest in digests if digest not in found])
            self._remember(lasting)
            found.update(lasting)
        return found

    def store(self, key: str, vectors: dict[str, np.ndarray]) -> None:
        self._remember(vectors)
        if self.fallback is not None:
            self.fallback.store(key, vectors)

    def _remember(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors.update(vectors)
        while len(self.vectors) > self.capacity:
            self.vectors.popitem(last=False)


@dataclass
class SearchModel:
    """What encodes for an index: the encoder, the model folder it stands for, what to call it, its cache key."""

    encoder: object
    path: str
    name: str
    key: str


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


def load_search_model(path: str, base_model: str, device: str = "cpu", onnx: Path | None = None) -> SearchModel:
    """The model at `path`, or the base model where it is missing or fails to load (the name then says so and
    why). On CPU, the ONNX int8 export in `onnx` encodes instead when it was exported from that very model."""
    if path == base_model:
        return _encoder_of(base_model, device, onnx, f"{base_model} (base model: no fine-tuned model published)")
    try:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} does not exist")
        return _encoder_of(path, device, onnx, path)
    except Exception as exc:  # a corrupt folder raises anything from json to safetensors: fall back and say why
        log.warning("model %s failed to load (%s); using the base model", path, _reason(exc))
        return _encoder_of(base_model, device, onnx, f"{base_model} (fallback: {path} failed to load: {_reason(exc)})")


def _encoder_of(path: str, device: str, onnx: Path | None, name: str) -> SearchModel:
    """The ONNX export in `onnx` where it was made from `path` and the device is the CPU, else PyTorch."""
    if device == "cpu" and export_of(path, onnx):
        try:
            encoder = OnnxEncoder(onnx)
            return SearchModel(encoder, path, f"{name} [ONNX int8]", encoder.key)
        except Exception as exc:  # a broken export must not stop search: PyTorch encodes instead
            log.warning("ONNX export %s failed to load (%s); encoding with PyTorch", onnx, _reason(exc))
    return SearchModel(load_model(path, device), path, name, model_key(path))


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


def checked_message(message) -> dict:
    """A chat JSONL message as a dict with a non-empty `text`, or a clear error."""
    if not isinstance(message, dict):
        raise RequestError(f"a message is a JSON object with at least `text`, not {type(message).__name__}")
    text = message.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RequestError("a message needs a non-empty string `text`")
    return message


def archive_from_messages(
    messages: Iterable[dict], source: str, options: LoadOptions | None = None, disentangler: Path | None = None
):
    """An in-memory warehouse of chat JSONL dicts, loaded as `messages` loads a source (bad rows quarantined):
    messages without conversation ids or reply links are cut into conversations by the published disentangler in
    `disentangler` where given, else by silences."""
    rows = []
    for message in messages:
        row = {key: message.get(key) for key in ("channel", "message_id", "conversation_id", "reply_to", "author")}
        row.update(
            source=source,
            text=message.get("text"),
            timestamp=message.get("timestamp"),
            platform=message.get("platform") or platform_of(message.get("source") or source),
            origin="messages",
        )
        rows.append(row)
    con = duckdb.connect()
    with tempfile.TemporaryDirectory() as folder:
        write_raw_cache(batched(rows), Path(folder) / "raw")
        load_messages(
            con,
            source,
            Path(folder) / "raw",
            options or LoadOptions(train_ratio=1.0, dev_ratio=0.0),
            partial(load_published, disentangler) if disentangler else None,
        )
    build_conversations(con, source)
    return con


class ChatIndex:
    """Conversations of one source, searchable by text, by message and by what comes next (see the module)."""

    def __init__(
        self,
        lines: ChatLines,
        model: SearchModel,
        ranker: ChatRanker | None,
        *,
        use_stored: bool = False,
        doc_vectors: np.ndarray | None = None,
        ann: bool | None = None,
        batch_size: int = 64,
        encoded: CachedEncoder | None = None,  # a lasting cache read and written while the index lives
        disentangler: Path | None = None,
    ):
        self.lines = lines
        self.disentangler = disentangler  # the published disentangler folder `link` reads (loaded on first use)
        self.source = lines.name
        self.model = model.name  # what encodes: the fine-tuned model (or its ONNX export), or the base model and why
        self.model_path = model.path
        self.encoder = model.encoder
        self.key = model.key
        self.batch_size = batch_size
        self.cache = VectorCache(fallback=encoded)
        self.ranker = ranker
        self.conversation_ids = sorted(lines.by_conversation)
        conversations = [lines.by_conversation[cid] for cid in self.conversation_ids]
        self.docs = [self._document(conversation) for conversation in conversations]
        self.channels = [conversation[0].channel for conversation in conversations]
        self.channel_code = {channel: code for code, channel in enumerate(dict.fromkeys(self.channels))}
        self.channel_codes = np.array([self.channel_code[channel] for channel in self.channels], dtype=np.int32)
        times = [[line.ts for line in conversation if line.ts is not None] for conversation in conversations]
        self.starts = np.array([min(t) if t else np.nan for t in times])
        self.ends = np.array([max(t) if t else np.nan for t in times])
        self.new_threshold: dict = {}
        self.stored = load_stored(self.source, self.key, self.conversation_ids, self.docs) if use_stored else None
        if self.stored is not None:
            self.vectors, self.bm25, manifest = self.stored
            self.new_threshold = manifest.get("new_threshold") or {}
        else:
            if doc_vectors is None:  # each message encoded once, for its conversation and for what the ranker reads
                doc_vectors = pooled_vectors(self.encoder, self.key, self.docs, self.cache, batch_size)
            self.vectors = VectorIndex.build(doc_vectors, ann)
            self.bm25 = bm25s.BM25()
            self.bm25.index(bm25s.tokenize(self.docs, stopwords="en", show_progress=False), show_progress=False)

    @staticmethod
    def _document(lines: Sequence[Line]) -> str:
        return "\n".join(line.text for line in lines)[:MAX_DOC_CHARS]

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_messages(
        cls,
        messages: Iterable[dict],
        model: str | None = None,
        ranker: str | ChatRanker | bool | None = None,
        *,
        source: str = "messages",
        models: ModelStore | None = None,
        tune: bool = True,
        onnx: bool = True,
    ) -> "ChatIndex":
        """An index of chat JSONL dicts (conversations from their ids or reply links, else cut by the published
        `disentangler`, else by silences, as the warehouse cuts them). `model`: a checkpoint folder (default: the
        ranker's model, else the best published stage); `ranker`: None for the published `chat_ranker`, a folder or
        a `ChatRanker`, False for fusion alone; `onnx`: on CPU, encode with the published `onnx_model` where it was
        exported from that model."""
        models = models or ModelStore()
        con = archive_from_messages(messages, source, disentangler=models.latest(DISENTANGLER))
        try:
            index = cls.from_connection(con, source, model, ranker, models=models, onnx=onnx)
        finally:
            con.close()
        if tune:
            index.tune_new_threshold()
        return index

    @classmethod
    def from_connection(
        cls, con: duckdb.DuckDBPyConnection, source: str, model: str | None = None, ranker=None, **kwargs
    ) -> "ChatIndex":
        """An index of `source`'s messages in a warehouse connection (see `from_lines` for the rest)."""
        return cls.from_lines(cls.read_lines(con, source), model, ranker, **kwargs)

    @staticmethod
    def read_lines(con: duckdb.DuckDBPyConnection, source: str) -> ChatLines:
        """`source`'s messages of a warehouse connection, ready to index; read before encoding, so the connection
        can close while the model works."""
        lines = ChatLines.read(con, source, None)
        if not lines.by_conversation:
            raise ValueError(f"no messages of source {source!r} to index")
        return lines

    @classmethod
    def from_lines(
        cls,
        lines: ChatLines,
        model: str | None = None,
        ranker: str | ChatRanker | bool | None = None,
        *,
        models: ModelStore | None = None,
        device: str = "cpu",
        onnx: bool = True,
        **kwargs,
    ) -> "ChatIndex":
        """An index of `lines` with `model` (default: the ranker's model, else the best published stage) and
        `ranker` (see `from_messages`)."""
        models = models or ModelStore()
        fitted = resolve_ranker(ranker, models)
        if model is None:
            model = fitted.model_path if fitted else ranker_model(models)
        export = models.latest(ONNX_MODEL) if onnx else None
        loaded = load_search_model(str(model), models.base_model_path(), device, export)
        if fitted and not same_model(fitted.model_path, loaded.path):
            log.warning(
                "chat_ranker reads %s, not %s: thread_of and next_message use fusion", fitted.model_path, loaded.path
            )
            fitted = None
        return cls(lines, loaded, fitted, disentangler=models.latest(DISENTANGLER), **kwargs)

    @classmethod
    def from_warehouse(
        cls,
        source: str = "chat_export",
        model: str | None = None,
        ranker: str | ChatRanker | bool | None = None,
        *,
        models: ModelStore | None = None,
        warehouse: str | Path | None = None,
        onnx: bool = True,
    ) -> "ChatIndex":
        """An index of one source of the warehouse, with the latest published model and `chat_ranker`: the stored
        `conversation_index` build where it was made from the same conversations and model, else encoded now (and
        `is_new` tuned on the source's dev split)."""
        path = Path(warehouse or settings.warehouse_path())
        if not path.exists():
            raise FileNotFoundError(f"no warehouse at {path}: run `make run SOURCE={source}` (or materialize it) first")
        with connect(path, read_only=True) as con:
            lines = cls.read_lines(con, source)
        index = cls.from_lines(lines, model, ranker, models=models, use_stored=True, onnx=onnx)
        if not index.new_threshold:
            index.tune_new_threshold(index.conversations_of_split("dev") or None)
        return index

    # -- search ------------------------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        k: int = 10,
        channel: str | None = None,
        since: str | float | None = None,
        until: str | float | None = None,
    ) -> list[Hit]:
        """Conversations about `query`, best first: the model's similarity and BM25 fused by reciprocal rank;
        only conversations of `channel` with a message between `since` and `until` when given."""
        if not isinstance(query, str) or not query.strip():
            raise RequestError("query must be non-empty text")
        allowed = self._allowed(channel, epoch_seconds(since), epoch_seconds(until))
        depth = min(len(self.docs), max(FUSION_DEPTH, 5 * k))
        vector = self.cache.encode(self.encoder, self.key, [query], self.batch_size)[0]
        dense_ids, _ = self.vectors.search(vector, depth, allowed)
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        lexical = self.bm25.get_scores(tokens)
        if allowed is not None:
            lexical = np.where(allowed, lexical, -np.inf)
        top = np.argpartition(-lexical, depth - 1)[:depth] if depth < len(lexical) else np.arange(len(lexical))
        lexical_ids = [i for i in top[np.argsort(-lexical[top], kind="stable")] if lexical[i] > 0]
        fused: dict[int, float] = {}
        for ranked in (dense_ids, lexical_ids):
            for rank, doc in enumerate(ranked, start=1):
                fused[int(doc)] = fused.get(int(doc), 0.0) + 1.0 / (60 + rank)
        best = sorted(fused, key=lambda doc: -fused[doc])[:k]
        return [self._hit(doc, fused[doc]) for doc in best]

    def _allowed(self, channel: str | None, since: float | None, until: float | None) -> np.ndarray | None:
        if channel is None and since is None and until is None:
            return None
        mask = np.ones(len(self.docs), dtype=bool)
        if channel is not None:
            mask &= self.channel_codes == self.channel_code.get(channel, -1)
        if since is not None:
            mask &= ~(self.ends < since)  # unknown times are kept
        if until is not None:
            mask &= ~(self.starts > until)
        return mask

    def _hit(self, doc: int, score: float) -> Hit:
        start, end = self.starts[doc], self.ends[doc]
        return Hit(
            conversation_id=self.conversation_ids[doc],
            score=round(float(score), 6),
            source=self.source,
            channel=self.channels[doc],
            start=None if np.isnan(start) else _iso(float(start)),
            end=None if np.isnan(end) else _iso(float(end)),
            snippet=self.docs[doc][:SNIPPET_CHARS],
        )

    # -- a message's thread ------------------------------------------------------------------------------------

    def thread_of(self, message: dict, k: int = 10) -> ThreadHits:
        """The conversations `message` may belong to, best first, among those of its channel with a message within
        `CANDIDATE_HOURS` of it (at most `MAX_THREAD_CANDIDATES`: the nearest in time, else the best by the ANN
        index). An archived message (same `message_id`) is left out of its own conversation; a message the archive
        does not hold is asked as it arrives: each conversation is cut to its messages before it, and the chat
        ranker's `thread_live` learner ranks them (where the published ranker has one)."""
        message = checked_message(message)
        line = self._line(message)
        return self._thread(line, {line.message_id}, k, live=self._archived(message) is None)

    def _candidate_docs(self, query: Line) -> np.ndarray:
        """Indices of the conversations `query` may join, sorted: those of its channel (of the archive when the
        channel is unknown) with a time span within `CANDIDATE_HOURS` of it (or no times), at most
        `MAX_THREAD_CANDIDATES` of them: the nearest in time, or, without a time, the nearest by the ANN index."""
        code = self.channel_code.get(query.channel)
        mask = self.channel_codes == code if code is not None else np.ones(len(self.docs), dtype=bool)
        if query.ts is not None:  # distance to each span; unknown spans (NaN) count as near, as `near` has it
            gap = np.fmax(np.fmax(self.starts - query.ts, query.ts - self.ends), 0.0)
            mask &= gap <= CANDIDATE_HOURS * 3600
        docs = np.flatnonzero(mask)
        if len(docs) <= MAX_THREAD_CANDIDATES:
            return docs
        if query.ts is not None:
            return np.sort(docs[np.argsort(gap[docs], kind="stable")[:MAX_THREAD_CANDIDATES]])
        vector = self.cache.encode(self.encoder, self.key, [query.text], self.batch_size)[0]
        return np.sort(self.vectors.search(vector, MAX_THREAD_CANDIDATES, mask)[0])

    def _thread(self, query: Line, left_out: set[str], k: int, live: bool = False) -> ThreadHits:
        corpus, queries = Corpus(MAX_DOC_CHARS), Queries()
        candidates = []
        for doc in self._candidate_docs(query):
            cid = self.conversation_ids[doc]
            kept = [
                line
                for line in self.lines.by_conversation[cid]
                if line.message_id not in left_out and (not live or _came_before(line, query))
            ]
            if kept and near(kept, query.ts, CANDIDATE_HOURS * 3600):
                candidates.append(corpus.add(cid, sorted(kept, key=lambda line: line.position)))
        if not candidates:
            return ThreadHits([], is_new=True if self.new_threshold else None, confidence=None)
        queries.add([query], candidates[0], candidates, query.conversation_id, "")
        kind = "thread_live" if live and self.ranker is not None and self.ranker.ranks("thread_live") else "thread"
        scores, confidence, scorer = self._rank(queries.task(kind, self.source, corpus))
        order = [i for i in np.argsort(-scores, kind="stable") if np.isfinite(scores[i])][:k]
        hits = [
            Hit(
                conversation_id=corpus.doc_ids[i],
                score=round(float(scores[i]), 6),
                source=self.source,
                channel=corpus.channels[i],
                start=_iso(min(corpus.times[i])) if corpus.times[i] else None,
                end=_iso(max(corpus.times[i])) if corpus.times[i] else None,
                snippet=corpus.docs[i][:SNIPPET_CHARS],  # as it was ranked: without the asked message
            )
            for i in order
        ]
        threshold = self.new_threshold.get(scorer)
        return ThreadHits(hits, None if threshold is None else bool(confidence < threshold), confidence)

    def _rank(self, task: Task) -> tuple[np.ndarray, float, str]:
        """Scores of the task's one query over its documents (-inf off its candidates), the confidence of the best
        one (the ranker's decision, or the model's similarity under fusion), and which scorer ranked."""
        allowed = task.allowed()
        if self.ranker is not None and self.ranker.ranks(task_kind(task.name)):
            features = model_features(self.encoder, self.key, task, self.cache, self.batch_size)
            scores = self.ranker.scores(features)[0]
            return scores, float(scores.max()), CHAT_RANKER
        queries = self.cache.encode(self.encoder, self.key, task.queries, self.batch_size)
        docs = pooled_vectors(self.encoder, self.key, task.docs, self.cache, self.batch_size)
        dense = dense_scores(queries, docs)
        fused = rrf_scores(dense, bm25_scores(task), allowed=allowed)[0]
        fused = np.where(allowed[0], fused, -np.inf) if allowed is not None else fused
        best = int(np.argmax(fused))
        return fused, float(dense[0, best]), "fusion"

    # -- what it replies to ---------------------------------------------------------------------------------------

    def link(self, message: dict) -> dict:
        """The earlier message `message` replies to, by the published disentangler, from the messages of its channel
        before it (the linker's window of them; for an archived message, those before it in the archive):
        `parent_id` (None: it starts a conversation), `conversation_id` (the parent's; for a new one `dis:<its
        message_id>`, None without an id), `confidence` (the linker's softmax share of its choice among the
        candidates) and `is_new`."""
        linker, encode = self._linker()
        line = self._line(checked_message(message))
        channel_lines = self.lines.by_channel.get(line.channel, [])
        before = channel_lines[: bisect.bisect_left(channel_lines, line.order, key=lambda earlier: earlier.order)]
        window = [*before[-linker.params.window :], line]
        log = log_from_messages(
            str(line.channel or ""),
            [(w.message_id, None, w.author, w.ts, w.text.split(": ", 1)[-1] if w.author else w.text) for w in window],
        )
        grid, scores = linker.scores(log, encode)
        last = scores[-1].copy()
        last[0] += linker.new_bias
        shares = np.exp(last - last.max())
        best = int(np.argmax(last))
        parent = int(grid.parent[-1, best])
        is_new = parent == len(window) - 1
        return {
            "parent_id": None if is_new else window[parent].message_id,
            "conversation_id": (f"dis:{line.message_id}" if line.message_id else None)
            if is_new
            else window[parent].conversation_id,
            "confidence": round(float(shares[best] / shares.sum()), 6),
            "is_new": is_new,
        }

    def _linker(self):
        if self.disentangler is None:
            raise NotPublished("no published disentangler: `make run` trains one (asset `disentangler`)")
        if getattr(self, "_loaded_linker", None) is None:
            linker, _, encode = load_published(self.disentangler)
            self._loaded_linker = linker, encode
        return self._loaded_linker

    # -- what comes next ---------------------------------------------------------------------------------------

    def next_message(self, prefix: list[dict], candidates: list[dict], k: int = 10) -> list[str]:
        """The `message_id`s of `candidates`, most likely next after `prefix` first (at most `k`)."""
        prefix = [checked_message(m) for m in prefix]
        candidates = [checked_message(m) for m in candidates]
        if not prefix or not candidates:
            raise RequestError("next_message needs at least one prefix message and one candidate")
        ids = [str(m.get("message_id") or f"candidate-{i}") for i, m in enumerate(candidates)]
        if len(set(ids)) != len(ids):
            raise RequestError("candidates need distinct message_ids")
        lines = self._lines_together([*prefix, *candidates], ids)
        corpus, queries = Corpus(MAX_DOC_CHARS), Queries()
        indices = [corpus.add(message_id, [line]) for message_id, line in zip(ids, lines[len(prefix) :], strict=True)]
        queries.add(lines[: len(prefix)], indices[0], indices, lines[len(prefix) - 1].conversation_id, "")
        scores, _, _ = self._rank(queries.task("response_message", self.source, corpus))
        return [corpus.doc_ids[i] for i in np.argsort(-scores, kind="stable")[:k]]

    # -- messages as the benchmark's lines ---------------------------------------------------------------------

    def _archived(self, message: dict) -> Line | None:
        message_id = message.get("message_id")
        return self._by_id.get(str(message_id)) if message_id is not None else None

    @property
    def _by_id(self) -> dict[str, Line]:
        if not hasattr(self, "_line_by_id"):
            self._line_by_id = {line.message_id: line for lines in self.lines.by_channel.values() for line in lines}
        return self._line_by_id

    def _line(self, message: dict, order: int | None = None, message_id: str | None = None) -> Line:
        """The archived line of `message`, or a new line placed in its channel by time (after the channel's last
        message where its time is unknown)."""
        if (archived := self._archived(message)) is not None and order is None:
            return archived
        channel = message.get("channel")
        channel_lines = self.lines.by_channel.get(channel, [])
        ts = epoch_seconds(message.get("timestamp"))
        if order is None:
            order = self._place(channel_lines, ts)
        platform = message.get("platform") or (
            channel_lines[0].platform if channel_lines else platform_of(message.get("source") or self.source)
        )
        author = message.get("author") or ""
        known = {line.author for line in channel_lines} | {normalize_name(author)}
        return Line(
            conversation_id=str(message.get("conversation_id") or ""),
            position=0,
            channel=channel,
            ts=ts,
            text=render_message(author, message["text"], platform),
            message_id=str(message_id or message.get("message_id") or ""),
            split="query",
            platform=platform,
            author=normalize_name(author),
            reply_to=message.get("reply_to") if platform in NATIVE_REPLY_PLATFORMS else None,
            order=order,
            mentions=tuple(mentioned_names(message["text"], known - {""}, author)),
        )

    @staticmethod
    def _place(channel_lines: list[Line], ts: float | None) -> int:
        if not channel_lines:
            return 0
        if ts is None:
            return channel_lines[-1].order + 1
        times = [line.ts if line.ts is not None else -np.inf for line in channel_lines]
        at = bisect.bisect_right(times, ts)
        return channel_lines[at - 1].order + 1 if at else channel_lines[0].order

    def _lines_together(self, messages: list[dict], candidate_ids: list[str]) -> list[Line]:
        """Lines of messages asked about together: their archived lines where every one is archived in one channel,
        else new lines ordered among themselves by time (then as given)."""
        archived = [self._archived(m) for m in messages]
        if all(archived) and len({line.channel for line in archived}) == 1:
            return archived
        times = [epoch_seconds(m.get("timestamp")) for m in messages]
        ranked = sorted(range(len(messages)), key=lambda i: (times[i] is None, times[i] or 0.0, i))
        order = {i: place for place, i in enumerate(ranked)}
        ids = [None] * (len(messages) - len(candidate_ids)) + candidate_ids
        return [self._line(m, order[i], ids[i]) for i, m in enumerate(messages)]

    # -- is it new? --------------------------------------------------------------------------------------------

    def tune_new_threshold(self, conversations: Sequence[str] | None = None, max_messages: int = 200, seed: int = 0):
        """Tune `is_new` on archived messages (of `conversations`, default all): each is asked with its own
        conversation cut to the messages before it, so a first message has no conversation to join; the threshold
        on the best candidate's confidence that tells first messages from the rest most accurately (balanced) is
        kept. Returns {scorer: threshold, "balanced_accuracy": ..., "messages": ...} (accuracy on these messages:
        see `new_accuracy` for messages it was not tuned on)."""
        confidences, labels = self._new_samples(conversations, max_messages, seed)
        scorer = self._thread_scorer()
        if not any(labels) or all(labels):
            return self.new_threshold
        threshold, accuracy = best_threshold(np.array(confidences), np.array(labels))
        self.new_threshold = {scorer: threshold, "balanced_accuracy": accuracy, "messages": len(labels)}
        return self.new_threshold

    def new_accuracy(self, conversations: Sequence[str], max_messages: int = 200, seed: int = 1) -> dict | None:
        """Balanced accuracy of the tuned `is_new` on messages of `conversations` (asked as `tune_new_threshold`
        asks), which should be others than it was tuned on; None untuned or without both kinds of message."""
        threshold = self.new_threshold.get(self._thread_scorer())
        confidences, labels = map(np.array, self._new_samples(conversations, max_messages, seed))
        if threshold is None or labels.all() or not labels.any():
            return None
        accuracy = balanced_accuracy(confidences < threshold, labels)
        return {"balanced_accuracy": round(accuracy, 4), "messages": len(labels)}

    def conversations_of_split(self, split: str) -> list[str]:
        """Ids of the archive's conversations of one split (`train`, `dev`, `test`), in the archive's order."""
        return [cid for cid, lines in self.lines.by_conversation.items() if lines[0].split == split]

    def _thread_scorer(self) -> str:
        return CHAT_RANKER if self.ranker is not None and self.ranker.ranks("thread") else "fusion"

    def _new_samples(
        self, conversations: Sequence[str] | None, max_messages: int, seed: int
    ) -> tuple[list[float], list[bool]]:
        """(confidence, is first) of a first and a later message of up to `max_messages / 2` conversations, each
        asked with its conversation cut to the messages before it."""
        rng = np.random.default_rng(seed)
        pool = [cid for cid in (conversations or self.conversation_ids) if len(self.lines.by_conversation[cid]) >= 2]
        picked = [pool[i] for i in rng.permutation(len(pool))[: max_messages // 2]]
        confidences, labels = [], []
        for cid in picked:
            lines = sorted(self.lines.by_conversation[cid], key=lambda line: line.position)
            for position in (0, int(rng.integers(1, len(lines)))):
                query = lines[position]
                left_out = {line.message_id for line in lines[position:]}
                hits = self._thread(query, left_out, 1)
                if hits.confidence is None:
                    continue
                confidences.append(hits.confidence)
                labels.append(position == 0)
        return confidences, labels

    def ann_recall(self, conversations: Sequence[str], sample: int = 200, k: int = 10, seed: int = 0) -> float | None:
        """Recall@k of the ANN index against exact search, asked with the texts of single messages of
        `conversations` (queries the index does not hold, as a user's are); None without an ANN index."""
        lines = [line for cid in conversations for line in self.lines.by_conversation[cid]]
        picked = np.random.default_rng(seed).permutation(len(lines))[:sample]
        texts = [lines[i].text for i in picked]
        return self.vectors.recall(self.cache.encode(self.encoder, self.key, texts, self.batch_size), k)


def _came_before(line: Line, query: Line) -> bool:
    """Whether an archived line was there when `query` arrived: before it in its channel; in another channel (the
    query's is unknown), no later than its time, or at all when that is unknown (it arrives now)."""
    if line.channel == query.channel:
        return line.order < query.order
    return query.ts is None or line.ts is None or line.ts <= query.ts


def best_threshold(confidences: np.ndarray, is_new: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced accuracy) of the rule `new when confidence < threshold` that is best on these."""
    best = (float("-inf"), 0.0)
    for threshold in np.unique(confidences):
        accuracy = balanced_accuracy(confidences < threshold, is_new)
        if accuracy > best[1]:
            best = (float(threshold), accuracy)
    return best[0], round(best[1], 4)


def balanced_accuracy(predicted_new: np.ndarray, is_new: np.ndarray) -> float:
    """The mean of the shares of first messages called new and of later messages called not new."""
    return float(0.5 * (predicted_new[is_new].mean() + (~predicted_new[~is_new]).mean()))


def resolve_ranker(ranker: str | ChatRanker | bool | None, models: ModelStore) -> ChatRanker | None:
    """The ranker asked for: None -> the published `chat_ranker` (when there is one), False -> none."""
    if ranker is False:
        return None
    if isinstance(ranker, ChatRanker):
        return ranker
    folder = Path(ranker) if ranker else models.latest(CHAT_RANKER)
    if folder is None:
        return None
    try:
        return ChatRanker.load(folder)
    except Exception as exc:  # an unreadable ranker must not stop search: fusion ranks instead, and the log says why
        log.warning("chat_ranker at %s failed to load (%s: %s); using fusion", folder, type(exc).__name__, exc)
        return None
