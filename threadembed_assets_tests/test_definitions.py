import shutil

import dagster as dg

from threadembed_assets import versions
from threadembed_assets.definitions import ASSETS, defs
from threadembed_assets.sources.registry import SOURCES
from threadembed_assets.warehouse.assets import source_partitions

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
    assert {f"raw_{source}" for source in DESIGN_SOURCES} <= keys


def test_registry_covers_every_source_of_the_design():
    assert set(SOURCES) == DESIGN_SOURCES
    assert set(source_partitions.get_partition_keys()) == DESIGN_SOURCES
    for spec in SOURCES.values():
        assert spec.priority in {"P0", "P1", "P2"}
        assert spec.platform and spec.upstream and spec.license


def test_asset_groups():
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups["messages"] == groups["conversations"] == "warehouse"
    assert all(groups[f"raw_{source}"] == "raw" for source in DESIGN_SOURCES)
    assert groups["chat_ranker"] == groups["hard_negative_model"] == "training"
    upstream_of_ranker = {key.to_user_string() for key in graph.get(dg.AssetKey("chat_ranker")).parent_keys}
    assert "hard_negative_model" in upstream_of_ranker
    assert "chat_ranker" in {key.to_user_string() for key in graph.get(dg.AssetKey("benchmark_scores")).parent_keys}


def test_every_asset_carries_its_stage_code_version_which_follows_that_stage_code(tmp_path, monkeypatch):
    for asset in ASSETS:
        for key in asset.keys:
            assert asset.code_versions_by_key[key], f"{key.to_user_string()} has no code_version"
    assert {asset.code_versions_by_key[asset.key] for asset in ASSETS if asset.key.path[0] == "messages"} == {
        versions.code_version("warehouse")
    }
    for stage in ("pairs", "warehouse"):
        shutil.copytree(versions.PACKAGE / stage, tmp_path / stage)
    monkeypatch.setattr(versions, "PACKAGE", tmp_path)
    before = {stage: versions.code_version.__wrapped__(stage) for stage in ("pairs", "warehouse")}
    build = tmp_path / "pairs" / "build.py"
    build.write_text(build.read_text() + "\n# a change\n")
    after = {stage: versions.code_version.__wrapped__(stage) for stage in ("pairs", "warehouse")}
    assert after["pairs"] != before["pairs"] and after["warehouse"] == before["warehouse"]
