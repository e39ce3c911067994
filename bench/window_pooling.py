"""The benchmark's `dense_windows` retriever (a conversation's similarity plus its best 4-line window's) with each
window encoded as one text against pooled from its messages' vectors (`retrievers.pooled_vectors`, what
`benchmark_scores` does), for the base model and the model the chat ranker reads, on the same dev and test queries.

    python bench/window_pooling.py [--queries 100] [--write docs/results/window_pooling.md]

Reads the warehouse and the models of a `make run`; thread tasks cut as the chat ranker cuts them. What each way
encodes is counted (distinct texts and their tokens), not timed.
"""

import argparse
from pathlib import Path

from report import add_write_option, emit, encoded_tokens, paired_row

from threadembed_assets.benchmark.assets import RankerConfig
from threadembed_assets.benchmark.score import scored
from threadembed_assets.chat.retrievers import (
    EmbeddingCache,
    default_cache_path,
    dense_scores,
    encode_task,
    line_windows,
    model_key,
    pooled_vectors,
    windowed_scores,
)
from threadembed_assets.chat.task import THREAD_KINDS, task_kind
from threadembed_assets.evaluation.tasks import all_tasks
from threadembed_assets.resources import ModelStore
from threadembed_assets.settings import exit_quietly, warehouse_path
from threadembed_assets.training.assets import ranker_model
from threadembed_assets.training.train import load_model
from threadembed_assets.warehouse.connection import connect

SPLITS = ("dev", "test")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100, help="queries per task and split")
    add_write_option(parser)
    args = parser.parse_args()
    with connect(warehouse_path(), read_only=True) as con:
        tasks = {
            split: [t for t in all_tasks(con, [split], RankerConfig(max_queries=args.queries)) if t.queries]
            for split in SPLITS
        }
    tasks = {split: [t for t in found if task_kind(t.name) in THREAD_KINDS] for split, found in tasks.items()}
    store = ModelStore()
    paths = {"base": store.base_model_path(), "thread_model": ranker_model(store)}
    models = {name: (load_model(path, "cpu"), model_key(path)) for name, path in paths.items()}
    windowed = {id(t): line_windows(t.docs) for found in tasks.values() for t in found}
    windows = {window for texts, _ in windowed.values() for window in texts}
    messages = {line for window in windows for line in window.split("\n")}
    folder = Path(paths["thread_model"])
    lines = [f"At most {args.queries} queries per thread task and split; `thread_model` is `{folder.name}`.", ""]
    lines += ["| way | what it encodes | distinct texts | tokens |", "|---|---|---|---|"]
    for way, what, texts in (("whole", "windows", windows), ("pooled", "their messages", messages)):
        lines.append(f"| {way} | {what} | {len(texts):,} | {encoded_tokens(models['base'][0], texts):,} |")
    lines += ["", "MRR@10 of `dense_windows` each way, on the same queries:", ""]
    lines += ["| model | task | split | queries | whole | pooled | pooled vs whole |", "|---|---|---|---|---|---|---|"]
    cache = EmbeddingCache(default_cache_path())  # the run's vectors: both ways read what they share
    try:
        for name, (model, key) in models.items():
            for split, found in tasks.items():
                for task in found:
                    queries, docs = encode_task(model, key, task, cache, 64)
                    texts, owners = windowed[id(task)]
                    ways = {
                        "whole": cache.encode(model, key, texts, 64),
                        "pooled": pooled_vectors(model, key, texts, cache, 64),
                    }
                    mrr = {
                        way: scored(
                            name,
                            way,
                            None,
                            task,
                            windowed_scores(dense_scores(queries, docs), dense_scores(queries, vectors), owners),
                        ).mrr()
                        for way, vectors in ways.items()
                    }
                    lines.append(paired_row([name, task.name, split], mrr["whole"], mrr["pooled"]))
    finally:
        cache.close()
    emit(lines, args.write)
    return 0


if __name__ == "__main__":
    exit_quietly(main())
