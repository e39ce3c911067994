"""Where the chat ranker should learn: on the train split (the conversations its model trained on) or on the dev
split (conversations no stage trained on), measured on the same test-split queries.

    python bench/ranker_fit.py [--queries 300]

Reads the warehouse and the models of a `make run`: the model `chat_ranker` reads (the best published stage) and
its tasks cut as `chat_ranker` cuts them. Fits the ranker both ways (`train`: train-split queries fit, dev chooses
the learner; `dev`: half the dev conversations fit, the other half choose), then scores both, the model's dense
retrieval, BM25 and recency on the test split's thread and response tasks: MRR@10 per task and a paired verdict of
`dev` against `train` on the same queries. The train-split similarities of a model trained on those conversations
are higher than on new chat, so a ranker fitted on them learns to trust its model more than it should.
"""

import argparse

import numpy as np

from threadembed_assets.benchmark.assets import RankerConfig
from threadembed_assets.chat.features import FEATURES
from threadembed_assets.chat.metrics import paired_test, verdict
from threadembed_assets.chat.ranker import RANKED_KINDS, fit_ranker, model_features
from threadembed_assets.chat.retrievers import EmbeddingCache, default_cache_path, model_key, recency_scores
from threadembed_assets.chat.task import task_kind
from threadembed_assets.evaluation.tasks import all_tasks, split_by_conversation
from threadembed_assets.resources import ModelStore
from threadembed_assets.settings import exit_quietly, warehouse_path
from threadembed_assets.training.assets import ranker_model
from threadembed_assets.training.train import load_model
from threadembed_assets.warehouse.connection import connect


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300, help="queries per task and split (the cpu preset's)")
    args = parser.parse_args()
    config = RankerConfig(max_queries=args.queries)
    with connect(warehouse_path(), read_only=True) as con:
        by_split = {split: all_tasks(con, [split], config) for split in ("train", "dev", "test")}
    by_split = {s: [t for t in ts if task_kind(t.name) in RANKED_KINDS and t.queries] for s, ts in by_split.items()}
    path = ranker_model(ModelStore())
    model, key = load_model(path, "cpu"), model_key(path)
    cache = EmbeddingCache(default_cache_path())
    features = {split: [model_features(model, key, t, cache, 64) for t in ts] for split, ts in by_split.items()}
    halves = [split_by_conversation(t, 0.5) for t in by_split["dev"]]
    dev_fit = [model_features(model, key, fit, cache, 64) for fit, _ in halves]
    dev_choose = [model_features(model, key, choose, cache, 64) for _, choose in halves]
    cache.close()
    quiet = {"log": lambda message: None}
    rankers = {
        "train": fit_ranker(path, features["train"], features["dev"], **quiet),
        "dev": fit_ranker(path, dev_fit, dev_choose, **quiet),
    }
    dense = FEATURES.index("dense")
    print(f"model {path}; test queries per task as the benchmark cuts them ({args.queries} at most)")
    print("| task | queries | dense | bm25 | recency | ranker fit on train | ranker fit on dev | dev vs train |")
    print("|---|---|---|---|---|---|---|---|")
    for test in features["test"]:
        mrr = {name: test.mrr(ranker.scores(test)[test.qi, test.di]) for name, ranker in rankers.items()}
        alone = {
            "dense": test.mrr(test.values[:, dense]),
            "bm25": test.mrr(test.values[:, FEATURES.index("bm25")]),
            "recency": test.mrr(recency_scores(test.task)[test.qi, test.di]),
        }
        delta, p_value = paired_test(mrr["dev"], mrr["train"])
        cells = [f"{np.mean(v):.3f}" for v in [*alone.values(), mrr["train"], mrr["dev"]]]
        print(
            f"| {test.task.name} | {len(test.task.queries)} | {' | '.join(cells)} | "
            f"{verdict(delta, p_value)} {delta:+.3f} p={p_value:.3f} |"
        )
    for name, ranker in rankers.items():
        chosen = {
            kind: f"{card['learner']} {card['dev_mrr@10'][card['learner']]}" for kind, card in ranker.card.items()
        }
        print(f"fit on {name}: learner and its MRR@10 on the queries that chose it: {chosen}")
    return 0


if __name__ == "__main__":
    exit_quietly(main())
