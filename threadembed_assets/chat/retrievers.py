"""Retrievers that score every query against every document: dense (any Matryoshka dimension, with a cached
corpus), dense over a document's windows, BM25, hybrid by reciprocal rank fusion, dense with a time-proximity prior,
and recency (time proximity in the channel alone)."""

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import bm25s
import duckdb
import numpy as np
import pyarrow as pa
from scipy import sparse

from threadembed_assets import settings
from threadembed_assets.chat.encoders import OnnxEncoder, token_count_batches
from threadembed_assets.chat.features import nearest_gaps as chat_nearest_gaps
from threadembed_assets.chat.task import Task

logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its logger to DEBUG when imported: a line per index

RRF_K = 60
WINDOW_LINES = 4  # a document's windows for `windowed_scores`: this many rendered lines...
WINDOW_STRIDE = 2  # ...every this many lines


def model_key(name_or_path: str) -> str:
    """Identity of a model for the cache: a local checkpoint by its resolved path and weights' mtime."""
    path = Path(name_or_path)
    if not path.exists():
        return name_or_path
    resolved = path.resolve()
    weights = sorted(resolved.glob("*.safetensors")) + sorted(resolved.glob("*.bin"))
    stamp = max((w.stat().st_mtime_ns for w in weights), default=0)
    return f"{resolved}@{stamp}"


def text_digest(text: str) -> str:
    """The key a text's embedding is cached under (with the model's key)."""
    return hashlib.sha1(text.encode()).hexdigest()


class CachedEncoder:
    """The one path from texts to embeddings: cached vectors where known, the model for the rest, which are kept.

    Subclasses say where vectors live (`lookup`, `store`)."""

    hits = misses = 0

    def lookup(self, key: str, digests: list[str]) -> dict[str, np.ndarray]:
        """Known vectors of model `key` among `digests`."""
        raise NotImplementedError

    def store(self, key: str, vectors: dict[str, np.ndarray]) -> None:
        """Keep freshly encoded vectors of model `key`."""
        raise NotImplementedError

    def encode(self, model, key: str, texts: list[str], batch_size: int) -> np.ndarray:
        """Full-dimension embeddings of `texts` (rows in their order), encoding only those not cached for `key`."""
        if not texts:
            return np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
        digests = [text_digest(text) for text in texts]
        found = self.lookup(key, list(dict.fromkeys(digests)))
        missing = {digest: text for digest, text in zip(digests, texts, strict=True) if digest not in found}
        self.hits += len(digests) - sum(1 for digest in digests if digest in missing)
        self.misses += len(missing)
        if missing:
            fresh = encode_by_token_count(model, list(missing.values()), batch_size)
            encoded = dict(zip(missing, fresh, strict=True))
            self.store(key, encoded)
            found.update(encoded)
        return np.array([found[digest] for digest in digests], dtype=np.float32)


def encode_by_token_count(model, texts: list[str], batch_size: int) -> np.ndarray:
    """`model.encode` of `texts` (rows in their order) in batches of texts of similar token counts, where the model
    has a tokenizer: sentence-transformers groups texts by characters, which for chat lines pads the batches to half
    again the tokens they hold. The ONNX export batches this way by itself."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or isinstance(model, OnnxEncoder) or len(texts) <= batch_size:
        return np.asarray(model.encode(texts, batch_size=batch_size, convert_to_numpy=True), dtype=np.float32)
    limit = getattr(model, "max_seq_length", None) or 512
    out = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    for rows in token_count_batches(tokenizer(texts, truncation=True, max_length=limit)["input_ids"], batch_size):
        out[rows] = model.encode([texts[i] for i in rows], batch_size=batch_size, convert_to_numpy=True)
    return out


class HeldVectors(CachedEncoder):
    """Vectors held in memory by model key, for a model that has no key of its own yet (a checkpoint not yet
    saved): they go to a lasting cache under its key once it has one."""

    def __init__(self):
        self.vectors: dict[str, dict[str, np.ndarray]] = {}

    def lookup(self, key: str, digests: list[str]) -> dict[str, np.ndarray]:
        held = self.vectors.get(key, {})
        return {digest: held[digest] for digest in digests if digest in held}

    def store(self, key: str, vectors: dict[str, np.ndarray]) -> None:
        self.vectors.setdefault(key, {}).update(vectors)


class EmbeddingCache(CachedEncoder):
    """Embeddings per (model, text hash) in a DuckDB file, so that a re-run does not re-encode."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(path))
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS embeddings (model VARCHAR, text_hash VARCHAR, vector FLOAT[], "
            "PRIMARY KEY (model, text_hash))"
        )

    def lookup(self, key: str, digests: list[str]) -> dict[str, np.ndarray]:
        self.con.register("wanted", pa.table({"text_hash": digests}))
        try:
            found = self.con.sql(
                "SELECT e.text_hash, e.vector FROM embeddings e JOIN wanted w USING (text_hash) WHERE e.model = ?",
                params=[key],
            ).to_arrow_table()
        finally:
            self.con.unregister("wanted")
        if not found.num_rows:
            return {}
        vectors = found["vector"].combine_chunks()
        matrix = vectors.flatten().to_numpy().astype(np.float32).reshape(found.num_rows, -1)
        return dict(zip(found["text_hash"].to_pylist(), matrix, strict=True))

    def store(self, key: str, vectors: dict[str, np.ndarray]) -> None:
        matrix = np.asarray(list(vectors.values()), dtype=np.float32)
        offsets = np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32)
        table = pa.table(
            {
                "model": [key] * len(vectors),
                "text_hash": list(vectors),
                "vector": pa.ListArray.from_arrays(offsets, matrix.reshape(-1)),
            }
        )
        self.con.register("fresh", table)
        try:
            self.con.execute("INSERT OR REPLACE INTO embeddings SELECT model, text_hash, vector FROM fresh")
        finally:
            self.con.unregister("fresh")

    def close(self) -> None:
        self.con.close()


def dense_scores(query_vectors: np.ndarray, doc_vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Cosine similarity at the first `dim` dimensions (Matryoshka truncation, then renormalised)."""
    q, d = (_unit_rows(v[:, :dim] if dim else v) for v in (query_vectors, doc_vectors))
    return q @ d.T


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def line_windows(docs: list[str]) -> tuple[list[str], np.ndarray]:
    """Overlapping windows of `WINDOW_LINES` lines every `WINDOW_STRIDE` lines of each document (the last window
    ends at the document's end; a short document is one window), and the index of the document of each window."""
    windows: list[str] = []
    owners: list[int] = []
    for index, doc in enumerate(docs):
        lines = doc.split("\n")
        last_start = max(0, len(lines) - WINDOW_LINES)
        starts = sorted({*range(0, last_start + 1, WINDOW_STRIDE), last_start})
        windows += ["\n".join(lines[start : start + WINDOW_LINES]) for start in starts]
        owners += [index] * len(starts)
    return windows, np.array(owners, dtype=np.int64)


def best_window_scores(window_scores: np.ndarray, owners: np.ndarray, n_docs: int) -> np.ndarray:
    """(queries x documents) similarity of each document's best-matching window (`line_windows`)."""
    best = np.full((window_scores.shape[0], n_docs), -np.inf)
    np.maximum.at(best.T, owners, window_scores.T)
    return best


def pooled_vectors(model, key: str, texts: list[str], cache: CachedEncoder, batch_size: int) -> np.ndarray:
    """Each text's vector as the mean of its lines' unit vectors (`mean_of_lines`), every distinct line encoded once
    through `cache`: a message costs one encoding whatever documents, windows and tasks it falls in. On the chat
    ranker's thread and response tasks this scores as encoding each text whole does (docs/pipeline/chat-ranker.md)."""
    if not texts:
        return np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
    return mean_of_lines(texts, lambda lines: cache.encode(model, key, lines, batch_size))


def mean_of_lines(texts: list[str], encode_lines: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Each of `texts` (at least one) as the mean of its lines' unit vectors, renormalised; `encode_lines` gets every
    distinct line once."""
    split = [text.split("\n") for text in texts]
    lines = list(dict.fromkeys(line for parts in split for line in parts))
    vectors = _unit_rows(np.asarray(encode_lines(lines), dtype=np.float32))
    where = {line: column for column, line in enumerate(lines)}
    counts = np.array([len(parts) for parts in split])
    rows = np.repeat(np.arange(len(texts)), counts)
    columns = np.array([where[line] for parts in split for line in parts], dtype=np.int64)
    means = sparse.csr_matrix((1.0 / counts[rows], (rows, columns)), shape=(len(texts), len(lines))) @ vectors
    return _unit_rows(means).astype(np.float32)


def windowed_scores(doc_scores: np.ndarray, window_scores: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """Each document's similarity to the query plus that of its best-matching window: a one-line query about one
    moment of a long conversation is found by the window around that moment as well as by the whole."""
    return doc_scores + best_window_scores(window_scores, owners, doc_scores.shape[1])


def bm25_scores(task: Task) -> np.ndarray:
    """BM25 (bm25s, English stopwords) of every query against every document."""
    index = bm25s.BM25()
    index.index(bm25s.tokenize(task.docs, stopwords="en", show_progress=False), show_progress=False)
    tokenized = bm25s.tokenize(task.queries, stopwords="en", show_progress=False, return_ids=False)
    return np.vstack([index.get_scores(tokens) for tokens in tokenized]) if task.queries else np.zeros((0, 0))


def rrf_scores(*score_matrices: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """Reciprocal rank fusion: sum of 1 / (60 + rank) over the fused retrievers."""
    fused = np.zeros_like(score_matrices[0], dtype=np.float64)
    for scores in score_matrices:
        masked = scores.astype(np.float64, copy=True)
        if allowed is not None:
            masked[~allowed] = -np.inf
        ranks = (-masked).argsort(axis=1).argsort(axis=1) + 1
        fused += 1.0 / (RRF_K + ranks)
    return fused


def nearest_gaps(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, messages) from each query's moment to the nearest message of each document in the same channel
    (`chat.features.nearest_gaps`; inf without a time context). Only what the task lets a retriever know enters: a
    thread query's own message is not part of its conversation's times."""
    if not task.queries or not task.has_time_context():
        shape = (len(task.queries), len(task.docs))
        return np.full(shape, np.inf), np.full(shape, np.inf)
    return chat_nearest_gaps(
        task.query_channel, task.query_ts, task.query_order, task.doc_channel, task.doc_times, task.doc_orders
    )


def recency_scores(task: Task) -> np.ndarray:
    """The obvious chat baseline: the document nearest in time to the query's moment in its channel ranks first,
    ties (and documents without times) broken by how many messages lie between. For a thread query that is the
    conversation with the nearest other message; for a response query, the candidate that comes next."""
    seconds, messages = nearest_gaps(task)
    far = 1e9  # seconds: farther than any time in chat, and small enough that a message count still counts
    return -(np.where(np.isfinite(seconds), seconds, far) + np.where(np.isfinite(messages), messages, far) * 1e-4)


def time_prior(task: Task, scale_s: float) -> np.ndarray:
    """exp(-gap / scale) with the gap to the document's nearest message in the query's channel (0 where unknown)."""
    seconds, _ = nearest_gaps(task)
    return np.exp(-seconds / scale_s)


def encode_task(model, key: str, task: Task, cache: EmbeddingCache, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(query vectors, document vectors) of a task at the model's full dimension."""
    return cache.encode(model, key, task.queries, batch_size), cache.encode(model, key, task.docs, batch_size)


def default_cache_path() -> Path:
    """`$THREADEMBED_DATA_DIR/cache/embeddings.duckdb`."""
    return settings.data_dir() / "cache" / "embeddings.duckdb"


@contextmanager
def shared_embeddings() -> Iterator[EmbeddingCache | None]:
    """The run's embedding cache, so that an asset reads the vectors earlier assets made instead of encoding the
    same texts again; None while another process writes it (the asset then encodes by itself)."""
    try:
        cache = EmbeddingCache(default_cache_path())
    except duckdb.IOException:
        yield None
        return
    try:
        yield cache
    finally:
        cache.close()
