"""Search speed: build rate, query latency (Python API and HTTP with concurrent clients), ANN recall and memory.

    python bench/search.py [--sizes 10000 100000 1000000] [--queries 200] [--clients 8]

1. Real chat: the shipped ubuntu_irc sample (3,121 conversations) indexed by `ChatIndex.from_messages` with the base
   model, against bare `model.encode` of the same conversation texts in the same run (build rate ratio).
2. Per size: generated conversations (two messages each, texts drawn from the sample generator, channels of 2,000
   conversations) with clustered random unit vectors in place of encoded ones (encoding a million conversations
   takes hours on 2 cores; search cost does not depend on where the vectors came from), indexed with the ANN
   (usearch int8, re-scored in float16). Queries are real IRC messages, encoded by the model on every call, as a
   user's query is. Latency p50 / p95 / p99 of `ChatIndex.search` (k=10), then of `GET /search` on a real uvicorn
   server with `--clients` concurrent clients, and the queries per second they got; ANN recall@10 against exact
   search, asked with held-out vectors of the same distribution; bytes per million conversations.
"""

import argparse
import gzip
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn

from threadembed_assets.chat.encoders import OnnxEncoder
from threadembed_assets.evaluation.tasks import ChatLines, Line
from threadembed_assets.resources import ModelStore
from threadembed_assets.search.http import create_app
from threadembed_assets.search.index import ChatIndex, SearchModel, archive_from_messages, load_search_model
from threadembed_assets.search.onnx import export_onnx
from threadembed_assets.sources.sample import generate_sample
from threadembed_assets.training.train import load_model

SAMPLE = Path(__file__).resolve().parents[1] / "threadembed_assets" / "sources" / "data" / "ubuntu_irc.jsonl.gz"


def percentiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1000
    return " / ".join(f"{np.percentile(ms, p):.1f}" for p in (50, 95, 99))


def real_messages() -> list[dict]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def build_rate(messages: list[dict], base: str) -> None:
    """Conversations per second of `ChatIndex.from_messages` (load, cut, encode, index) against bare encode."""
    started = time.perf_counter()
    index = ChatIndex.from_messages(
        messages, model=base, ranker=False, tune=False, models=ModelStore(root="/nonexistent")
    )
    ours = time.perf_counter() - started
    model = load_model(base, "cpu")
    started = time.perf_counter()
    model.encode(index.docs, batch_size=64, convert_to_numpy=True)
    bare = time.perf_counter() - started
    n = len(index.docs)
    print(
        f"real chat: {len(messages)} messages, {n} conversations: index built in {ours:.1f} s ({n / ours:.1f} conv/s); "
        f"bare model.encode of the same texts {bare:.1f} s ({n / bare:.1f} conv/s); ratio {bare / ours:.2f}x"
    )


def synthetic_lines(n_conversations: int, seed: int = 0) -> ChatLines:
    """`n_conversations` conversations of two messages, texts from the sample generator, 2,000 per channel."""
    texts = [row["text"] for row in generate_sample(20_000, seed=seed)]
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(texts), size=2 * n_conversations)
    by_conversation, by_channel, of_channel = {}, {}, {}
    for c in range(n_conversations):
        channel = f"channel-{c // 2000}"
        cid = f"c{c}"
        lines = []
        for position in range(2):
            order = len(by_channel.setdefault(channel, []))
            author = f"user{(c * 7 + position) % 500}"
            line = Line(
                conversation_id=cid,
                position=position,
                channel=channel,
                ts=1.7e9 + (c % 2000) * 60 + position * 30,
                text=f"{author}: {texts[picks[2 * c + position]]}",
                message_id=f"{cid}:{position}",
                split="train",
                platform="irc",
                author=author,
                reply_to=None,
                order=order,
                mentions=(),
            )
            by_channel[channel].append(line)
            lines.append(line)
        by_conversation[cid] = lines
        of_channel.setdefault(channel, {})[cid] = lines
    return ChatLines("generated", by_conversation, by_channel, of_channel)


RECALL_QUERIES = 200


def clustered_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(10, n // 200), dim)).astype(np.float32)
    vectors = centers[rng.integers(len(centers), size=n)]
    vectors += 0.7 * rng.normal(size=(n, dim)).astype(np.float32)
    return vectors


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_latency(index: ChatIndex, queries: list[str], clients: int) -> tuple[list[float], float]:
    """Latencies of GET /search from `clients` concurrent clients over a real uvicorn server, and queries/s."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(["generated"], load=lambda source: index), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    latencies: list[float] = []
    lock = threading.Lock()

    def client(share: list[str]) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as session:
            for query in share:
                started = time.perf_counter()
                session.get("/search", params={"q": query, "k": 10}).raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)

    workers = [threading.Thread(target=client, args=(queries[i::clients],)) for i in range(clients)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    server.should_exit = True
    thread.join()
    return latencies, len(latencies) / elapsed


def onnx_speed(messages: list[dict], base: str, folder: Path) -> None:
    """Encoding speed of the int8 ONNX export against PyTorch on the same conversation texts (batches of 64) and
    on single queries, in one run; the export is made in `folder`."""
    model = load_model(base, "cpu")
    started = time.perf_counter()
    export_onnx(model, base, folder)
    exported = time.perf_counter() - started
    int8 = OnnxEncoder(folder)
    with archive_from_messages(messages[:6000], "bench") as con:
        lines = ChatLines.read(con, "bench", None)
    texts = [ChatIndex._document(conversation) for conversation in lines.by_conversation.values()]
    singles = [m["text"] for m in messages[:200]]
    timings = {}
    for name, encoder in (("pytorch", model), ("int8", int8)):
        encoder.encode(texts[:64], batch_size=64)
        started = time.perf_counter()
        vectors = encoder.encode(texts, batch_size=64)
        batch = time.perf_counter() - started
        started = time.perf_counter()
        for text in singles:
            encoder.encode([text], batch_size=1)
        timings[name] = (batch, (time.perf_counter() - started) / len(singles), np.asarray(vectors))
    agree = float((unit(timings["pytorch"][2]) * unit(timings["int8"][2])).sum(axis=1).mean())
    print(
        f"ONNX int8 (exported in {exported:.0f} s): {len(texts)} conversations at {len(texts) / timings['int8'][0]:.1f}"
        f"/s against PyTorch {len(texts) / timings['pytorch'][0]:.1f}/s, "
        f"{timings['pytorch'][0] / timings['int8'][0]:.2f}x; one query {1000 * timings['int8'][1]:.1f} ms against "
        f"{1000 * timings['pytorch'][1]:.1f} ms, {timings['pytorch'][1] / timings['int8'][1]:.2f}x; mean cosine to "
        f"PyTorch's vectors {agree:.4f}"
    )


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def at_size(n: int, queries: list[str], clients: int, model: SearchModel) -> None:
    started = time.perf_counter()
    lines = synthetic_lines(n)
    vectors = clustered_vectors(n + RECALL_QUERIES, model.encoder.get_embedding_dimension())
    vectors, held_out = vectors[:n], vectors[n:]  # ANN recall is asked with vectors the index does not hold
    made = time.perf_counter() - started
    started = time.perf_counter()
    index = ChatIndex(lines, model, None, doc_vectors=vectors, ann=True)
    built = time.perf_counter() - started
    for query in queries[:5]:
        index.search(query)  # warm up
    api = []
    for query in queries:
        started = time.perf_counter()
        index.search(query, k=10)
        api.append(time.perf_counter() - started)
    http, qps = http_latency(index, queries, clients)
    recall = index.vectors.recall(held_out)
    size = index.vectors.nbytes()
    per_million = {part: value * 1_000_000 / n / 1e9 for part, value in size.items()}
    print(
        f"{n:>9,} conversations | index built in {built:.1f} s (data generated in {made:.1f} s) | "
        f"API p50/p95/p99 {percentiles(api)} ms | HTTP x{clients} p50/p95/p99 {percentiles(http)} ms, {qps:.1f} q/s | "
        f"ANN recall@10 {recall} | per million: ANN {per_million['ann']:.2f} GB + float16 rows "
        f"{per_million['vectors']:.2f} GB (memory-mapped)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--skip-real", action="store_true", help="skip the real-chat build rate and ONNX speed")
    parser.add_argument("--pytorch", action="store_true", help="encode queries with PyTorch, not the ONNX export")
    args = parser.parse_args()
    base = ModelStore().base_model_path()
    messages = real_messages()
    if not args.skip_real:
        build_rate(messages, base)
    rng = np.random.default_rng(1)
    texts = [m["text"] for m in messages if len(m["text"]) > 20]
    queries = [texts[i] for i in rng.choice(len(texts), size=args.queries, replace=False)]
    print(f"queries: {len(queries)} real IRC messages; median {statistics.median(len(q) for q in queries)} chars")
    with tempfile.TemporaryDirectory() as folder:
        if args.skip_real and not args.pytorch:
            export_onnx(load_model(base, "cpu"), base, Path(folder))
        elif not args.pytorch:
            onnx_speed(messages, base, Path(folder))
        model = load_search_model(base, base, "cpu", None if args.pytorch else Path(folder))
        print(f"queries encoded by {model.name}")
        for n in args.sizes:
            at_size(n, queries, args.clients, model)


if __name__ == "__main__":
    main()
