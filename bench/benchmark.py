"""Encoding throughput of the benchmark (through its embedding cache) against bare `model.encode` on the same
texts, in the same run, and the time a cached re-run of the scoring saves.

    python bench/benchmark.py [--data ../shared/data/irc/irc_dev.jsonl]
"""

import argparse
import tempfile
import time
from pathlib import Path

from threadembed_assets.benchmark.__main__ import tasks_from_file
from threadembed_assets.benchmark.score import score_all
from threadembed_assets.chat.retrievers import EmbeddingCache
from threadembed_assets.evaluation.tasks import TaskConfig
from threadembed_assets.resources import ModelStore
from threadembed_assets.training.train import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared/data/irc/irc_dev.jsonl"
    parser.add_argument("--data", type=Path, default=default)
    args = parser.parse_args()
    tasks = tasks_from_file(args.data, TaskConfig(held_out_platform=""))
    texts = list(dict.fromkeys(t for task in tasks for t in task.queries + task.docs))
    base = ModelStore().base_model_path()
    model = load_model(base, "cpu")
    model.encode(texts[:64], batch_size=64)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model.encode(texts, batch_size=64)
        bare_s = time.perf_counter() - start
        cache = EmbeddingCache(Path(tmp) / "cache.duckdb")
        start = time.perf_counter()
        cache.encode(model, "bench", texts, 64)
        ours_s = time.perf_counter() - start
        cache.close()
        timings = []
        for _ in range(2):
            cache = EmbeddingCache(Path(tmp) / "scores.duckdb")
            start = time.perf_counter()
            score_all(tasks, {"base": base}, cache, device="cpu", batch_size=64, log=lambda m: None)
            timings.append(time.perf_counter() - start)
            cache.close()
    print(f"{len(texts)} distinct texts from {args.data.name} ({len(tasks)} tasks), all-MiniLM-L6-v2 on CPU")
    print(f"bare model.encode      {len(texts) / bare_s:7.1f} texts/s")
    print(f"benchmark (cache miss) {len(texts) / ours_s:7.1f} texts/s   ratio {bare_s / ours_s:.2f}x")
    print(f"scoring, cold cache    {timings[0]:7.1f} s")
    print(f"scoring, warm cache    {timings[1]:7.1f} s   saves {timings[0] - timings[1]:.1f} s")


if __name__ == "__main__":
    main()
