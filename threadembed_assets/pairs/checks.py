"""Blocking pair-quality checks: a bad or regressed pair table stops training in the same run."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from threadembed_assets.pairs.quality import PairQualityThresholds, judge, pair_metrics
from threadembed_assets.warehouse.connection import connect

_SHOWN = [
    "rows",
    "train_rows",
    "leakage",
    "empty_rate",
    "duplicate_rate",
    "anchor_equals_positive_rate",
    "negative_equals_positive_rate",
    "negative_coverage",
    "anchor_chars_p50",
    "positive_chars_p50",
    "pairs_per_conversation_max",
    "pairs_per_conversation_p95",
]


def previous_quality(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str) -> dict | None:
    """The metrics of the materialization before the latest one of this partition, when both were built with the
    same config (a deliberate config change is not a regression); None otherwise."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=2
    ).records
    if len(records) < 2:
        return None
    latest, previous = (record.asset_materialization.metadata for record in records)
    quality, config = previous.get("quality"), previous.get("config")
    if quality is None or config is None or latest.get("config") is None or config.data != latest["config"].data:
        return None
    return dict(quality.data)


def comparison_table(current: dict, previous: dict | None) -> str:
    """Markdown of the metrics now and at the previous materialization."""
    lines = ["| metric | now | previous |", "|---|---|---|"]
    for name in _SHOWN:
        before = "-" if previous is None or name not in previous else f"{previous[name]:.4g}"
        lines.append(f"| {name} | {current[name]:.4g} | {before} |")
    return "\n".join(lines)


def build_pair_quality_check(asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """A blocking check on a pair table: ERROR on leakage, anchor = positive, too many empty or duplicate pairs,
    or a regression against the previous materialization of the partition; WARN on smaller drifts."""
    table = asset.key.to_user_string()

    @dg.asset_check(
        asset=asset,
        name="pair_quality",
        blocking=True,
        description=build_pair_quality_check.__doc__.replace("\n   ", ""),
    )
    def pair_quality(
        context: dg.AssetCheckExecutionContext, config: PairQualityThresholds, warehouse: DuckDBResource
    ) -> dg.AssetCheckResult:
        partition = context.op_execution_context.partition_key
        with connect(warehouse, read_only=True) as con:
            current = pair_metrics(con, table, partition)
        previous = previous_quality(context.instance, asset.key, partition)
        findings = judge(current, previous, config)
        errors = [f.message for f in findings if f.severity == dg.AssetCheckSeverity.ERROR]
        warnings = [f.message for f in findings if f.severity == dg.AssetCheckSeverity.WARN]
        for message in errors + warnings:
            context.log.warning(f"{table}[{partition}]: {message}")
        return dg.AssetCheckResult(
            passed=not findings,
            severity=dg.AssetCheckSeverity.ERROR if errors else dg.AssetCheckSeverity.WARN,
            metadata={
                "errors": dg.MetadataValue.json(errors),
                "warnings": dg.MetadataValue.json(warnings),
                "metrics": dg.MetadataValue.md(comparison_table(current, previous)),
                "current": dg.MetadataValue.json(current),
                "previous": dg.MetadataValue.json(previous or {}),
            },
        )

    return pair_quality
