"""The training recipe's ablation: stage variants, each trained on the `ubuntu_irc` tables with the `cpu` preset's
step budget and scored as the model alone (plain dense) on held-out real chat of two platforms, with paired verdicts
against the variant it changes and against BM25 on the same queries.

    python bench/ablation.py --warehouse data/warehouse.duckdb [--only 1,3] [--max-queries 300] [--json out.json]

The warehouse needs `messages`, `conversations` and the pair tables of the sources to train on (`make run` builds
them); a variant with its own pair config rebuilds `thread_pairs` and `temporal_pairs` of every source in a copy of
it. Variants leave Slack train pairs out unless they say otherwise: the transfer variant learns from the
`slack_disentangled` source's too, when the warehouse has them (the README's ablation section says how to load
another Slack community's file into a copy of the warehouse). Dev sets: `irc_dev.jsonl` and the Slack channel
`elmlang-general-2019.xml` of ../shared (never trained on); tasks: thread (a message finds its conversation) and
response_message (a prefix finds the next message).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import numpy as np

from threadembed_assets.benchmark.__main__ import tasks_from_file
from threadembed_assets.chat.metrics import paired_test, per_query, ranks_of_relevant, verdict
from threadembed_assets.chat.retrievers import EmbeddingCache, bm25_scores, dense_scores, encode_task, model_key
from threadembed_assets.evaluation.tasks import TaskConfig
from threadembed_assets.pairs.build import PairConfig, build_pairs
from threadembed_assets.resources import ModelStore
from threadembed_assets.training.assets import STAGES
from threadembed_assets.training.data import load_training_sets
from threadembed_assets.training.presets import PRESETS
from threadembed_assets.training.train import fingerprint, load_model, train_stage

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = ("thread", "response_message")
BASE = "base model (no training)"


@dataclass(frozen=True)
class Variant:
    """One trained (or only re-read) model of the ablation and the variant it is compared with."""

    name: str
    versus: str  # the variant it changes (or BASE)
    stage: str = "thread_model"  # whose `cpu` recipe and step budget it trains with
    tables: tuple[str, ...] | None = None  # pair tables it learns from (None: the stage's own)
    start: str = BASE  # the variant whose model it starts from
    recipe: dict = field(default_factory=dict)  # overrides of the stage's `cpu` recipe
    pairs: dict = field(default_factory=dict)  # PairConfig of the rebuilt thread and temporal pairs
    inference_length: int | None = None  # re-read `start`'s model with this max_seq_length instead of training
    exclude_platforms: tuple[str, ...] = ("slack",)  # platforms whose train pairs it never sees


# Pair tables by strategy letter (see the README's pair tables).
_A, _AC = ("thread_pairs",), ("thread_pairs", "temporal_pairs")
_BD = ("query_response_pairs", "summary_pairs")
_BCD = ("query_response_pairs", "temporal_pairs", "summary_pairs")
STAGE1 = "stage 1: A + C (the recipe before)"
STAGE1_A = "stage 1: A alone, 100 steps (the recipe before the 15-minute budget)"
STAGE2 = "stage 2: B + C + D after A alone, 50 steps"
STAGE1_56 = "stage 1: A alone, 56 steps at 128 tokens"
STAGE1_NOW = "stage 1: A alone, 72 steps at 96 tokens (the recipe)"
# The budgets the first rows were measured at (the `cpu` preset's before it was planned to fit 15 minutes).
_STEPS1, _STEPS2 = {"max_steps": 100, "max_seq_length": 128}, {"max_steps": 50}
_STEPS56 = {"max_steps": 56, "max_seq_length": 128}
VARIANTS = [
    Variant(STAGE1, BASE, tables=_AC, recipe=_STEPS1),
    Variant("stage 1: A + C at learning rate 1e-4", STAGE1, tables=_AC, recipe={**_STEPS1, "learning_rate": 1e-4}),
    Variant("stage 1: A + C read at 512 tokens", STAGE1, start=STAGE1, inference_length=512),
    Variant(STAGE1_A, STAGE1, tables=_A, recipe=_STEPS1),
    Variant(
        "stage 2: B + D after A + C (the recipe before)",
        STAGE1,
        "retrieval_model",
        tables=_BD,
        start=STAGE1,
        recipe=_STEPS2,
    ),
    Variant(STAGE2, STAGE1_A, "retrieval_model", tables=_BCD, start=STAGE1_A, recipe=_STEPS2),
    Variant(
        "stage 2 without prefix -> next message pairs",
        STAGE2,
        "retrieval_model",
        tables=_BCD,
        start=STAGE1_A,
        pairs={"next_message_pairs": False},
        recipe=_STEPS2,
    ),
    Variant(STAGE1_56, STAGE1_A, tables=_A, recipe=_STEPS56),
    Variant(
        "stage 1: A alone, 56 steps at learning rate 6e-5",
        STAGE1_56,
        tables=_A,
        recipe={**_STEPS56, "learning_rate": 6e-5},
    ),
    Variant(
        "stage 1: A alone, 56 steps, with another Slack community's thread pairs",
        STAGE1_56,
        tables=_A,
        recipe=_STEPS56,
        exclude_platforms=(),
    ),
    Variant(STAGE1_NOW, STAGE1_56, tables=_A),
    Variant(
        "stage 2: B + C + D, 28 steps after A alone, 56 steps",
        STAGE1_56,
        "retrieval_model",
        tables=_BCD,
        start=STAGE1_56,
    ),
]


def dev_tasks(max_queries: int) -> dict[str, list]:
    config = TaskConfig(max_queries=max_queries, held_out_platform="")
    files = {"irc_dev": SHARED / "irc" / "irc_dev.jsonl", "slack": SHARED / "slack" / "elmlang-general-2019.xml"}
    return {name: [t for t in tasks_from_file(path, config) if t.name in TASKS] for name, path in files.items()}


def query_mrr(task, scores: np.ndarray) -> np.ndarray:
    return per_query(ranks_of_relevant(scores, np.array(task.relevant), task.allowed()))["mrr@10"]


def score_dense(
    path: str, tasks: dict[str, list], cache: EmbeddingCache, inference_length: int | None = None
) -> dict[tuple[str, str], np.ndarray]:
    """Per-query MRR@10 of the model at `path` alone (plain dense) on every task; `inference_length` re-reads it with
    that max_seq_length."""
    model = load_model(path, "cpu")
    if inference_length:
        model.max_seq_length = inference_length
    key = f"{model_key(path)}@{model.max_seq_length}"
    scores = {}
    for dataset, task_list in tasks.items():
        for task in task_list:
            queries, docs = encode_task(model, key, task, cache, 64)
            scores[dataset, task.name] = query_mrr(task, dense_scores(queries, docs))
    return scores


def warehouse_with(source: Path, folder: Path, pair_config: dict) -> Path:
    """A copy of the warehouse whose `thread_pairs` and `temporal_pairs` are rebuilt with `pair_config`."""
    copy = folder / f"warehouse-{fingerprint(pair_config)}.duckdb"
    if not copy.exists():
        shutil.copy(source, copy)
        with duckdb.connect(str(copy)) as con:
            sources = [s for (s,) in con.execute("SELECT DISTINCT source FROM conversations").fetchall()]
            for name in sources:
                for strategy in ("A", "C"):
                    build_pairs(con.cursor(), strategy, name, PairConfig(**pair_config))
    return copy


def with_dependencies(wanted: list[Variant]) -> list[Variant]:
    """`wanted`, the variants they are compared with and the variants any of these start from (recursively), each
    after those it needs. A variant that is only needed is compared with its own `versus` only if that is trained."""
    by_name = {v.name: v for v in VARIANTS}
    ordered: list[Variant] = []

    def add(variant: Variant) -> None:
        if variant.start in by_name:
            add(by_name[variant.start])
        if variant not in ordered:
            ordered.append(variant)

    for variant in wanted:
        if variant.versus in by_name:
            add(by_name[variant.versus])
        add(variant)
    return ordered


def train_variant(variant: Variant, start_from: str, warehouse: Path, work: Path) -> tuple[str, float, int]:
    """Train `variant` from `start_from`: (its model's folder, training pairs/s, steps)."""
    stage = STAGES[variant.stage]
    recipe = replace(PRESETS["cpu"][stage.name], max_minutes=600, **variant.recipe)
    with duckdb.connect(str(warehouse_with(warehouse, work, variant.pairs)), read_only=True) as con:
        sets = load_training_sets(
            con,
            list(variant.tables or stage.tables),
            recipe.max_pairs,
            13,
            negatives=recipe.negatives,
            separate_conversations=recipe.separate_conversations,
            exclude_platforms=variant.exclude_platforms,
        )
    folder = fingerprint(variant.name)
    result = train_stage(
        stage=stage.name,
        start_from=start_from,
        train_sets=sets,
        eval_sets={},
        recipe=recipe,
        device="cpu",
        precision="fp32",
        eval_batch_size=64,
        work_dir=work / f"work-{folder}",
        run_dir=work / f"run-{folder}",
        seed=13,
        log=lambda message: None,
    )
    return str(result.run_dir), result.pairs_per_second, result.steps


def main() -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", type=Path, required=True)
    parser.add_argument("--max-queries", type=int, default=300)
    parser.add_argument("--only", help="comma list of variant numbers (1-based): those and the variants they need")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tasks = dev_tasks(args.max_queries)
    wanted = [VARIANTS[int(i) - 1] for i in args.only.split(",")] if args.only else VARIANTS
    paths = {BASE: ModelStore().base_model_path()}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = EmbeddingCache(work / "cache.duckdb")
        scores = {"bm25": {(d, t.name): query_mrr(t, bm25_scores(t)) for d, ts in tasks.items() for t in ts}}
        scores[BASE] = score_dense(paths[BASE], tasks, cache)
        for variant in with_dependencies(wanted):
            started = time.perf_counter()
            pairs_per_second, steps = None, 0
            if variant.inference_length:
                paths[variant.name] = paths[variant.start]
            else:
                paths[variant.name], pairs_per_second, steps = train_variant(
                    variant, paths[variant.start], args.warehouse, work
                )
            scores[variant.name] = score_dense(paths[variant.name], tasks, cache, variant.inference_length)
            for key, values in scores[variant.name].items():
                row = {"variant": variant.name, "dataset": key[0], "task": key[1], "mrr@10": float(values.mean())}
                row["per_query"] = values.tolist()
                for label, other in [("bm25", "bm25"), ("versus", variant.versus)]:
                    if other not in scores:
                        continue
                    delta, p = paired_test(values, scores[other][key])
                    row[f"vs_{label}"] = {"delta": delta, "p": p, "verdict": verdict(delta, p)}
                row.update(steps=steps, pairs_per_second=pairs_per_second, versus=variant.versus)
                rows.append(row)
            print(f"{variant.name}: {time.perf_counter() - started:.0f} s, {steps} steps", file=sys.stderr, flush=True)
        cache.close()
    print("| variant | dataset | task | MRR@10 | vs BM25 | vs the variant it changes | pairs/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        versus = [
            f"{r[k]['verdict']} ({r[k]['delta']:+.3f}, p={r[k]['p']:.3f})" if k in r else "-"
            for k in ("vs_bm25", "vs_versus")
        ]
        rate = f"{r['pairs_per_second']:.1f}" if r["pairs_per_second"] else "-"
        print(f"| {r['variant']} | {r['dataset']} | {r['task']} | {r['mrr@10']:.3f} | {' | '.join(versus)} | {rate} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
