"""`make eval`: the team's quality yardstick. Scores the base model, every training stage's
`models/<stage>/latest` and the baselines (BM25, recency) on held-out real chat of two platforms, and prints one
table with MRR@10, its bootstrap 95% interval and the paired verdict against BM25 and the base model on the same
queries.

    python bench/quality.py [--irc ../shared/data/irc/irc_dev.jsonl] [--slack ../shared/data/slack/X.xml]

Defaults: `irc_dev.jsonl` (human thread labels; never trained on) and the Slack channel
`elmlang-general-2019.xml` (conversation ids from the corpus's automatic disentangler), read through the
`slack_disentangled` loader. Skips, saying why, when `../shared` is not beside the checkout.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from threadembed_assets import settings
from threadembed_assets.benchmark.__main__ import tasks_from_file
from threadembed_assets.benchmark.assets import published_models
from threadembed_assets.benchmark.retrievers import EmbeddingCache, default_cache_path
from threadembed_assets.benchmark.score import TrainingLeak, refuse_leaks, score_all, verdict_rows
from threadembed_assets.benchmark.tasks import TaskConfig
from threadembed_assets.training.resources import ModelStore

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def fair_models(models: dict[str, str], tasks: list, dataset: str) -> dict[str, str]:
    """The models that never learned from a conversation of `tasks` (the others are left out, saying why)."""
    fair = {}
    for name, path in models.items():
        try:
            refuse_leaks({name: path}, tasks)
            fair[name] = path
        except TrainingLeak as exc:
            print(f"{dataset}: leaving out {exc}", file=sys.stderr)
    return fair


def format_table(rows: list[dict]) -> str:
    """One markdown table: dataset, task, retriever, MRR@10 with interval, paired verdicts."""
    lines = [
        "| dataset | task | model | retriever | queries | MRR@10 (95% CI) | vs BM25 | vs base dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        versus = [
            f"{r[f'vs_{b}']} ({r[f'vs_{b}_delta']:+.3f}, p={r[f'vs_{b}_p']:.3f})" if f"vs_{b}" in r else "-"
            for b in ("bm25", "base")
        ]
        lines.append(
            f"| {r['dataset']} | {r['task']} | {r['model']} | {r['retriever']} | {r['queries']} | "
            f"{r['mrr@10']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f}) | {versus[0]} | {versus[1]} |"
        )
    return "\n".join(lines)


def main() -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--irc", type=Path, default=SHARED / "irc" / "irc_dev.jsonl")
    parser.add_argument("--slack", type=Path, default=SHARED / "slack" / "elmlang-general-2019.xml")
    parser.add_argument("--max-queries", type=int, default=300, help="queries per task and dataset")
    parser.add_argument("--models-dir", type=Path, default=settings.models_dir())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    datasets = {"irc_dev": args.irc, f"slack:{args.slack.stem}": args.slack}
    missing = [str(path) for path in datasets.values() if not path.is_file()]
    if missing:
        print(f"make eval skipped: {', '.join(missing)} not found (it needs ../shared beside the checkout)")
        return 0
    models = published_models(ModelStore(root=str(args.models_dir)))
    print(f"models: {json.dumps(models, indent=1)}", file=sys.stderr)
    config = TaskConfig(max_queries=args.max_queries, held_out_platform="")
    cache = EmbeddingCache(default_cache_path())
    rows: list[dict] = []
    try:
        for dataset, path in datasets.items():
            started = time.perf_counter()
            tasks = [task for task in tasks_from_file(path, config) if not task.name.startswith("summary")]
            results, _ = score_all(
                tasks,
                fair_models(models, tasks, dataset),
                cache,
                device=args.device,
                batch_size=64,
                log=lambda message: print(message, file=sys.stderr),
            )
            rows += [{"dataset": dataset, **row} for row in verdict_rows(results)]
            print(f"{dataset}: {len(tasks)} tasks scored in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    finally:
        cache.close()
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
