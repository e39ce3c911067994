"""Automation of the data layers: the weekly Discord sample refresh and the imports-folder sensor.

Neither retrains: training stays a decision made from the UI (or an opt-in schedule of its own).
"""

import hashlib
import json
import os
from pathlib import Path

import dagster as dg

from threadembed_assets import settings

DATA_LAYERS = [
    "messages",
    "conversations",
    "thread_pairs",
    "query_response_pairs",
    "temporal_pairs",
    "conversation_index",
]

discord_refresh_job = dg.define_asset_job(
    "discord_sample_refresh_job",
    selection=dg.AssetSelection.assets("raw_messages", *DATA_LAYERS),
    description="Re-sample Discord Unveiled and rebuild its warehouse, pair and search index partitions (no training).",
)

chat_export_job = dg.define_asset_job(
    "chat_export_job",
    selection=dg.AssetSelection.assets("raw_messages", *DATA_LAYERS),
    description="Load the imports folder and rebuild the chat_export warehouse, pairs and search index (no training).",
)


def refresh_seed(scheduled: "dg.ScheduleEvaluationContext") -> int:
    """A new, reproducible sample seed per tick: the tick's time in whole hours."""
    return int(scheduled.scheduled_execution_time.timestamp()) // 3600


@dg.schedule(
    name="discord_sample_refresh",
    job=discord_refresh_job,
    cron_schedule=os.environ.get("THREADEMBED_DISCORD_REFRESH_CRON", "0 3 * * 1"),
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING
    if os.environ.get("THREADEMBED_DISCORD_REFRESH") == "on"
    else dg.DefaultScheduleStatus.STOPPED,
    description="Weekly (cron in THREADEMBED_DISCORD_REFRESH_CRON): a fresh seeded Discord sample through the pairs. "
    "Off until turned on in the UI or with THREADEMBED_DISCORD_REFRESH=on.",
)
def discord_sample_refresh(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    seed = refresh_seed(context)
    return dg.RunRequest(
        run_key=f"discord-sample-{seed}",
        partition_key="discord_unveiled",
        run_config={"ops": {"raw_messages": {"config": {"seed": seed}}}},
        tags={"threadembed/sample_seed": str(seed)},
    )


def imports_state(folder: Path) -> dict[str, list]:
    """path -> [size, sha256] of every file under the imports folder (hidden files skipped)."""
    state = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
        state[str(path.relative_to(folder))] = [path.stat().st_size, digest.hexdigest()]
    return state


@dg.sensor(
    name="imports_sensor",
    job=chat_export_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="New or changed files under THREADEMBED_IMPORTS_DIR launch the chat_export partition.",
)
def imports_sensor(context: dg.SensorEvaluationContext):
    folder = settings.imports_dir()
    state = imports_state(folder) if folder.is_dir() else {}
    previous = json.loads(context.cursor) if context.cursor else {}
    changed = sorted(path for path, stamp in state.items() if previous.get(path) != stamp)
    if not changed:
        return dg.SkipReason(f"no new or changed files under {folder}")
    context.update_cursor(json.dumps(state))
    key = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=f"imports-{key}", partition_key="chat_export", tags={"threadembed/changed": ",".join(changed)[:200]}
    )
