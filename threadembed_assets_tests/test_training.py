"""Training with the smoke preset: real steps, checkpoints, resume after a kill, and blocking checks upstream."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch
from sentence_transformers import SentenceTransformer

from threadembed_assets import run
from threadembed_assets.training.assets import STAGES
from threadembed_assets.training.resources import ComputeResource, ModelStore
from threadembed_assets.training.train import load_model, matryoshka_dims
from threadembed_assets_tests.conftest import materialize_source

STAGE_NAMES = list(STAGES)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The whole pipeline on `sample` with the smoke preset, once for this module."""
    root = tmp_path_factory.mktemp("smoke")
    with pytest.MonkeyPatch.context() as patch:
        for variable, sub in [
            ("THREADEMBED_DATA_DIR", "data"),
            ("THREADEMBED_MODELS_DIR", "models"),
            ("DAGSTER_HOME", "dagster_home"),
        ]:
            (root / sub).mkdir()
            patch.setenv(variable, str(root / sub))
        result = run.run_pipeline("sample", "smoke", dg.DagsterInstance.ephemeral())
        yield result, root


def first_weight(path: str | Path) -> torch.Tensor:
    model = SentenceTransformer(str(path), device="cpu")
    return next(model.parameters()).detach().clone()


def test_all_three_stages_train_real_steps_and_publish_latest(smoke_run):
    result, root = smoke_run
    assert result.success
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    weights = [first_weight(ModelStore().base_model_path())]
    for stage in STAGE_NAMES:
        assert meta[stage]["steps"].value > 0 and meta[stage]["resumed_from_step"].value == 0
        assert meta[stage]["loss_curve"].value.records
        assert set(meta[stage]["dev_after"].data) >= {"mrr@10", "ndcg@10", "accuracy@1"}
        latest = root / "models" / stage / "latest"
        assert latest.is_symlink() and (latest / "README.md").exists()  # sentence-transformers' model card
        assert "dev_thread" in (latest / "README.md").read_text()
        weights.append(first_weight(latest))
    for before, after in zip(weights, weights[1:], strict=False):
        assert not torch.equal(before, after)  # every stage moved the weights
    assert meta["hard_negative_pairs"]["mined"].value > 0


def test_latest_encodes_at_every_matryoshka_dimension(smoke_run):
    _, root = smoke_run
    model = SentenceTransformer(str(root / "models" / "hard_negative_model" / "latest"), device="cpu")
    dims = matryoshka_dims(model.get_embedding_dimension())
    assert dims == [384, 256, 128, 64]
    for dim in dims:
        embeddings = model.encode(["grub vanished after the kernel update", "try update-grub"], truncate_dim=dim)
        assert embeddings.shape == (2, dim)


_KILLABLE_TRAINING = r"""
import dagster as dg
from threadembed_assets.definitions import ASSETS, build_resources
dg.materialize(
    ASSETS, selection=dg.AssetSelection.assets("thread_model"), resources=build_resources(),
    run_config={"ops": {"thread_model": {"config": {
        "preset": "smoke", "max_steps": 40, "save_steps": 4, "max_pairs": 400}}}},
)
"""


def test_a_killed_training_resumes_from_its_last_checkpoint(workdir, warehouse_db):
    assert materialize_source("sample", warehouse_db, {"n_messages": 1500}, with_pairs=True).success
    env = {**os.environ, "THREADEMBED_WAREHOUSE": str(warehouse_db)}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE_TRAINING], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    work = workdir / "models" / "thread_model" / "_work"
    deadline = time.monotonic() + 180
    checkpoints: list[Path] = []
    while time.monotonic() < deadline and child.poll() is None:
        checkpoints = [p for p in work.glob("*/checkpoint-*") if (p / "trainer_state.json").exists()]
        if any(int(p.name.split("-")[1]) >= 8 for p in checkpoints):
            break
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert checkpoints, "no checkpoint was written before the kill"
    assert not (workdir / "models" / "thread_model" / "latest").exists()  # nothing half-published

    relaunch = materialize_source(
        "sample",
        warehouse_db,
        only=["thread_model"],
        run_config={
            "thread_model": {"config": {"preset": "smoke", "max_steps": 40, "save_steps": 4, "max_pairs": 400}}
        },
    )
    assert relaunch.success
    meta = relaunch.get_asset_materialization_events()[0].materialization.metadata
    assert meta["resumed_from_step"].value >= 8
    assert meta["steps"].value == 40  # the global step continued to the budget
    assert SentenceTransformer(str(workdir / "models" / "thread_model" / "latest"), device="cpu")
    assert not list(work.glob("*"))  # the work folder is gone once the checkpoint is published


def test_a_failing_pair_check_stops_training_in_the_same_run(workdir, warehouse_db):
    instance = dg.DagsterInstance.ephemeral()
    smoke = {"thread_model": {"config": {"preset": "smoke"}}}

    def pipeline(n_messages: int) -> dg.ExecuteInProcessResult:
        return materialize_source(
            "sample",
            warehouse_db,
            {"n_messages": n_messages},
            with_pairs=True,
            instance=instance,
            run_config=smoke,
            also=["thread_model"],
        )

    first = pipeline(3000)
    assert first.success
    second = pipeline(1200)  # a refresh that lost most of the data
    assert not second.success
    started = {e.step_key for e in second.all_events if e.event_type_value == "STEP_START"}
    assert "thread_pairs" in started and "thread_model" not in started
    assert any(not e.passed and e.severity == dg.AssetCheckSeverity.ERROR for e in second.get_asset_check_evaluations())


def test_compute_resource_resolves_devices_and_precision():
    assert ComputeResource(device="cpu").resolve_device() == "cpu"
    assert ComputeResource().resolve_precision("cpu") == "fp32"
    with pytest.raises(ValueError, match="needs CUDA"):
        ComputeResource(precision="bf16").resolve_precision("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no cuda device"):
            ComputeResource(device="cuda").resolve_device()


def test_a_hub_model_offline_is_a_clear_error():
    with pytest.raises(ValueError, match="Offline, use a local path"):
        load_model("BAAI/bge-base-en-v1.5", "cpu")


def test_matryoshka_dims_are_clipped_to_the_model():
    assert matryoshka_dims(768) == [768, 512, 256, 128, 64]
    assert matryoshka_dims(384) == [384, 256, 128, 64]
