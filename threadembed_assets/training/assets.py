"""Training assets: three stages, each starting from the one before, on every source's train pairs."""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from threadembed_assets.pairs.assets import query_response_pairs, summary_pairs, temporal_pairs, thread_pairs
from threadembed_assets.training.data import load_pairs, pair_sources, pairs_digest, thread_retrieval_set
from threadembed_assets.training.mining import (
    HARD_NEGATIVE_TABLE,
    MiningConfig,
    load_mining_rows,
    mine_rows,
    write_hard_negative_pairs,
)
from threadembed_assets.training.presets import TrainConfig, recipe_for
from threadembed_assets.training.resources import ComputeResource, ModelStore
from threadembed_assets.training.train import StageResult, fingerprint, load_model, train_stage
from threadembed_assets.warehouse.assets import connect, source_partitions
from threadembed_assets.warehouse.provenance import read_provenance, train_conversations, write_provenance


@dataclass(frozen=True)
class Stage:
    """A training stage: the pair tables it learns from and the model it starts from."""

    name: str
    tables: list[str]
    start_from: str | None  # an upstream training asset; None is the base model
    with_negative: bool = False


STAGES = {
    "thread_model": Stage("thread_model", ["thread_pairs", "temporal_pairs"], None),
    "retrieval_model": Stage("retrieval_model", ["query_response_pairs", "summary_pairs"], "thread_model"),
    "hard_negative_model": Stage("hard_negative_model", [HARD_NEGATIVE_TABLE], "retrieval_model", True),
}


def _start_path(stage: Stage, models: ModelStore) -> str:
    if stage.start_from is None:
        return models.base_model_path()
    latest = models.latest(stage.start_from)
    if latest is None:
        raise dg.Failure(description=f"{stage.name} starts from {stage.start_from}: materialize it first.")
    return str(latest)


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


def _metadata(result: StageResult, start_from: str, latest: str, record: dict) -> dict:
    curve = dg.MetadataValue.table(
        records=[dg.TableRecord({"step": step, "loss": round(loss, 5)}) for step, loss in result.loss_curve],
        schema=dg.TableSchema(columns=[dg.TableColumn("step", "int"), dg.TableColumn("loss", "float")]),
    )
    dev = "\n".join(
        ["| dev thread retrieval | before | after |", "|---|---|---|"]
        + [f"| {k} | {result.dev_before.get(k, '-')} | {v} |" for k, v in result.dev_after.items()]
    )
    return {
        "path": dg.MetadataValue.path(latest),
        "checkpoint": dg.MetadataValue.path(str(result.run_dir)),
        "start_from": start_from,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
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
        "dev_thread_retrieval": dg.MetadataValue.md(dev),
        "dev_before": dg.MetadataValue.json(result.dev_before),
        "dev_after": dg.MetadataValue.json(result.dev_after),
        **{
            f"dev_mrr@10_{when}": scores.get("mrr@10", 0.0)
            for when, scores in [("before", result.dev_before), ("after", result.dev_after)]
        },
    }


def run_stage(
    context: dg.AssetExecutionContext,
    stage: Stage,
    config: TrainConfig,
    warehouse: DuckDBResource,
    compute: ComputeResource,
    models: ModelStore,
) -> dg.MaterializeResult:
    """Train one stage and publish it as `<models>/<stage>/latest`."""
    device = compute.resolve_device()
    precision = compute.resolve_precision(device)
    recipe = recipe_for(stage.name, config, compute.train_batch_size)
    start_from = _start_path(stage, models)
    exclude = sorted(set(config.exclude_platforms))
    with connect(warehouse) as con:
        try:
            dataset = load_pairs(con, stage.tables, recipe.max_pairs, config.seed, stage.with_negative, exclude)
        except ValueError as exc:
            raise dg.Failure(description=f"{stage.name}: {exc}") from None
        digest = pairs_digest(con, stage.tables, stage.with_negative, exclude)
        eval_set = thread_retrieval_set(con, "dev", recipe.eval_queries, config.seed, exclude_platforms=exclude)
        learned = train_conversations(con, pair_sources(con, stage.tables, stage.with_negative, exclude), exclude)
    if len(dataset) == 0:
        excluding = f" outside platforms {exclude}" if exclude else ""
        raise dg.Failure(description=f"{stage.name}: no train pairs in {stage.tables}{excluding}")
    key = fingerprint(stage.name, start_from, recipe, digest, exclude, config.seed, device, precision)
    asset_dir = models.asset_dir(stage.name)
    context.log.info(
        f"{stage.name}: {len(dataset)} pairs from {stage.tables}, start {start_from}, {device}/{precision}, "
        f"preset {config.preset}: {recipe}" + (f", excluding platforms {exclude}" if exclude else "")
    )
    result = train_stage(
        stage=stage.name,
        start_from=start_from,
        train_dataset=dataset,
        eval_set=eval_set,
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
    latest = models.publish(stage.name, result.run_dir)
    context.log.info(
        f"{stage.name}: {result.steps} steps, {result.pairs_per_second:.1f} pairs/s over {result.train_seconds:.1f} s "
        f"of training ({result.wall_seconds:.1f} s in all), dev {result.dev_before} -> {result.dev_after}; learned "
        f"from {record['conversations']} conversations on {record['platforms']}"
    )
    return dg.MaterializeResult(metadata=_metadata(result, start_from, str(latest), record))


def _training_asset(stage: Stage, deps: list, description: str) -> dg.AssetsDefinition:
    @dg.asset(name=stage.name, group_name="training", deps=deps, pool="gpu", kinds={"pytorch"}, description=description)
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
    [thread_pairs, temporal_pairs],
    "Stage 1: the base model learns which messages belong to one thread (strategies A + C).",
)
retrieval_model = _training_asset(
    STAGES["retrieval_model"],
    [thread_model, query_response_pairs, summary_pairs],
    "Stage 2: from stage 1, at a lower learning rate, learns question -> answer and description -> "
    "conversation (strategies B + D).",
)


@dg.asset(
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
    latest = models.latest("retrieval_model")
    if latest is None:
        raise dg.Failure(description="hard_negative_pairs mines with retrieval_model: materialize it first.")
    model = load_model(str(latest), compute.resolve_device())
    with connect(warehouse) as con:
        rows = load_mining_rows(con, source, config)
        mined = mine_rows(model, rows, config, compute.eval_batch_size)
        written = write_hard_negative_pairs(con, source, rows, mined)
        metadata = quality_metadata(con, HARD_NEGATIVE_TABLE, source, config)
    context.log.info(f"{HARD_NEGATIVE_TABLE}[{source}]: {len(mined)} mined of {len(rows)} pairs, {written} rows")
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "anchors": len(rows),
            "mined": len(mined),
            "miner": str(latest),
            "mined_share": round(len(mined) / len(rows), 4) if rows else 0.0,
        }
    )


hard_negative_model = _training_asset(
    STAGES["hard_negative_model"],
    [retrieval_model, hard_negative_pairs],
    "Stage 3: from stage 2, trains on mined and interleaved hard negatives.",
)

TRAINING_ASSETS = [thread_model, retrieval_model, hard_negative_pairs, hard_negative_model]
