"""Raw dataset assets, one per registered source, made by one factory."""

import dagster as dg

from threadembed_assets.sources.config import RawSourceConfig, SourceConfigError
from threadembed_assets.sources.hub import HubUnavailableError
from threadembed_assets.sources.raw_cache import preview_markdown, raw_cache_dir, write_raw_cache
from threadembed_assets.sources.registry import SOURCES, SourceSpec
from threadembed_assets.versions import code_version

# Failures a user fixes by configuration: shown as a clear message, not a traceback.
# Anything else is a bug and keeps its traceback.
_USER_ERRORS = (HubUnavailableError, SourceConfigError)
# A hub stream that breaks mid-way (a dropped connection, a 5xx) is worth another try; a user error is not.
HUB_RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def build_raw_asset(spec: SourceSpec) -> dg.AssetsDefinition:
    """The `raw_<source>` asset: the dataset as fetched, cached as Parquet under the data folder."""

    @dg.asset(
        code_version=code_version("sources"),
        name=f"raw_{spec.key}",
        group_name="raw",
        description=f"{spec.description}\n\nUpstream: {spec.upstream} ({spec.license}), priority {spec.priority}.",
        kinds={"parquet", spec.platform} if spec.platform != "mixed" else {"parquet"},
        tags={"priority": spec.priority},
        metadata={"upstream": spec.upstream, "license": spec.license, "platform": spec.platform},
        retry_policy=HUB_RETRY if spec.streams_from_hub else None,
    )
    def raw_asset(context: dg.AssetExecutionContext, config: RawSourceConfig) -> dg.MaterializeResult:
        dest = raw_cache_dir(spec.key)
        try:
            stats = write_raw_cache(spec.load(config), dest)
        except _USER_ERRORS as exc:
            raise dg.Failure(description=f"raw_{spec.key}: {exc}", allow_retries=False) from None
        context.log.info(f"raw_{spec.key}: {stats['rows']} rows ({stats['error_rows']} unreadable) -> {dest}")
        provenance = (
            {"sample_seed": config.seed, "n_messages": config.n_messages}
            if spec.key == "sample"
            else {"upstream": config.path or spec.upstream, "revision": config.revision or "default"}
        )
        if spec.key == "discord_unveiled":
            provenance.update(sample_seed=config.seed, sample_rate=config.sample_rate)
        return dg.MaterializeResult(
            metadata={
                "rows": stats["rows"],
                "unreadable_rows": stats["error_rows"],
                "bytes": stats["bytes"],
                "path": dg.MetadataValue.path(str(dest)),
                **provenance,
                "preview": dg.MetadataValue.md(preview_markdown(dest)),
            }
        )

    return raw_asset


RAW_ASSETS = [build_raw_asset(spec) for spec in SOURCES.values()]
