"""The chat ranker's text signals from its messages' vectors against encoding every document and window whole: the
ranker fitted both ways on the same queries, scored on the same dev and test queries, and what each encodes.

    python bench/ranker_pooling.py [--queries 300] [--write docs/results/ranker_pooling.md]

Reads the warehouse and the models of a `make run` (the model `chat_ranker` reads, its tasks cut as `chat_ranker`
cuts them). `pooled` is what the ranker does (`retrievers.pooled_vectors`: a document or window is the mean of its
messages' vectors, each message encoded once); `whole` encodes each document and each window as one text. What
each way costs on a first run is counted, not timed (a count does not depend on what else the machine runs): the
distinct texts it encodes and their tokens, at most the model's input length each.
"""

import argparse
from pathlib import Path

import numpy as np
from report import add_write_option, emit, encoded_tokens, paired_row

from threadembed_assets.benchmark.assets import RankerConfig
from threadembed_assets.chat.ranker import RANKED_KINDS, fit_ranker, query_mrr, task_features, text_signals
from threadembed_assets.chat.retrievers import (
    EmbeddingCache,
    best_window_scores,
    bm25_scores,
    default_cache_path,
    dense_scores,
    line_windows,
    model_key,
)
from threadembed_assets.chat.task import task_kind
from threadembed_assets.evaluation.tasks import all_tasks
from threadembed_assets.resources import ModelStore
from threadembed_assets.settings import exit_quietly, warehouse_path
from threadembed_assets.training.assets import ranker_model
from threadembed_assets.training.train import load_model
from threadembed_assets.warehouse.connection import connect

SPLITS = ("train", "dev", "test")


def whole_signals(model, key, task, cache, batch_size, bm25) -> dict[str, np.ndarray]:
    """The text signals with every document and window encoded as one text."""
    queries = cache.encode(model, key, task.queries, batch_size)
    windows, owners = line_windows(task.docs)
    by_window = dense_scores(queries, cache.encode(model, key, windows, batch_size))
    return {
        "dense": dense_scores(queries, cache.encode(model, key, task.docs, batch_size)),
        "dense_window": best_window_scores(by_window, owners, len(task.docs)),
        "bm25": bm25,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300, help="queries per task and split (the cpu preset's)")
    add_write_option(parser)
    args = parser.parse_args()
    with connect(warehouse_path(), read_only=True) as con:
        by_split = {split: all_tasks(con, [split], RankerConfig(max_queries=args.queries)) for split in SPLITS}
    tasks = {s: [t for t in ts if task_kind(t.name) in RANKED_KINDS and t.queries] for s, ts in by_split.items()}
    every = [t for ts in tasks.values() for t in ts]
    path = ranker_model(ModelStore())
    model, key = load_model(path, "cpu"), model_key(path)
    bm25 = {id(t): bm25_scores(t) for t in every}
    queries, docs = {q for t in every for q in t.queries}, {d for t in every for d in t.docs}
    texts = {
        "pooled": queries | {line for doc in docs for line in doc.split("\n")},
        "whole": queries | docs | {text for t in every for text in line_windows(t.docs)[0]},
    }
    cache = EmbeddingCache(default_cache_path())  # the run's vectors: both ways read what they share
    features = {
        way: {
            split: [task_features(t, signals(model, key, t, cache, 64, bm25[id(t)])) for t in split_tasks]
            for split, split_tasks in tasks.items()
        }
        for way, signals in (("pooled", text_signals), ("whole", whole_signals))
    }
    cache.close()
    rankers = {way: fit_ranker(path, f["train"], f["dev"], log=lambda message: None) for way, f in features.items()}
    resolved = Path(path).resolve()
    lines = [f"Model `{resolved.parent.name}/{resolved.name}`; at most {args.queries} queries per task and split.", ""]
    lines += ["| way | distinct texts encoded | tokens |", "|---|---|---|"]
    for way, found in texts.items():
        lines.append(f"| {way} | {len(found):,} | {encoded_tokens(model, found):,} |")
    lines += ["", "MRR@10 of the ranker fitted each way, on the same queries:", ""]
    lines += ["| task | split | queries | whole | pooled | pooled vs whole |", "|---|---|---|---|---|---|"]
    for kind in RANKED_KINDS:
        for split in ("dev", "test"):
            mrr = {
                way: query_mrr(rankers[way].learners[kind], [f for f in found[split] if task_kind(f.task.name) == kind])
                for way, found in features.items()
            }
            lines.append(paired_row([kind, split], mrr["whole"], mrr["pooled"]))
    emit(lines, args.write)
    return 0


if __name__ == "__main__":
    exit_quietly(main())
