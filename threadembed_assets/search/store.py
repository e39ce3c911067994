"""A built `ChatIndex` on disk: `<data dir>/index/<source>/<build id>/` (manifest, float16 vectors, the ANN index,
the BM25 index), with `<data dir>/index/<source>/current` switched to a new build in one atomic rename, so a reader
never sees half an index."""

import hashlib
import json
import shutil
import time
from pathlib import Path

import bm25s

from threadembed_assets import settings
from threadembed_assets.links import switch_link
from threadembed_assets.search.vectors import VectorIndex

MANIFEST = "manifest.json"
BM25_FOLDER = "bm25"
KEEP_BUILDS = 2  # builds kept besides `current`, for readers still holding an older one
DOC_VECTORS = "mean of message vectors"  # what a conversation's vector is; builds made otherwise are encoded again


def index_root(source: str) -> Path:
    """`<data dir>/index/<source>`."""
    return settings.data_dir() / "index" / source


def current_build(source: str) -> Path | None:
    """The folder `current` points at, or None before the first build."""
    link = index_root(source) / "current"
    return link.resolve() if link.exists() else None


def docs_digest(conversation_ids: list[str], docs: list[str]) -> str:
    """What an index's vectors were computed from: its conversations and their texts."""
    digest = hashlib.sha256()
    for cid, doc in zip(conversation_ids, docs, strict=True):
        digest.update(cid.encode() + b"\0" + doc.encode() + b"\0")
    return digest.hexdigest()[:24]


def save_index(index, source: str, extra: dict) -> tuple[Path, dict]:
    """Write `index`'s vectors, ANN and BM25 indexes and manifest as a new build of `source`, switch `current` to
    it, and drop older builds beyond `KEEP_BUILDS`. Returns (the build folder, the manifest)."""
    root = index_root(source)
    build = root / f"build-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000:06d}"
    build.mkdir(parents=True)
    index.vectors.save(build)
    index.bm25.save(str(build / BM25_FOLDER))
    manifest = {
        "source": source,
        "model": index.model,
        "model_key": index.key,
        "conversations": len(index.docs),
        "dimension": int(index.vectors.vectors.shape[1]),
        "docs_digest": docs_digest(index.conversation_ids, index.docs),
        "doc_vectors": DOC_VECTORS,
        "ann": index.vectors.ann is not None,
        "new_threshold": index.new_threshold,
        **extra,
    }
    (build / MANIFEST).write_text(json.dumps(manifest, indent=1))
    switch_link(root / "current", build, within=root)
    for old in sorted(p for p in root.glob("build-*") if p.resolve() != build.resolve())[:-KEEP_BUILDS]:
        shutil.rmtree(old, ignore_errors=True)
    return build, manifest


def load_stored(source: str, model_key: str, conversation_ids: list[str], docs: list[str]):
    """(vectors, BM25 index, manifest) of `source`'s current build when it was built with `model_key` from these
    very conversations, their vectors made as this code makes them, else None (the caller encodes afresh)."""
    build = current_build(source)
    if build is None or not (build / MANIFEST).exists():
        return None
    manifest = json.loads((build / MANIFEST).read_text())
    made = (manifest.get("model_key"), manifest.get("docs_digest"), manifest.get("doc_vectors"))
    if made != (model_key, docs_digest(conversation_ids, docs), DOC_VECTORS):
        return None
    return VectorIndex.load(build), bm25s.BM25.load(str(build / BM25_FOLDER)), manifest
