"""`make run`: materialize the pipeline for one source partition and print a short summary.

python -m threadembed_assets.run --source ubuntu_irc --preset cpu [--write docs/results/make_run.md]
"""

import argparse
import os
import sys
from pathlib import Path

import dagster as dg

from threadembed_assets import settings
from threadembed_assets.definitions import ASSET_CHECKS, ASSETS, build_resources
from threadembed_assets.disentangle.assets import DEV_LINE
from threadembed_assets.pairs.build import STRATEGIES
from threadembed_assets.reports import write_results
from threadembed_assets.sources.registry import SOURCES
from threadembed_assets.training.assets import STAGES
from threadembed_assets.training.presets import (
    BENCHMARK_QUERIES,
    DISENTANGLER_ROUNDS,
    INDEX_TUNE_MESSAGES,
    MINING_ANCHORS,
    ONNX_DEV_QUERIES,
    RANKER_QUERIES,
    RUN_LEAVES_OUT,
)
from threadembed_assets.warehouse.connection import connect
from threadembed_assets.warehouse.schema import table_names


def left_out(preset: str, all_stages: bool) -> tuple[str, ...]:
    """The assets a run of `preset` leaves out (none with `all_stages`)."""
    return () if all_stages else RUN_LEAVES_OUT.get(preset, ())


def run_selection(preset: str, all_stages: bool = False) -> dg.AssetSelection:
    """`raw_messages` and everything downstream of it, checks included, but for what the preset leaves out."""
    return dg.AssetSelection.assets("raw_messages").downstream() - dg.AssetSelection.assets(
        *left_out(preset, all_stages)
    )


def op_config(preset: str, all_stages: bool = False) -> dict:
    """The preset's budgets, per asset the run materializes."""
    ops = {
        **{stage: {"config": {"preset": preset}} for stage in STAGES},
        "hard_negative_pairs": {"config": {"max_anchors": MINING_ANCHORS[preset]}},
        "chat_ranker": {"config": {"max_queries": RANKER_QUERIES[preset]}},
        "benchmark_tasks": {"config": {"max_queries": BENCHMARK_QUERIES[preset]}},
        "onnx_model": {"config": {"max_queries": ONNX_DEV_QUERIES[preset]}},
        "conversation_index": {"config": {"tune_messages": INDEX_TUNE_MESSAGES[preset]}},
        "disentangler": {"config": {"n_estimators": DISENTANGLER_ROUNDS[preset]}},
    }
    return {name: config for name, config in ops.items() if name not in left_out(preset, all_stages)}


def run_pipeline(
    source: str, preset: str, instance: dg.DagsterInstance, all_stages: bool = False
) -> dg.ExecuteInProcessResult:
    """Materialize `run_selection(preset, all_stages)` for partition `source`."""
    return dg.materialize(
        [*ASSETS, *ASSET_CHECKS],
        selection=run_selection(preset, all_stages),
        partition_key=source,
        instance=instance,
        resources=build_resources(),
        tags={"threadembed/preset": preset},
        run_config={
            "loggers": {"console": {"config": {"log_level": "INFO"}}},
            "ops": op_config(preset, all_stages),
        },
        raise_on_error=False,
    )


def _dev_pair(meta: dict, when: str) -> str:
    """A stage's dev MRR@10 on thread and next-message retrieval, `before` or `after` the stage."""
    return " / ".join(
        str(meta[key].value) if key in meta else "-"
        for key in (f"dev_mrr@10_thread_{when}", f"dev_mrr@10_next_message_{when}")
    )


def _paired(meta: dict) -> str:
    """` (thread win +0.268 p=0.000, next_message tie +0.002 p=0.612)`: a stage's paired dev verdicts, if any."""
    verdicts = meta["dev_verdicts"].data if "dev_verdicts" in meta else {}
    parts = [f"{task} {v['verdict']} {v['delta']:+.3f} p={v['p']:.3f}" for task, v in verdicts.items()]
    return f" ({', '.join(parts)})" if parts else ""


def onnx_tasks(meta: dict) -> list[str]:
    """The dev tasks `onnx_model` reports, from its `dev_mrr@10_<task>_int8` keys."""
    prefix, suffix = "dev_mrr@10_", "_int8"
    return [
        key.removeprefix(prefix).removesuffix(suffix) for key in meta if key.startswith(prefix) and key.endswith(suffix)
    ]


def summary(source: str, result: dg.ExecuteInProcessResult) -> str:
    """A few lines on what the warehouse holds for `source` and how the run's checks came out."""
    with connect(settings.warehouse_path(), read_only=True) as con:
        params = {"source": source}
        n_messages = con.execute("SELECT count(*) FROM messages WHERE source = $source", params).fetchone()[0]
        splits = con.execute(
            "SELECT split, count(*) FROM conversations WHERE source = $source GROUP BY ALL ORDER BY 1", params
        ).fetchall()
        quarantine = con.execute(
            "SELECT reason, count(*) FROM quarantine WHERE source = $source GROUP BY ALL ORDER BY 2 DESC",
            params,
        ).fetchall()
        tables = table_names(con)
        pairs = [
            (
                table,
                con.execute(
                    f"SELECT split, count(*) FROM {table} WHERE source = $source GROUP BY ALL ORDER BY 1", params
                ).fetchall(),
            )
            for table in STRATEGIES.values()
            if table in tables
        ]
    lines = [
        f"source {source}: {n_messages} messages, {sum(n for _, n in splits)} conversations "
        f"({', '.join(f'{s} {n}' for s, n in splits)})",
        f"quarantine: {', '.join(f'{r} {n}' for r, n in quarantine) or 'none'}",
    ]
    lines += [f"{table}: {', '.join(f'{s} {n}' for s, n in splits) or 'none'}" for table, splits in pairs]
    scores = []
    for event in result.get_asset_materialization_events():
        name, meta = event.asset_key.to_user_string(), event.materialization.metadata
        if name == "benchmark_scores":
            scores.append(
                "benchmark_scores, MRR@10 (full dimension); queries from test-split conversations, candidates every "
                "conversation and message of their channel:\n" + meta["mrr@10"].value
            )
        if name == "chat_ranker":
            learners = meta["learners"].value
            lines.append(
                "chat_ranker: "
                + ", ".join(
                    f"{kind} {learners[kind]} dev MRR@10 {meta[f'dev_mrr@10_{kind}'].value}" for kind in learners
                )
                + f"; fit on {meta['fit_queries'].value} {meta['fit_split'].value}-split queries, chosen on "
                f"{meta['choice_queries'].value} other dev queries  ({meta['path'].value})"
            )
        if name == "disentangler":
            lines.append(
                f"disentangler: {meta['channels'].data['dev']} held-out channels, link F / VI / one-to-one / "
                f"conversation F {' / '.join(str(meta[f'dev_{m}'].value) for m in DEV_LINE)}; Previous "
                f"{' / '.join(str(meta[f'previous_{m}'].value) for m in DEV_LINE)}  ({meta['path'].value})"
            )
        if name == "onnx_model":
            lines.append(
                f"onnx_model: int8 export {meta['speedup_vs_pytorch'].value}x PyTorch's encoding speed, dev MRR@10 "
                + ", ".join(
                    f"{task} {meta[f'dev_mrr@10_{task}_pytorch'].value} -> {meta[f'dev_mrr@10_{task}_int8'].value}"
                    for task in onnx_tasks(meta)
                )
                + f", {'serves search' if meta['published'].value else 'not published: PyTorch serves'}"
                + f"  ({meta['path'].value})"
            )
        if name == "conversation_index":
            lines.append(
                f"conversation_index: {meta['dagster/row_count'].value} conversations, ANN recall@10 "
                f"{meta['ann_recall@10'].value} (held-out messages as queries), is_new balanced accuracy "
                f"{meta['is_new_balanced_accuracy'].value} on test messages (tuned on dev: "
                f"{meta['is_new_balanced_accuracy_tuning'].value}), ranker {meta['ranker'].value}; "
                f'search it: make search Q="..."  ({meta["path"].value})'
            )
        if name in STAGES:
            verdict = "published" if meta["published"].value else "not published, kept its start model"
            lines.append(
                f"{name}: {meta['steps'].value}/{meta['planned_steps'].value} steps, {meta['pairs_per_second'].value} "
                f"pairs/s, dev MRR@10 (thread / next message) {_dev_pair(meta, 'before')} -> "
                f"{_dev_pair(meta, 'after')}{_paired(meta)}, "
                f"{verdict}; next stage starts from {meta['next_stage_starts_from'].value}  ({meta['hand_on'].value})"
            )
    for evaluation in result.get_asset_check_evaluations():
        outcome = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
        lines.append(f"check {evaluation.asset_key.to_user_string()}.{evaluation.check_name}: {outcome}")
    return "\n".join(lines + scores)


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> str:
    """`seconds per step: thread_model 471, ...`: how long each asset (and check) of the run took, in run order."""
    stats = sorted(
        (step for step in instance.get_run_step_stats(run_id) if step.start_time and step.end_time),
        key=lambda step: step.start_time,
    )
    parts = [f"{step.step_key} {step.end_time - step.start_time:.0f}" for step in stats]
    total = stats[-1].end_time - stats[0].start_time if stats else 0.0
    return f"seconds per step ({total / 60:.1f} min in all): {', '.join(parts)}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress goes to the Dagster log, not progress bars
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="ubuntu_irc", choices=sorted(SOURCES))
    parser.add_argument("--preset", default="cpu", choices=sorted(MINING_ANCHORS))
    parser.add_argument(
        "--all-stages", action="store_true", help="Also run what the preset leaves out (cpu: stages 2 and 3)."
    )
    parser.add_argument(
        "--write", type=Path, help="Also write the summary, with its date, command and commit, to this results file."
    )
    args = parser.parse_args(argv)
    instance = dg.DagsterInstance.get()
    result = run_pipeline(args.source, args.preset, instance, args.all_stages)
    for event in result.all_events:
        if event.is_step_failure:
            print(f"FAILED {event.step_key}: {event.step_failure_data.error.message.strip()}", file=sys.stderr)
    report = [f"run {result.run_id}: {'success' if result.success else 'FAILED'}", summary(args.source, result)]
    if skipped := left_out(args.preset, args.all_stages):
        report.append(f"left out by preset {args.preset}: {', '.join(skipped)} (--all-stages runs them)")
    report.append(step_seconds(instance, result.run_id))
    print("\n".join(report))
    if args.write is not None:
        command = ["python", "-m", "threadembed_assets.run", *(sys.argv[1:] if argv is None else argv)]
        write_results(args.write, "```\n" + local_folders_shortened("\n".join(report)) + "\n```", command)
    return 0 if result.success else 1


def local_folders_shortened(text: str) -> str:
    """`text` with the paths under this machine's data and models folders written from `data/` and `models/`, as a
    user's are (only absolute paths: a relative folder already reads as the user's)."""
    for folder, name in ((settings.models_dir(), "models"), (settings.data_dir(), "data")):
        for absolute in dict.fromkeys((folder.absolute(), folder.resolve())):
            text = text.replace(f"{absolute}/", f"{name}/")
    return text


if __name__ == "__main__":
    settings.exit_quietly(main())
