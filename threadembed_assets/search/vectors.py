"""Conversation vectors for search: unit-length float16 rows, with an approximate nearest-neighbour index (usearch,
cosine, int8) once there are enough of them that exact search costs more than it saves. The int8 graph proposes
`OVERSAMPLE` times the asked number of rows and the float16 rows re-score them: int8 alone caps recall@10 near 0.94,
re-scored it reaches 0.99+ (bench/search.py)."""

from pathlib import Path

import numpy as np
from usearch.index import Index

ANN_MIN_ROWS = 20_000  # below this an exact scan of float16 rows answers in a few milliseconds
OVERSAMPLE = 4
VECTORS_FILE = "vectors.npy"
ANN_FILE = "ann.usearch"


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float16."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float16)


class VectorIndex:
    """Cosine search over rows 0..n-1: approximate (usearch) without a filter when an ANN index is built, exact over
    the allowed rows otherwise."""

    def __init__(self, vectors: np.ndarray, ann: Index | None = None):
        self.vectors = vectors
        self.ann = ann

    @classmethod
    def build(cls, vectors: np.ndarray, ann: bool | None = None, threads: int = 0) -> "VectorIndex":
        """An index of `vectors` (any float rows); `ann=None` builds the ANN index from `ANN_MIN_ROWS` rows on."""
        rows = unit_rows(vectors)
        if ann is None:
            ann = len(rows) >= ANN_MIN_ROWS
        if not ann or not len(rows):
            return cls(rows)
        index = Index(ndim=rows.shape[1], metric="cos", dtype="i8")
        index.add(np.arange(len(rows)), rows.astype(np.float32), threads=threads)
        return cls(rows, index)

    def __len__(self) -> int:
        return len(self.vectors)

    def exact(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(row ids, cosine) of the `k` nearest allowed rows, best first."""
        query = unit_rows(vector[None, :])[0].astype(np.float32)
        rows = np.flatnonzero(allowed) if allowed is not None else None
        matrix = self.vectors if rows is None else self.vectors[rows]
        scores = matrix.astype(np.float32) @ query if len(matrix) else np.zeros(0, dtype=np.float32)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        return (top if rows is None else rows[top]), scores[top]

    def search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(row ids, cosine) of the `k` nearest rows (allowed rows only, when given), best first."""
        if self.ann is None or allowed is not None:
            return self.exact(vector, k, allowed)
        query = unit_rows(vector[None, :])[0].astype(np.float32)
        proposed = np.asarray(self.ann.search(query, min(len(self), OVERSAMPLE * max(k, 10))).keys, dtype=np.int64)
        scores = self.vectors[proposed].astype(np.float32) @ query
        best = np.argsort(-scores, kind="stable")[:k]
        return proposed[best], scores[best]

    def recall(self, queries: np.ndarray, k: int = 10) -> float | None:
        """Recall@k of the ANN index against exact search for `queries` (rows of vectors that are not the index's
        own: a row asked of its own index finds itself, which flatters the ANN); None without an ANN index."""
        if self.ann is None or not len(queries):
            return None
        found = 0
        for vector in np.asarray(queries, dtype=np.float32):
            found += len(set(self.search(vector, k)[0]) & set(self.exact(vector, k)[0]))
        return round(found / (len(queries) * min(k, len(self))), 4)

    def nbytes(self) -> dict[str, int]:
        """Bytes of the float16 rows (memory-mapped once loaded) and of the ANN index (graph and int8 rows)."""
        return {"vectors": int(self.vectors.nbytes), "ann": int(self.ann.memory_usage) if self.ann is not None else 0}

    def save(self, folder: Path) -> None:
        np.save(folder / VECTORS_FILE, self.vectors)
        if self.ann is not None:
            self.ann.save(str(folder / ANN_FILE))

    @classmethod
    def load(cls, folder: Path) -> "VectorIndex":
        """A saved index; the float16 rows are memory-mapped (read where a search touches them)."""
        vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
        ann = Index.restore(str(folder / ANN_FILE)) if (folder / ANN_FILE).exists() else None
        return cls(vectors, ann)
