"""Pair-quality metrics of a pair table partition, and how they are judged against thresholds and history."""

from dataclasses import dataclass

import dagster as dg
import duckdb
from pydantic import Field

# Rates where more is worse, compared with the previous materialization of the same partition.
HIGHER_IS_WORSE = ["empty_rate", "duplicate_rate", "anchor_equals_positive_rate", "negative_equals_positive_rate"]
# Rates where less is worse.
LOWER_IS_WORSE = ["negative_coverage"]


class PairQualityThresholds(dg.Config):
    """When a pair table stops training (ERROR) or only warns (WARN)."""

    max_empty_rate: float = Field(default=0.01, description="ERROR above this share of empty anchors/positives.")
    max_duplicate_rate: float = Field(default=0.05, description="ERROR above this share of exact duplicate pairs.")
    max_row_drop: float = Field(default=0.20, description="ERROR when rows fall by more than this share.")
    warn_row_drop: float = Field(default=0.05, description="WARN when rows fall by more than this share.")
    rate_tolerance: float = Field(
        default=0.02, description="ERROR when a rate is worse than the previous materialization's by more."
    )
    warn_rate_tolerance: float = Field(default=0.005, description="WARN when a rate is worse by more than this.")
    length_drift: float = Field(default=0.30, description="WARN when a median length moves by more than this share.")


_METRICS_SQL = """
WITH p AS (
    SELECT p.*, c.split AS conversation_split, nc.split AS negative_split
    FROM {table} p
    LEFT JOIN conversations c ON c.source = p.source AND c.conversation_id = p.conversation_id
    LEFT JOIN conversations nc ON nc.source = p.source
        AND nc.conversation_id = json_extract_string(p.meta, '$.negative_conversation_id')
    WHERE p.source = $source
), per_conversation AS (
    SELECT count(*) AS n FROM p GROUP BY conversation_id
)
SELECT
    count(*) AS rows,
    count(*) FILTER (WHERE split = 'train') AS train_rows,
    count(*) FILTER (WHERE trim(anchor) = '' OR trim(positive) = '') AS empty,
    count(*) FILTER (WHERE anchor = positive) AS anchor_equals_positive,
    count(*) - count(DISTINCT (anchor, positive, coalesce(negative, ''))) AS duplicates,
    count(*) FILTER (WHERE negative = positive) AS negative_equals_positive,
    count(negative) AS with_negative,
    count(*) FILTER (WHERE split = 'train' AND (conversation_split IS DISTINCT FROM 'train'
        OR (negative_split IS NOT NULL AND negative_split != 'train'))) AS leakage,
    coalesce(quantile_cont(length(anchor), 0.5), 0) AS anchor_chars_p50,
    coalesce(quantile_cont(length(anchor), 0.95), 0) AS anchor_chars_p95,
    coalesce(quantile_cont(length(positive), 0.5), 0) AS positive_chars_p50,
    coalesce(quantile_cont(length(positive), 0.95), 0) AS positive_chars_p95,
    (SELECT coalesce(max(n), 0) FROM per_conversation) AS pairs_per_conversation_max,
    (SELECT coalesce(quantile_cont(n, 0.95), 0) FROM per_conversation) AS pairs_per_conversation_p95
FROM p
"""


def pair_metrics(con: duckdb.DuckDBPyConnection, table: str, source: str) -> dict[str, float]:
    """Quality metrics of one source's rows of a pair table (`table` is a STRATEGIES name)."""
    cursor = con.execute(_METRICS_SQL.format(table=table), {"source": source})
    names = [d[0] for d in cursor.description]
    metrics = dict(zip(names, cursor.fetchone(), strict=True))
    rows = metrics["rows"] or 1
    metrics.update(
        empty_rate=metrics["empty"] / rows,
        duplicate_rate=metrics["duplicates"] / rows,
        anchor_equals_positive_rate=metrics["anchor_equals_positive"] / rows,
        negative_equals_positive_rate=metrics["negative_equals_positive"] / rows,
        negative_coverage=metrics["with_negative"] / rows,
    )
    return {name: float(value) for name, value in metrics.items()}


@dataclass(frozen=True)
class Finding:
    """One thing a quality check found."""

    severity: dg.AssetCheckSeverity
    message: str


def judge(current: dict, previous: dict | None, limits: PairQualityThresholds) -> list[Finding]:
    """Findings on `current` metrics, alone and against the `previous` materialization's."""
    error, warn = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
    findings = []
    if current["rows"] == 0:
        findings.append(Finding(warn, "no pairs (conversations too short for this strategy?)"))
    if current["leakage"] > 0:
        findings.append(Finding(error, f"{current['leakage']:.0f} train pairs touch a dev/test conversation"))
    if current["anchor_equals_positive"] > 0:
        findings.append(Finding(error, f"{current['anchor_equals_positive']:.0f} pairs have anchor equal to positive"))
    if current["negative_equals_positive"] > 0:
        findings.append(
            Finding(error, f"{current['negative_equals_positive']:.0f} pairs have a negative equal to their positive")
        )
    if current["empty_rate"] > limits.max_empty_rate:
        findings.append(Finding(error, f"empty rate {current['empty_rate']:.2%} > {limits.max_empty_rate:.2%}"))
    if current["duplicate_rate"] > limits.max_duplicate_rate:
        findings.append(
            Finding(error, f"duplicate rate {current['duplicate_rate']:.2%} > {limits.max_duplicate_rate:.2%}")
        )
    if previous is None:
        return findings
    if previous["rows"] > 0:
        drop = 1 - current["rows"] / previous["rows"]
        if drop > limits.max_row_drop:
            findings.append(Finding(error, f"rows fell {drop:.1%} ({previous['rows']:.0f} -> {current['rows']:.0f})"))
        elif drop > limits.warn_row_drop:
            findings.append(Finding(warn, f"rows fell {drop:.1%} ({previous['rows']:.0f} -> {current['rows']:.0f})"))
    for name in HIGHER_IS_WORSE + LOWER_IS_WORSE:
        if name not in previous:
            continue
        worse_by = (current[name] - previous[name]) * (1 if name in HIGHER_IS_WORSE else -1)
        if worse_by > limits.rate_tolerance:
            findings.append(
                Finding(error, f"{name} worse by {worse_by:.2%} ({previous[name]:.2%} -> {current[name]:.2%})")
            )
        elif worse_by > limits.warn_rate_tolerance:
            findings.append(
                Finding(warn, f"{name} worse by {worse_by:.2%} ({previous[name]:.2%} -> {current[name]:.2%})")
            )
    for name in ["anchor_chars_p50", "positive_chars_p50"]:
        if previous.get(name) and abs(current[name] / previous[name] - 1) > limits.length_drift:
            findings.append(Finding(warn, f"{name} moved {previous[name]:.0f} -> {current[name]:.0f}"))
    return findings
