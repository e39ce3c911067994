"""The raw dataset asset: one partition per registered source, cached as Parquet under the data folder."""

import random

import dagster as dg

from threadembed_assets.sources.config import RawSourceConfig, SourceConfigError
from threadembed_assets.sources.hub import HubUnavailableError, is_transient
from threadembed_assets.sources.raw_cache import preview_markdown, raw_cache_dir, write_raw_cache
from threadembed_assets.sources.registry import SOURCES, SourceSpec, source_partitions
from threadembed_assets.versions import code_version

# Failures a user fixes by configuration: shown as a clear message, not a traceback.
# Anything else is a bug and keeps its traceback.
_USER_ERRORS = (HubUnavailableError, SourceConfigError)
# A hub stream that breaks mid-way (a dropped connection, a 5xx) is worth another try; a local loader's error, or a
# loader's bug on a hub stream, is not.
HUB_RETRIES = 3
HUB_RETRY_DELAY_S = 30.0


def _sources_markdown() -> str:
    rows = "\n".join(
        f"| {spec.key} | {spec.platform} | {spec.priority} | {spec.upstream} | {spec.license} |"
        for spec in SOURCES.values()
    )
    return f"| partition | platform | priority | upstream | license |\n|---|---|---|---|---|\n{rows}"


def _provenance(spec: SourceSpec, config: RawSourceConfig) -> dict:
    if spec.key == "sample":
        return {"sample_seed": config.seed, "n_messages": config.n_messages}
    provenance = {"upstream": config.path or spec.upstream, "revision": config.revision or "default"}
    if spec.key == "discord_unveiled":
        provenance.update(sample_seed=config.seed, sample_rate=config.sample_rate)
    return provenance


def hub_retry(
    context: dg.AssetExecutionContext, spec: SourceSpec, config: RawSourceConfig, exc: Exception
) -> dg.RetryRequested | None:
    """A retry with exponential backoff and jitter for a hub stream that a network failure broke, while tries are
    left; else None (a local source, a bug, tries spent)."""
    if not spec.streams_from_hub or config.path or context.retry_number >= HUB_RETRIES or not is_transient(exc):
        return None
    delay = HUB_RETRY_DELAY_S * 2**context.retry_number
    return dg.RetryRequested(max_retries=HUB_RETRIES, seconds_to_wait=delay * random.uniform(0.5, 1.5))


@dg.asset(
    code_version=code_version("sources"),
    partitions_def=source_partitions,
    group_name="raw",
    kinds={"parquet"},
    description="Each source's dataset as fetched, one partition per source, cached as Parquet under "
    "`data/raw/<source>/`. Run config (`ops: raw_messages: config:`) says where a partition reads from "
    "(`path`, `revision`, `split`) and how much it keeps (`max_rows`).\n\n" + _sources_markdown(),
    metadata={"sources": dg.MetadataValue.md(_sources_markdown())},
)
def raw_messages(context: dg.AssetExecutionContext, config: RawSourceConfig) -> dg.MaterializeResult:
    """The raw rows of partition `source`; unreadable ones are kept as error rows for the warehouse to quarantine."""
    spec = SOURCES[context.partition_key]
    dest = raw_cache_dir(spec.key)
    try:
        stats = write_raw_cache(spec.load(config), dest)
    except _USER_ERRORS as exc:
        raise dg.Failure(description=f"raw_messages[{spec.key}]: {exc}", allow_retries=False) from None
    except Exception as exc:
        retry = hub_retry(context, spec, config, exc)
        if retry is None:
            raise
        context.log.warning(f"raw_messages[{spec.key}]: the hub stream failed ({exc!r}); trying again")
        raise retry from exc
    context.log.info(f"raw_messages[{spec.key}]: {stats['rows']} rows ({stats['error_rows']} unreadable) -> {dest}")
    return dg.MaterializeResult(
        metadata={
            "rows": stats["rows"],
            "unreadable_rows": stats["error_rows"],
            "bytes": stats["bytes"],
            "path": dg.MetadataValue.path(str(dest)),
            "platform": spec.platform,
            "license": spec.license,
            "priority": spec.priority,
            **_provenance(spec, config),
            "preview": dg.MetadataValue.md(preview_markdown(dest)),
        }
    )
