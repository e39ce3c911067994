"""The Discord refresh schedule and the imports sensor, evaluated as Dagster evaluates them."""

import datetime as dt

import dagster as dg

from threadembed_assets.definitions import defs
from threadembed_assets.sources.automation import DATA_LAYERS, discord_sample_refresh, imports_sensor


def tick(when: dt.datetime) -> dg.RunRequest:
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
        return discord_sample_refresh(context)


def test_each_refresh_tick_samples_with_a_new_seed_and_never_trains():
    monday = dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.UTC)
    first, again, next_week = tick(monday), tick(monday), tick(monday + dt.timedelta(days=7))
    assert first.partition_key == "discord_unveiled"
    seed = first.run_config["ops"]["raw_messages"]["config"]["seed"]
    assert seed == again.run_config["ops"]["raw_messages"]["config"]["seed"]
    assert seed != next_week.run_config["ops"]["raw_messages"]["config"]["seed"]
    assert first.tags["threadembed/sample_seed"] == str(seed) and first.run_key != next_week.run_key
    job = defs.resolve_job_def(discord_sample_refresh.job_name)
    selected = {key.to_user_string() for key in job.asset_layer.selected_asset_keys}
    assert selected == {"raw_messages", *DATA_LAYERS}
    assert not selected & {"thread_model", "retrieval_model", "hard_negative_model"}
    assert discord_sample_refresh.cron_schedule == "0 3 * * 1"


def test_imports_sensor_launches_for_new_or_changed_files_only(workdir):
    imports = workdir / "data" / "imports"
    (imports / ".gitkeep").write_text("")
    with dg.instance_for_test() as instance:

        def evaluate(cursor):
            context = dg.build_sensor_context(instance=instance, cursor=cursor)
            return imports_sensor(context), context.cursor

        result, cursor = evaluate(None)
        assert isinstance(result, dg.SkipReason)
        (imports / "team.jsonl").write_text('{"message_id": "1", "text": "hi"}\n')
        first, cursor = evaluate(cursor)
        assert isinstance(first, dg.RunRequest) and first.partition_key == "chat_export"
        assert first.tags["threadembed/changed"] == "team.jsonl" and first.run_key
        result, cursor = evaluate(cursor)
        assert isinstance(result, dg.SkipReason)  # unchanged files launch nothing
        (imports / "team.jsonl").write_text('{"message_id": "1", "text": "hello"}\n')
        changed, cursor = evaluate(cursor)
        assert isinstance(changed, dg.RunRequest) and changed.tags["threadembed/changed"] == "team.jsonl"
        assert changed.run_key and changed.run_key != first.run_key  # a new key, or Dagster skips it as a repeat
