"""The ThreadEmbed code location: assets, checks, jobs and resources."""

import os

import dagster as dg
from dagster_duckdb import DuckDBResource

from threadembed_assets import settings
from threadembed_assets.benchmark.assets import BENCHMARK_ASSETS
from threadembed_assets.disentangle.assets import disentangler
from threadembed_assets.pairs.assets import PAIR_ASSETS
from threadembed_assets.pairs.checks import build_pair_quality_check
from threadembed_assets.resources import ComputeResource, ModelStore
from threadembed_assets.search.assets import SEARCH_ASSETS
from threadembed_assets.sources.assets import raw_messages
from threadembed_assets.sources.automation import (
    chat_export_job,
    discord_refresh_job,
    discord_sample_refresh,
    imports_sensor,
)
from threadembed_assets.summaries.assets import conversation_summaries
from threadembed_assets.summaries.client import LLMResource
from threadembed_assets.training.assets import TRAINING_ASSETS, hard_negative_pairs
from threadembed_assets.warehouse.assets import conversations, messages


def _env(name: str) -> dg.EnvVar | None:
    """An EnvVar for a variable that is set (so that secrets are resolved at run time and never shown), else None."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def build_resources() -> dict:
    """Resources read from the environment when the code location loads."""
    return {
        "warehouse": DuckDBResource(database=str(settings.warehouse_path())),
        "llm": LLMResource(
            base_url=_env("OPENAI_BASE_URL"), model=_env("THREADEMBED_LLM_MODEL"), api_key=_env("OPENAI_API_KEY")
        ),
        "compute": ComputeResource(device=os.environ.get("THREADEMBED_DEVICE", "auto")),
        "models": ModelStore(root=str(settings.models_dir()), base_model=os.environ.get("THREADEMBED_BASE_MODEL", "")),
    }


ASSETS = [
    raw_messages,
    messages,
    conversations,
    conversation_summaries,
    *PAIR_ASSETS,
    *TRAINING_ASSETS,
    disentangler,
    *BENCHMARK_ASSETS,
    *SEARCH_ASSETS,
]
ASSET_CHECKS = [build_pair_quality_check(asset) for asset in [*PAIR_ASSETS, hard_negative_pairs]]

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=[discord_refresh_job, chat_export_job],
    schedules=[discord_sample_refresh],
    sensors=[imports_sensor],
    resources=build_resources(),
)
