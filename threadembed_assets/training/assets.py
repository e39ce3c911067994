"""Training assets: three stages, each starting from the one before, on every source's train pairs."""

import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
from dagster_duckdb import DuckDBResource

from threadembed_assets.chat.metrics import paired_test, verdict
from threadembed_assets.pairs.assets import query_response_pairs, summary_pairs, temporal_pairs, thread_pairs
from threadembed_assets.resources import ComputeResource, ModelStore
from threadembed_assets.sources.registry import source_partitions
from threadembed_assets.training.data import dev_retrieval_sets, load_training_sets, pair_sources, pairs_digest
from threadembed_assets.training.mining import (
    HARD_NEGATIVE_TABLE,
    MiningConfig,
    load_mining_rows,
    mine_rows,
    write_hard_negative_pairs,
)
from threadembed_assets.training.presets import TrainConfig, recipe_for
from threadembed_assets.training.train import StageResult, fingerprint, load_model, train_stage
from threadembed_assets.versions import code_version
from threadembed_assets.warehouse.connection import connect
from threadembed_assets.warehouse.provenance import read_provenance, train_conversations, write_provenance


@dataclass(frozen=True)
class Stage:
    """A training stage: the pair tables it learns from and the model it starts from."""

    name: str
    tables: list[str]
    start_from: str | None  # an upstream training asset; None is the base model


STAGES = {
    "thread_model": Stage("thread_model", ["thread_pairs"], None),
    "retrieval_model": Stage(
        "retrieval_model", ["query_response_pairs", "temporal_pairs", "summary_pairs"], "thread_model"
    ),
    "hard_negative_model": Stage("hard_negative_model", [HARD_NEGATIVE_TABLE], "retrieval_model"),
}
SELECTION_FILE = "threadembed_selection.json"


def handed_on(asset: str, models: ModelStore) -> str:
    """The best model so far up to training asset `asset` (what the stages after it start from)."""
    model = models.hand_on(asset)
    if model is None:
        raise dg.Failure(description=f"{asset} has no model to hand on: materialize it first.")
    return str(model)


def ranker_model(models: ModelStore) -> str:
    """The model whose similarity the ranker reads: the best model so far on dev of the last trained stage (what
    it hands on), else the base model."""
    handed = (models.hand_on(stage) for stage in reversed(list(STAGES)))
    return str(next((model for model in handed if model is not None), models.base_model_path()))


def _start_path(stage: Stage, models: ModelStore) -> str:
    return models.base_model_path() if stage.start_from is None else handed_on(stage.start_from, models)


# Without per-query dev scores (no paired test possible), a stage may lose this much dev MRR@10 on one task and
# still be published for what it gains on the others.
DEV_TOLERANCE = 0.01


def task_mrr(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """MRR@10 of each dev task of a stage's dev scores (`StageResult.dev_before` / `dev_after`)."""
    return {task: metrics["mrr@10"] for task, metrics in scores.items() if "mrr@10" in metrics}


def dev_score(by_task: dict[str, float]) -> float | None:
    """The selection score: MRR@10 (`task_mrr`) averaged over the dev tasks (None without any)."""
    return round(sum(by_task.values()) / len(by_task), 4) if by_task else None


def dev_verdicts(result: StageResult) -> dict[str, dict]:
    """Per dev task with per-query scores for both models: the paired delta of MRR@10 (run - start model), its
    p-value (paired randomization test on the same queries) and the verdict (win / loss at 95%, else tie)."""
    verdicts = {}
    for task, after in result.dev_per_query_after.items():
        before = result.dev_per_query_before.get(task)
        if before is not None and len(before) == len(after):
            delta, p = paired_test(np.array(after), np.array(before))
            verdicts[task] = {"delta": round(delta, 4), "p": round(p, 4), "verdict": verdict(delta, p)}
    return verdicts


def beats_start(start_by_task: dict[str, float], by_task: dict[str, float], verdicts: dict[str, dict]) -> bool:
    """The run (dev MRR@10 `by_task`) beats its start model (`start_by_task`) on dev: with paired verdicts on every
    task, a significant win on one task and a significant loss on none; else (no per-query scores) a higher mean
    MRR@10 with no task down more than DEV_TOLERANCE. Without a dev set there is nothing to lose: True."""
    before, after = dev_score(start_by_task), dev_score(by_task)
    if before is None or after is None:
        return True
    if verdicts and set(verdicts) == set(by_task):
        outcomes = {v["verdict"] for v in verdicts.values()}
        return "win" in outcomes and "loss" not in outcomes
    drops = [round(start_by_task[task] - mrr, 4) for task, mrr in by_task.items() if task in start_by_task]
    return after > before and max(drops, default=0.0) <= DEV_TOLERANCE


def select(stage: str, result: StageResult, start_from: str, only_if_better: bool) -> dict:
    """Whether the stage's run is published, and which model the next stage starts from: the run when it beats
    the model it started from on dev (`beats_start`), or when `only_if_better` is off; else that model. The record
    names the stage whose model won, also written to the run's folder and model card."""
    start_by_task, by_task = task_mrr(result.dev_before), task_mrr(result.dev_after)
    before, after = dev_score(start_by_task), dev_score(by_task)
    verdicts = dev_verdicts(result)
    better = beats_start(start_by_task, by_task, verdicts)
    published = better or not only_if_better
    start_record = Path(start_from) / SELECTION_FILE
    start_winner = json.loads(start_record.read_text())["winner"] if start_record.is_file() else "base model"
    record = {
        "stage": stage,
        "start_from": start_from,
        "dev_mrr@10_start": before,
        "dev_mrr@10": after,
        "dev_mrr@10_by_task": by_task,
        "dev_mrr@10_start_by_task": start_by_task,
        "dev_verdicts": verdicts,
        "beat_start": better,
        "published": published,
        "winner": stage if published else start_winner,
        "hand_on": str(result.run_dir) if published else start_from,
    }
    (result.run_dir / SELECTION_FILE).write_text(json.dumps(record, indent=1))
    card = result.run_dir / "README.md"
    if card.is_file():
        outcome = "published as `latest`" if published else "not published: `latest` keeps the previous model"
        with card.open("a", encoding="utf-8") as handle:
            handle.write(
                f"\n\n## ThreadEmbed stage selection\n\n- stage: {stage}\n- dev MRR@10 (mean over tasks) of the start "
                f"model ({start_winner}): {before} {record['dev_mrr@10_start_by_task']}\n- dev MRR@10 of this run: "
                f"{after} {record['dev_mrr@10_by_task']}\n- paired verdicts against the start model: "
                f"{verdicts or 'none (no per-query scores)'}\n- {outcome}\n"
                f"- the next stage starts from: {record['winner']}\n"
            )
    return record


def model_card_section(record: dict) -> str:
    """A model card section on what a checkpoint learned from (its provenance record)."""

    def listed(values: list[str]) -> str:
        return ", ".join(values) or "none"

    return (
        "\n\n## ThreadEmbed training data\n\n"
        "Train-split conversations this model (with the models it started from) learned from:\n\n"
        f"- sources: {listed(record['sources'])}\n"
        f"- platforms: {listed(record['platforms'])}\n"
        f"- excluded platforms: {listed(record['excluded_platforms'])}\n"
        f"- conversations: {record['conversations']}\n"
        f"- conversation fingerprint: {record['fingerprint']}\n"
    )


def record_training_data(run_dir: Path, learned: dict, exclude_platforms: list[str], start_from: str, log=None) -> dict:
    """Write the provenance file into `run_dir` (what this stage learned plus what `start_from` had learned) and
    append a section on it to the model card; returns the record."""
    inherited = read_provenance(start_from)
    # A platform the start model already learned was not left out of this model, whatever this stage excluded.
    relearned = sorted(set(exclude_platforms) & set((inherited or {}).get("platforms", [])))
    if relearned and log:
        log(f"the start model {start_from} already learned {relearned}: they are not recorded as excluded")
    excluded = sorted(set(exclude_platforms) - set(relearned))
    record = write_provenance(run_dir, learned, excluded, inherited)
    card = run_dir / "README.md"
    if card.is_file():
        with card.open("a", encoding="utf-8") as handle:
            handle.write(model_card_section(record))
    return record


def _metadata(result: StageResult, start_from: str, latest: str, record: dict, selection: dict) -> dict:
    curve = dg.MetadataValue.table(
        records=[dg.TableRecord({"step": step, "loss": round(loss, 5)}) for step, loss in result.loss_curve],
        schema=dg.TableSchema(columns=[dg.TableColumn("step", "int"), dg.TableColumn("loss", "float")]),
    )
    dev = "\n".join(
        ["| dev task | metric | before | after |", "|---|---|---|---|"]
        + [
            f"| {task} | {metric} | {result.dev_before.get(task, {}).get(metric, '-')} | {value} |"
            for task, scores in result.dev_after.items()
            for metric, value in scores.items()
        ]
    )
    per_task = {
        f"dev_mrr@10_{task}_{when}": by_task.get(task, 0.0)
        for task in selection["dev_mrr@10_by_task"]
        for when, by_task in [
            ("before", selection["dev_mrr@10_start_by_task"]),
            ("after", selection["dev_mrr@10_by_task"]),
        ]
    }
    return {
        "path": dg.MetadataValue.path(latest),
        "checkpoint": dg.MetadataValue.path(str(result.run_dir)),
        "start_from": start_from,
        "steps": result.steps,
        "planned_steps": result.planned_steps,
        "final_learning_rate": result.final_learning_rate if result.final_learning_rate is not None else float("nan"),
        "published": selection["published"],
        "next_stage_starts_from": selection["winner"],
        "hand_on": dg.MetadataValue.path(selection["hand_on"]),
        "train_datasets": dg.MetadataValue.json(result.hyperparameters["train_datasets"]),
        "resumed_from_step": result.resumed_from_step,
        "budget_spent_before_resume_s": round(result.budget_spent_before_s, 1),
        "pairs_seen": result.pairs_seen,
        "pairs_per_second": round(result.pairs_per_second, 2),
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(result.wall_seconds, 1),
        "stopped_by_wall_clock_budget": result.stopped_by_budget,
        "trained_on_sources": dg.MetadataValue.json(record["sources"]),
        "trained_on_platforms": dg.MetadataValue.json(record["platforms"]),
        "excluded_platforms": dg.MetadataValue.json(record["excluded_platforms"]),
        "train_conversations": record["conversations"],
        "train_conversations_fingerprint": record["fingerprint"],
        "device": result.hyperparameters["device"],
        "hyperparameters": dg.MetadataValue.json(result.hyperparameters),
        "loss_curve": curve,
        "dev_retrieval": dg.MetadataValue.md(dev),
        "dev_before": dg.MetadataValue.json(result.dev_before),
        "dev_before_recorded": result.dev_before_recorded,
        "dev_verdicts": dg.MetadataValue.json(selection["dev_verdicts"]),
        "dev_after": dg.MetadataValue.json(result.dev_after),
        "dev_mrr@10_before": selection["dev_mrr@10_start"] or 0.0,
        "dev_mrr@10_after": selection["dev_mrr@10"] or 0.0,
        **per_task,
    }


def run_stage(
    context: dg.AssetExecutionContext,
    stage: Stage,
    config: TrainConfig,
    warehouse: DuckDBResource,
    compute: ComputeResource,
    models: ModelStore,
) -> dg.MaterializeResult:
    """Train one stage; publish it as `<models>/<stage>/latest` when it beats its start model on dev (`select`)."""
    device = compute.resolve_device()
    precision = compute.resolve_precision(device)
    recipe = recipe_for(stage.name, config, compute.train_batch_size)
    start_from = _start_path(stage, models)
    exclude = sorted(set(config.exclude_platforms))
    with connect(warehouse, read_only=True) as con:
        try:
            train_sets = load_training_sets(
                con,
                stage.tables,
                recipe.max_pairs,
                config.seed,
                negatives=recipe.negatives,
                separate_conversations=recipe.separate_conversations,
                exclude_platforms=exclude,
            )
        except ValueError as exc:
            raise dg.Failure(description=f"{stage.name}: {exc}") from None
        digest = pairs_digest(con, stage.tables, exclude)
        eval_sets = dev_retrieval_sets(con, recipe.eval_queries, config.seed, exclude_platforms=exclude)
        learned = train_conversations(con, pair_sources(con, stage.tables, exclude), exclude)
    if not train_sets:
        excluding = f" outside platforms {exclude}" if exclude else ""
        raise dg.Failure(description=f"{stage.name}: no train pairs in {stage.tables}{excluding}")
    key = fingerprint(stage.name, start_from, recipe, digest, exclude, config.seed, device, precision)
    asset_dir = models.asset_dir(stage.name)
    sizes = ", ".join(f"{name} {len(data)}" for name, data in train_sets.items())
    context.log.info(
        f"{stage.name}: {sizes} rows, start {start_from}, {device}/{precision}, "
        f"preset {config.preset}: {recipe}" + (f", excluding platforms {exclude}" if exclude else "")
    )
    result = train_stage(
        stage=stage.name,
        start_from=start_from,
        train_sets=train_sets,
        eval_sets=eval_sets,
        recipe=recipe,
        device=device,
        precision=precision,
        eval_batch_size=compute.eval_batch_size,
        work_dir=asset_dir / "_work" / key,
        run_dir=asset_dir / context.run_id,
        seed=config.seed,
        log=context.log.info,
    )
    # The folder is complete (weights, model card, provenance) before `latest` points at it.
    record = record_training_data(result.run_dir, learned, exclude, start_from, context.log.warning)
    selection = select(stage.name, result, start_from, recipe.publish_only_if_better)
    if selection["published"]:
        models.publish(stage.name, result.run_dir)
    else:
        context.log.warning(
            f"{stage.name}: dev MRR@10 {selection['dev_mrr@10']} {selection['dev_mrr@10_by_task']} does not beat its "
            f"start model's {selection['dev_mrr@10_start']} {selection['dev_mrr@10_start_by_task']}: `latest` stays, "
            f"the next stage starts from {selection['winner']}"
        )
    models.record_hand_on(stage.name, Path(selection["hand_on"]))
    for removed in models.prune(stage.name, keep_work=asset_dir / "_work" / key):
        context.log.info(f"{stage.name}: removed {removed} (beyond the newest {models.keep_runs} runs, or stale)")
    latest = models.latest(stage.name)
    context.log.info(
        f"{stage.name}: {result.steps}/{result.planned_steps} steps, {result.pairs_per_second:.1f} pairs/s over "
        f"{result.train_seconds:.1f} s of training ({result.wall_seconds:.1f} s in all), dev {result.dev_before} -> "
        f"{result.dev_after}; learned from {record['conversations']} conversations on {record['platforms']}"
    )
    return dg.MaterializeResult(metadata=_metadata(result, start_from, str(latest or ""), record, selection))


def _training_asset(stage: Stage, deps: list, description: str) -> dg.AssetsDefinition:
    @dg.asset(
        code_version=code_version("training", "chat", "evaluation"),  # dev sets and verdicts
        name=stage.name,
        group_name="training",
        deps=deps,
        pool="gpu",
        kinds={"pytorch"},
        description=description,
    )
    def training_asset(
        context: dg.AssetExecutionContext,
        config: TrainConfig,
        warehouse: DuckDBResource,
        compute: ComputeResource,
        models: ModelStore,
    ) -> dg.MaterializeResult:
        return run_stage(context, stage, config, warehouse, compute, models)

    return training_asset


thread_model = _training_asset(
    STAGES["thread_model"],
    [thread_pairs],
    "Stage 1: the base model learns which messages belong to one thread (strategy A).",
)
retrieval_model = _training_asset(
    STAGES["retrieval_model"],
    [thread_model, query_response_pairs, temporal_pairs, summary_pairs],
    "Stage 2: from stage 1, at a lower learning rate, learns what answers and continues a conversation: question -> "
    "answer, prefix -> next message, window -> next window, description -> conversation (strategies B + C + D).",
)


@dg.asset(
    code_version=code_version("training", "chat", "evaluation"),  # dev sets and verdicts
    name=HARD_NEGATIVE_TABLE,
    partitions_def=source_partitions,
    group_name="pairs",
    deps=[retrieval_model, thread_pairs, query_response_pairs],
    kinds={"duckdb", "pytorch"},
    pool="gpu",
)
def hard_negative_pairs(
    context: dg.AssetExecutionContext,
    config: MiningConfig,
    warehouse: DuckDBResource,
    compute: ComputeResource,
    models: ModelStore,
) -> dg.MaterializeResult:
    """Train pairs with negatives mined by the stage 2 model (`sentence_transformers.util.mine_hard_negatives`,
    with a relative margin against false negatives, never from the anchor's own conversation), kept together with
    the interleaved-thread negatives of the same pairs (`meta.negative_kind`: mined | interleaved)."""
    from threadembed_assets.pairs.assets import quality_metadata

    source = context.partition_key
    latest = handed_on("retrieval_model", models)
    model = load_model(latest, compute.resolve_device())
    with connect(warehouse, read_only=True) as con:
        rows = load_mining_rows(con, source, config)
    # Encoding holds no connection: other runs read and write the warehouse meanwhile.
    mined = mine_rows(model, rows, config, compute.eval_batch_size)
    with connect(warehouse) as con:
        written = write_hard_negative_pairs(con, source, rows, mined)
        metadata = quality_metadata(con, HARD_NEGATIVE_TABLE, source, config)
    context.log.info(f"{HARD_NEGATIVE_TABLE}[{source}]: {len(mined)} mined of {len(rows)} pairs, {written} rows")
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "anchors": len(rows),
            "mined": len(mined),
            "miner": latest,
            "mined_share": round(len(mined) / len(rows), 4) if rows else 0.0,
        }
    )


hard_negative_model = _training_asset(
    STAGES["hard_negative_model"],
    [retrieval_model, hard_negative_pairs],
    "Stage 3: from stage 2, trains on mined and interleaved hard negatives.",
)

TRAINING_ASSETS = [thread_model, retrieval_model, hard_negative_pairs, hard_negative_model]
