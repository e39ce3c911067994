"""Search answers as the benchmark scores: `ChatIndex.thread_of` and `next_message`, asked one query at a time,
against the published `chat_ranker` scoring the benchmark's task of the same queries, on held-out chat.

    python bench/search_quality.py [--data ../shared/data/irc/irc_dev.jsonl] [--max-queries 300]

The file is loaded as the benchmark loads it (`benchmark.__main__.file_warehouse`); its thread and next-message
tasks are the benchmark's. For each query, the index is asked what a user would ask (the archived message; the
prefix and the candidates' messages) and the rank of the true conversation or message in its answer gives MRR@10.
Paired against the benchmark's figure of the same queries; with the ONNX export published, once more with it.
The two differ by design in small ways: a benchmark thread task leaves every query message of the task out of the
corpus and reads BM25 over the task's whole corpus, where `thread_of` leaves out only the asked message and reads
BM25 over its candidates.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from threadembed_assets.benchmark.__main__ import ALL_SPLITS, file_warehouse
from threadembed_assets.benchmark.score import scored
from threadembed_assets.chat.encoders import ONNX_MODEL
from threadembed_assets.chat.metrics import paired_test, verdict
from threadembed_assets.chat.ranker import CHAT_RANKER, model_features
from threadembed_assets.chat.task import Task
from threadembed_assets.evaluation.tasks import TaskConfig, all_tasks
from threadembed_assets.resources import ModelStore
from threadembed_assets.search.index import ChatIndex

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
K = 10


def reciprocal_rank(answer: list[str], gold: str) -> float:
    return 1.0 / (answer.index(gold) + 1) if gold in answer[:K] else 0.0


def asked(index: ChatIndex, task: Task) -> np.ndarray:
    """MRR@10 per query of the index answering each query of `task` on its own."""
    values = []
    for q in range(len(task.queries)):
        ids = task.query_message_ids[q]
        gold = task.doc_ids[task.relevant[q]]
        if task.name == "thread":
            hits = index.thread_of({"message_id": ids[0], "text": task.queries[q]}, k=K)
            values.append(reciprocal_rank([hit.conversation_id for hit in hits], gold))
        else:
            prefix = [{"message_id": mid, "text": "-"} for mid in ids]
            candidates = [{"message_id": task.doc_message_ids[d][0], "text": "-"} for d in task.candidates[q]]
            values.append(reciprocal_rank(index.next_message(prefix, candidates, k=K), gold))
    return np.array(values)


def benchmark(index: ChatIndex, task: Task) -> np.ndarray:
    """MRR@10 per query of the chat ranker on the benchmark's task, reading the index's model."""
    features = model_features(index.encoder, index.key, task, index.cache, index.batch_size)
    return scored(CHAT_RANKER, CHAT_RANKER, None, task, index.ranker.scores(features)).mrr()


def main() -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "irc" / "irc_dev.jsonl")
    parser.add_argument("--max-queries", type=int, default=300)
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} is not here (../shared beside the checkout)")
        return 0
    models = ModelStore()
    if models.latest(CHAT_RANKER) is None:
        print("no published chat_ranker: run `make run` first", file=sys.stderr)
        return 2
    config = TaskConfig(max_queries=args.max_queries, held_out_platform="")
    with file_warehouse(args.data) as con:
        tasks = [t for t in all_tasks(con, ALL_SPLITS, config) if t.name in ("thread", "response_message")]
        backends = [False] + ([True] if models.latest(ONNX_MODEL) else [])
        indexes = [ChatIndex.from_connection(con, "file", models=models, onnx=onnx) for onnx in backends]
    reference = indexes[0]
    print(f"{args.data.name}: the ranker reads {reference.model_path}")
    print("| task | queries | benchmark (chat_ranker) | encoder | asked one at a time | delta | p | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for task in tasks:
        expected = benchmark(reference, task)
        for index in indexes:
            got = asked(index, task)
            delta, p_value = paired_test(got, expected)
            encoder = "ONNX int8" if "ONNX" in index.model else "PyTorch"
            print(
                f"| {task.name} | {len(got)} | {expected.mean():.4f} | {encoder} | {got.mean():.4f} | {delta:+.4f} | "
                f"{p_value:.3f} | {verdict(delta, p_value)} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
