"""The Dagster UI in a real browser: `dagster dev` on 127.0.0.1, headless Chromium driven by Playwright."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import psutil
import pytest

from threadembed_assets_tests.conftest import free_port, materialize_source, need_system

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
GROUPS = ["raw", "warehouse", "pairs", "summaries", "training", "benchmark"]


@pytest.fixture
def dagster_ui(workdir, warehouse_db, monkeypatch):
    """`dagster dev` on a free port with this test's DAGSTER_HOME and data folders; stopped afterwards."""
    need_system(CHROMIUM.exists(), "Chromium (Debian package chromium)")
    monkeypatch.setenv("THREADEMBED_WAREHOUSE", str(warehouse_db))
    with dg.DagsterInstance.get() as instance:  # the sample's raw cache, so that `messages` can be launched alone
        assert materialize_source(
            "sample", warehouse_db, {"n_messages": 500}, only=["raw_messages"], instance=instance
        ).success
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(root / "workspace.yaml"),
        ],
        cwd=root,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/server_info", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(1)
        yield url
    finally:
        stop_process_tree(process)


def stop_process_tree(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM `dagster dev` and every process it started; whatever still runs after `grace_s` (a code server that
    is still loading the code location outlasts SIGTERM, and its gRPC server may sit in a session of its own) is
    killed, so that no test leaves servers behind."""
    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    os.killpg(process.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    process.wait(timeout=grace_s)


def dismiss_welcome(page) -> None:
    """A fresh DAGSTER_HOME greets with a "Join the Dagster community" dialog; skip it when it shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    skip = page.get_by_role("button", name="Skip").first
    with contextlib.suppress(PlaywrightTimeout):
        skip.wait_for(state="visible", timeout=5_000)
        skip.click()


def test_asset_graph_shows_the_groups_and_a_partition_materializes_from_the_ui(dagster_ui, warehouse_db):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{dagster_ui}/asset-groups", wait_until="networkidle")
        dismiss_welcome(page)
        for group in GROUPS:
            expect(page.get_by_text(group, exact=True).first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "asset-graph.png"))

        page.goto(f"{dagster_ui}/assets/messages", wait_until="networkidle")
        dismiss_welcome(page)
        page.get_by_role("button", name="Materialize…").first.click()
        # The partition dialog opens at once: `messages` depends on its own partition of `raw_messages` only, so the
        # UI does not ask to confirm launching without the other sources' raw data.
        pick_partition = page.get_by_text("Select a partition or create one").first
        expect(pick_partition).to_be_visible(timeout=30_000)
        expect(page.get_by_role("button", name="Confirm")).to_have_count(0)
        pick_partition.click()
        sample_item = page.locator("label", has=page.locator("[title='sample']")).first
        sample_item.click()
        # After a pick the partition dropdown either closes by itself or stays open over the launch button: give it
        # a moment to close, and close it by its toggle only if it is still open (a click would reopen a closed one).
        dropdown = page.get_by_placeholder("Filter partitions")
        with contextlib.suppress(PlaywrightTimeout):
            dropdown.wait_for(state="hidden", timeout=3_000)
        if dropdown.is_visible():
            page.locator("[class*='tagSelectorContainer']").first.click()
        expect(dropdown).to_be_hidden()
        expect(page.get_by_text("sample", exact=True).first).to_be_visible()  # the picked partition's tag
        page.get_by_role("button", name="Launch 1 run").click()
        deadline = time.monotonic() + 120
        succeeded = False
        while time.monotonic() < deadline and not succeeded:
            time.sleep(2)
            with dg.DagsterInstance.get() as instance:
                runs = instance.get_runs()
                succeeded = any(r.is_success and r.tags.get("dagster/partition") == "sample" for r in runs)
        page.screenshot(path=str(ARTIFACTS / "materialize-messages.png"))
        browser.close()
    assert succeeded, "the run launched from the UI did not succeed"
