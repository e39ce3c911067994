"""`make eval`: the team's quality yardstick. Scores the base model, every training stage's
`models/<stage>/latest`, the `chat_ranker` and the baselines (BM25, recency) on held-out real chat of two
platforms, and prints one table with MRR@10, its bootstrap 95% interval and the paired verdicts against BM25,
recency and the base model on the same queries (the ranker's also against its own model alone and that model's
hand-tuned combinations).

    python bench/quality.py [--irc ../shared/data/irc/irc_dev.jsonl] [--slack ../shared/data/slack/X.xml]
        [--write docs/results/make_eval.md]

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

from report import add_write_option, emit, paired_row

from threadembed_assets import settings
from threadembed_assets.benchmark.__main__ import tasks_from_file
from threadembed_assets.benchmark.assets import published_models
from threadembed_assets.benchmark.score import BASE_MODEL, TrainingLeak, refuse_leaks, score_all, verdict_rows
from threadembed_assets.chat.ranker import CHAT_RANKER, UNGATED
from threadembed_assets.chat.retrievers import EmbeddingCache, default_cache_path
from threadembed_assets.evaluation.tasks import TaskConfig
from threadembed_assets.resources import ModelStore
from threadembed_assets.training.assets import STAGES

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


VERSUS_COLUMNS = {
    "bm25": "vs BM25",
    "recency": "vs recency",
    "base": "vs base dense",
    "dense": "vs its model, dense",
    "time_aware": "vs its model, time_aware",
    "hybrid": "vs its model, hybrid",
}


def format_table(rows: list[dict]) -> str:
    """One markdown table: dataset, task, retriever, MRR@10 with interval, paired verdicts (the chat ranker's also
    against its own model alone and the hand-tuned combinations of that model)."""
    lines = [
        "| dataset | task | model | retriever | queries | MRR@10 (95% CI) | "
        + " | ".join(VERSUS_COLUMNS.values())
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(VERSUS_COLUMNS),
    ]
    for r in rows:
        versus = [
            f"{r[f'vs_{b}']} ({r[f'vs_{b}_delta']:+.3f}, p={r[f'vs_{b}_p']:.3f})" if r.get(f"vs_{b}") else "-"
            for b in VERSUS_COLUMNS
        ]
        lines.append(
            f"| {r['dataset']} | {r['task']} | {r['model']} | {r['retriever']} | {r['queries']} | "
            f"{r['mrr@10']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f}) | {' | '.join(versus)} |"
        )
    return "\n".join(lines)


def gate_rows(dataset: str, results: list) -> list[str]:
    """Per task the chat ranker's channel-history gate reads: the ranker without and with it, on the same queries."""
    by_retriever = {(r.retriever, r.task.name): r for r in results if r.model == CHAT_RANKER and r.full_dim}
    return [
        paired_row([dataset, task], ungated.mrr(), by_retriever[(CHAT_RANKER, task)].mrr())
        for (retriever, task), ungated in by_retriever.items()
        if retriever == UNGATED and (CHAT_RANKER, task) in by_retriever
    ]


def main() -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--irc", type=Path, default=SHARED / "irc" / "irc_dev.jsonl")
    parser.add_argument("--slack", type=Path, default=SHARED / "slack" / "elmlang-general-2019.xml")
    parser.add_argument("--max-queries", type=int, default=300, help="queries per task and dataset")
    parser.add_argument("--models-dir", type=Path, default=settings.models_dir())
    parser.add_argument(
        "--stages", default=",".join(STAGES), help="comma list of the training stages to score (default: all)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    add_write_option(parser)
    args = parser.parse_args()
    datasets = {"irc_dev": args.irc, f"slack:{args.slack.stem}": args.slack}
    missing = [str(path) for path in datasets.values() if not path.is_file()]
    if missing:
        print(f"make eval skipped: {', '.join(missing)} not found (it needs ../shared beside the checkout)")
        return 0
    store = ModelStore(root=str(args.models_dir))
    wanted = {BASE_MODEL, *args.stages.split(",")}
    models = {name: path for name, path in published_models(store).items() if name in wanted}
    ranker = store.latest(CHAT_RANKER)
    print(f"models: {json.dumps(models, indent=1)}; chat_ranker: {ranker or 'not trained'}", file=sys.stderr)
    config = TaskConfig(max_queries=args.max_queries, held_out_platform="")
    cache = EmbeddingCache(default_cache_path())
    rows: list[dict] = []
    gates: list[str] = []
    try:
        for dataset, path in datasets.items():
            started = time.perf_counter()
            tasks = [task for task in tasks_from_file(path, config) if not task.name.startswith("summary")]
            fair = fair_models({**models, **({CHAT_RANKER: str(ranker)} if ranker else {})}, tasks, dataset)
            results, _ = score_all(
                tasks,
                {name: path for name, path in fair.items() if name != CHAT_RANKER},
                cache,
                device=args.device,
                batch_size=64,
                ranker_dir=fair.get(CHAT_RANKER),
                log=lambda message: print(message, file=sys.stderr),
            )
            rows += [{"dataset": dataset, **row} for row in verdict_rows(results)]
            gates += gate_rows(dataset, results)
            print(f"{dataset}: {len(tasks)} tasks scored in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    finally:
        cache.close()
    lines = [format_table(rows)]
    if gates:
        lines += [
            "",
            "The chat ranker without its channel-history gate (`ungated`) and with it, on the same queries (MRR@10):",
            "",
            "| dataset | task | queries | ungated | gated | gated vs ungated |",
            "|---|---|---|---|---|---|",
            *gates,
        ]
    emit(lines, args.write)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
