import shutil

import dagster as dg

from threadembed_assets import versions
from threadembed_assets.definitions import ASSETS, defs
from threadembed_assets.sources.registry import SOURCES, source_partitions

DESIGN_SOURCES = {
    "discord_dialogues",
    "irc_disentangle",
    "discord_unveiled",
    "slack_disentangled",
    "flyte_slack",
    "slack_long_responses",
    "clojurians",
    "topical_chat",
    "ultrachat",
    "chat_export",
    "sample",
    "ubuntu_irc",  # the shipped slice of real IRC chat, the offline default of `make run`
}


def test_definitions_load_and_validate():
    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"messages", "conversations"} <= keys
    assert "raw_messages" in keys


def test_registry_covers_every_source_of_the_design():
    assert set(SOURCES) == DESIGN_SOURCES
    assert set(source_partitions.get_partition_keys()) == DESIGN_SOURCES
    graph = defs.resolve_asset_graph()
    for key in ("raw_messages", "messages", "conversations"):
        assert graph.get(dg.AssetKey(key)).partitions_def == source_partitions
    for spec in SOURCES.values():
        assert spec.priority in {"P0", "P1", "P2"}
        assert spec.platform and spec.upstream and spec.license


def test_asset_groups():
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups["messages"] == groups["conversations"] == "warehouse"
    assert groups["raw_messages"] == "raw" and {k for k, group in groups.items() if group == "raw"} == {"raw_messages"}
    assert groups["chat_ranker"] == groups["hard_negative_model"] == "training"
    upstream_of_ranker = {key.to_user_string() for key in graph.get(dg.AssetKey("chat_ranker")).parent_keys}
    assert "hard_negative_model" in upstream_of_ranker
    assert "chat_ranker" in {key.to_user_string() for key in graph.get(dg.AssetKey("benchmark_scores")).parent_keys}


def test_every_asset_carries_its_stage_code_version_which_follows_that_stage_code(tmp_path, monkeypatch):
    for asset in ASSETS:
        for key in asset.keys:
            assert asset.code_versions_by_key[key], f"{key.to_user_string()} has no code_version"
    assert {asset.code_versions_by_key[asset.key] for asset in ASSETS if asset.key.path[0] == "messages"} == {
        versions.code_version("warehouse", "chat")  # the warehouse links messages with the linker in chat/
    }
    for stage in ("pairs", "warehouse", "chat"):
        shutil.copytree(versions.PACKAGE / stage, tmp_path / stage)
    monkeypatch.setattr(versions, "PACKAGE", tmp_path)

    def stage_versions() -> dict[str, str]:
        return {
            "pairs": versions.code_version.__wrapped__("pairs"),
            "warehouse": versions.code_version.__wrapped__("warehouse", "chat"),
        }

    before = stage_versions()
    build = tmp_path / "pairs" / "build.py"
    build.write_text(build.read_text() + "\n# a change\n")
    after = stage_versions()
    assert after["pairs"] != before["pairs"] and after["warehouse"] == before["warehouse"]
    linker = tmp_path / "chat" / "linker.py"  # the library a stage runs counts as its code
    linker.write_text(linker.read_text() + "\n# a change\n")
    assert stage_versions()["warehouse"] != after["warehouse"] and stage_versions()["pairs"] == after["pairs"]


def definitions_outline(definitions: dg.Definitions) -> dict:
    """What a reviewer should see change: each asset's group, partitions, pool and upstreams, each check's target and
    blocking, each job's selection, each schedule and sensor. Code versions are left out: they follow every edit."""
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def and (
            "sources" if node.partitions_def == source_partitions else node.partitions_def.get_partition_keys()
        )
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": partitions,
            "pool": sorted(node.pools or []),
            "upstream": sorted(parent.to_user_string() for parent in node.parent_keys),
            "kinds": sorted(node.kinds),
        }
    checks = {
        f"{check.asset_key.to_user_string()}:{check.name}": {"blocking": check.blocking}
        for check in sorted(graph.asset_check_keys, key=str)
        for check in [graph.get_check_spec(check)]
    }
    jobs = {
        job.name: sorted(
            key.to_user_string() for key in definitions.resolve_job_def(job.name).asset_layer.selected_asset_keys
        )
        for job in definitions.jobs
    }
    schedules = {s.name: {"cron": s.cron_schedule, "job": s.job_name} for s in definitions.schedules}
    sensors = {s.name: {"job": s.job_name, "interval_s": s.minimum_interval_seconds} for s in definitions.sensors}
    return {
        "sources": source_partitions.get_partition_keys(),
        "assets": assets,
        "checks": checks,
        "jobs": jobs,
        "schedules": schedules,
        "sensors": sensors,
    }


def test_definitions_match_their_reviewed_snapshot(snapshot):
    """An accidental change to the graph shows here; an intended one is accepted with `pytest --snapshot-update`."""
    assert definitions_outline(defs) == snapshot
