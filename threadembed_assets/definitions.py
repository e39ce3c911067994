"""The ThreadEmbed code location: assets, checks, jobs and resources."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from threadembed_assets import settings
from threadembed_assets.pairs.assets import PAIR_ASSETS
from threadembed_assets.pairs.checks import build_pair_quality_check
from threadembed_assets.sources.assets import RAW_ASSETS
from threadembed_assets.warehouse.assets import conversations, messages


def build_resources() -> dict:
    """Resources read from the environment when the code location loads."""
    return {"warehouse": DuckDBResource(database=str(settings.warehouse_path()))}


ASSETS = [*RAW_ASSETS, messages, conversations, *PAIR_ASSETS]
ASSET_CHECKS = [build_pair_quality_check(asset) for asset in PAIR_ASSETS]

defs = dg.Definitions(assets=ASSETS, asset_checks=ASSET_CHECKS, resources=build_resources())
