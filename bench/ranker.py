"""What the chat ranker costs on top of dense retrieval: on the tasks of a chat file with the embeddings already
encoded, the time of the text signals (dense, best window, BM25), of the chat features and of the ranker's scoring,
against plain dense scoring and the recency baseline of the same tasks, in the same run.

    python bench/ranker.py [--data ../shared/data/irc/irc_dev.jsonl] [--ranker models/chat_ranker/latest]

Without `--ranker` a ranker is fitted on the file's own tasks first (its scores are not a result; only timings are).
"""

import argparse
import tempfile
import time
from pathlib import Path

from threadembed_assets.benchmark.__main__ import tasks_from_file
from threadembed_assets.chat.ranker import RANKED_KINDS, ChatRanker, fit_ranker, task_features, text_signals
from threadembed_assets.chat.retrievers import (
    EmbeddingCache,
    bm25_scores,
    dense_scores,
    encode_task,
    model_key,
    recency_scores,
)
from threadembed_assets.chat.task import task_kind
from threadembed_assets.evaluation.tasks import TaskConfig
from threadembed_assets.resources import ModelStore
from threadembed_assets.training.train import load_model


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/irc/irc_dev.jsonl"
    )
    parser.add_argument("--ranker", type=Path, help="a published chat_ranker folder (default: fit one here)")
    args = parser.parse_args()
    tasks = [
        t for t in tasks_from_file(args.data, TaskConfig(held_out_platform="")) if task_kind(t.name) in RANKED_KINDS
    ]
    ranker = ChatRanker.load(args.ranker) if args.ranker else None
    path = ranker.model_path if ranker else ModelStore().base_model_path()
    model, key = load_model(path, "cpu"), model_key(path)
    seconds = {"dense": 0.0, "recency": 0.0, "text signals": 0.0, "chat features": 0.0, "ranker scoring": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp) / "cache.duckdb")
        for task in tasks:  # encode once, so that every figure below is the scoring alone
            text_signals(model, key, task, cache, 64, bm25_scores(task))
        features = []
        for task in tasks:
            vectors, _ = timed(encode_task, model, key, task, cache, 64)
            seconds["dense"] += timed(dense_scores, *vectors)[1]
            seconds["recency"] += timed(recency_scores, task)[1]
            signals, spent = timed(lambda t: text_signals(model, key, t, cache, 64, bm25_scores(t)), task)
            seconds["text signals"] += spent
            found, spent = timed(task_features, task, signals)
            seconds["chat features"] += spent
            features.append(found)
        cache.close()
    ranker = ranker or fit_ranker(path, features, features, log=lambda m: None)
    for found in features:
        seconds["ranker scoring"] += timed(ranker.scores, found)[1]
    pairs = sum(len(f.qi) for f in features)
    queries = sum(len(t.queries) for t in tasks)
    print(f"{args.data.name}: {len(tasks)} tasks, {queries} queries, {pairs} candidate pairs; model {path}")
    for name, spent in seconds.items():
        print(f"{name:15s} {spent:7.3f} s  {pairs / spent:12,.0f} pairs/s  {1000 * spent / queries:7.2f} ms/query")
    extra = seconds["chat features"] + seconds["ranker scoring"]
    print(f"chat features + ranker over dense + recency: {extra / (seconds['dense'] + seconds['recency']):.2f}x")


if __name__ == "__main__":
    main()
