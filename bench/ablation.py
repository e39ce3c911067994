"""The training recipe's ablation: each change, added one at a time to stage 1 (`thread_model`'s tables, from the
base model, the same step budget), scored as the model alone (plain dense) on held-out real chat of two platforms,
with paired verdicts against the variant before it and against BM25 on the same queries.

    python bench/ablation.py --warehouse data/warehouse.duckdb [--steps 100] [--max-queries 300] [--json out.json]

The warehouse needs `messages` and `conversations` of the sources to train on (`make run` builds them); the
variants rebuild `thread_pairs` and `temporal_pairs` of every source in a copy of it. Dev sets: `irc_dev.jsonl` and
the Slack channel `elmlang-general-2019.xml` of ../shared (never trained on); tasks: thread (a message finds its
conversation) and response_message (a prefix finds the next message).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np

from threadembed_assets.benchmark.__main__ import tasks_from_file
from threadembed_assets.benchmark.metrics import paired_test, per_query, ranks_of_relevant, verdict
from threadembed_assets.benchmark.retrievers import EmbeddingCache, bm25_scores, dense_scores, encode_task, model_key
from threadembed_assets.benchmark.tasks import TaskConfig
from threadembed_assets.pairs.build import PairConfig, build_pairs
from threadembed_assets.training.assets import STAGES
from threadembed_assets.training.data import load_training_sets
from threadembed_assets.training.presets import PRESETS
from threadembed_assets.training.resources import ModelStore
from threadembed_assets.training.train import fingerprint, load_model, train_stage

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = ("thread", "response_message")

# Cumulative: each variant is the one before it plus one change: (name, recipe flags, pair config).
_BEFORE = {"negatives": False, "separate_conversations": False, "group_by_length": False}
_WINDOW = {"thread_positive": "window", "next_message_pairs": False}
VARIANTS = [
    ("pairs only, no-duplicate batches (before)", _BEFORE, _WINDOW),
    ("+ interleaved negatives as triplets", {**_BEFORE, "negatives": True}, _WINDOW),
    ("+ no shared conversation in a batch", {**_BEFORE, "negatives": True, "separate_conversations": True}, _WINDOW),
    ("+ length-grouped batches", {}, _WINDOW),
    ("+ whole-conversation positives", {}, {"next_message_pairs": False}),
    ("+ prefix -> next message pairs", {}, {}),
]


def dev_tasks(max_queries: int) -> dict[str, list]:
    config = TaskConfig(max_queries=max_queries, held_out_platform="")
    files = {"irc_dev": SHARED / "irc" / "irc_dev.jsonl", "slack": SHARED / "slack" / "elmlang-general-2019.xml"}
    return {name: [t for t in tasks_from_file(path, config) if t.name in TASKS] for name, path in files.items()}


def query_mrr(task, scores: np.ndarray) -> np.ndarray:
    return per_query(ranks_of_relevant(scores, np.array(task.relevant), task.allowed()))["mrr@10"]


def score_dense(path: str, tasks: dict[str, list], cache: EmbeddingCache) -> dict[tuple[str, str], np.ndarray]:
    model = load_model(path, "cpu")
    key = model_key(path)
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


def previous_run(path: Path | None) -> dict | None:
    """The last variant of an earlier run's JSON (the variant a later code change is compared with)."""
    if path is None:
        return None
    rows = json.loads(path.read_text())
    last = rows[-1]["variant"]
    return {
        "name": last,
        "scores": {(r["dataset"], r["task"]): np.array(r["per_query"]) for r in rows if r["variant"] == last},
    }


def main() -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--max-queries", type=int, default=300)
    parser.add_argument("--variants", type=int, default=len(VARIANTS), help="how many of the variants to run")
    parser.add_argument("--only", help="comma list of variant numbers (1-based) to run, without the base model")
    parser.add_argument(
        "--versus", type=Path, help="an earlier run's JSON: the first variant run is compared with its last one"
    )
    parser.add_argument("--label", help="name the first variant run this way (a code change measured against --versus)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tasks = dev_tasks(args.max_queries)
    stage = STAGES["thread_model"]
    base = ModelStore().base_model_path()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = EmbeddingCache(work / "cache.duckdb")
        reference = {(d, t.name): query_mrr(t, bm25_scores(t)) for d, ts in tasks.items() for t in ts}
        previous = previous_run(args.versus) or {"name": "bm25", "scores": reference}
        runs = [("base model (no training)", None, None)] + VARIANTS[: args.variants]
        if args.only:
            runs = [VARIANTS[int(i) - 1] for i in args.only.split(",")]
        if args.label:
            runs[0] = (args.label, *runs[0][1:])
        for name, flags, pair_config in runs:
            started = time.perf_counter()
            path, pairs_per_second, steps = base, None, 0
            if flags is not None:
                recipe = replace(PRESETS["cpu"][stage.name], max_steps=args.steps, max_minutes=600, **flags)
                with duckdb.connect(str(warehouse_with(args.warehouse, work, pair_config)), read_only=True) as con:
                    sets = load_training_sets(
                        con,
                        stage.tables,
                        recipe.max_pairs,
                        13,
                        negatives=recipe.negatives,
                        separate_conversations=recipe.separate_conversations,
                    )
                result = train_stage(
                    stage=stage.name,
                    start_from=base,
                    train_sets=sets,
                    eval_set=({}, {}, {}),
                    recipe=recipe,
                    device="cpu",
                    precision="fp32",
                    eval_batch_size=64,
                    work_dir=work / f"work-{len(rows)}",
                    run_dir=work / f"run-{len(rows)}",
                    seed=13,
                    log=lambda message: None,
                )
                path, pairs_per_second, steps = str(result.run_dir), result.pairs_per_second, result.steps
            scores = score_dense(path, tasks, cache)
            for key, values in scores.items():
                row = {"variant": name, "dataset": key[0], "task": key[1], "mrr@10": float(values.mean())}
                row["per_query"] = values.tolist()
                for label, other in [("bm25", reference), ("previous", previous["scores"])]:
                    delta, p = paired_test(values, other[key])
                    row[f"vs_{label}"] = {"delta": delta, "p": p, "verdict": verdict(delta, p)}
                row.update(steps=steps, pairs_per_second=pairs_per_second, versus=previous["name"])
                rows.append(row)
            print(f"{name}: {time.perf_counter() - started:.0f} s, {steps} steps", file=sys.stderr, flush=True)
            previous = {"name": name, "scores": scores}
        cache.close()
    print("| variant | dataset | task | MRR@10 | vs BM25 | vs the row before | pairs/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        versus = [f"{r[k]['verdict']} ({r[k]['delta']:+.3f}, p={r[k]['p']:.3f})" for k in ("vs_bm25", "vs_previous")]
        rate = f"{r['pairs_per_second']:.1f}" if r["pairs_per_second"] else "-"
        print(f"| {r['variant']} | {r['dataset']} | {r['task']} | {r['mrr@10']:.3f} | {' | '.join(versus)} | {rate} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
