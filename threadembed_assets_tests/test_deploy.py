"""Deployment: the compose file, and a Dagster instance on a real PostgreSQL server whose daemon ticks a schedule."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml

from threadembed_assets_tests.conftest import free_port, materialize_source, need_system, query

DOCKER = Path(__file__).resolve().parents[1] / "docker"
PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
BIN = Path(sys.executable).parent


def test_compose_file_wires_postgres_user_code_webserver_and_daemon():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"postgres", "user_code", "webserver", "daemon"}
    assert compose["services"]["user_code"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == [
        "gpu"
    ]
    assert {"data:/data", "models:/models"} <= set(compose["services"]["daemon"]["volumes"])
    instance = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert instance["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert instance["concurrency"]["pools"]["default_limit"] == 1
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        compose_config = ["docker", "compose", "-f", str(DOCKER / "docker-compose.yml"), "config", "-q"]
        subprocess.run(compose_config, check=True, env={**os.environ, "DAGSTER_POSTGRES_PASSWORD": "s3cret"})


def test_the_deployment_publishes_the_ui_on_loopback_and_has_no_default_password():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    published = compose["services"]["webserver"]["ports"]
    assert published == ["${DAGSTER_UI_BIND:-127.0.0.1}:3000:3000"]  # host address first: loopback unless told
    assert all("ports" not in service for name, service in compose["services"].items() if name != "webserver")
    passwords = [
        compose["x-dagster-env"]["DAGSTER_POSTGRES_PASSWORD"],
        compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"],
    ]
    # `${VAR:?message}`: compose refuses to start without the variable instead of falling back to a known password.
    assert all(value.startswith("${DAGSTER_POSTGRES_PASSWORD:?") for value in passwords), passwords


def test_make_gives_the_local_instance_its_dagster_yaml_with_telemetry_off(tmp_path, caplog):
    home = tmp_path / "home"
    root = DOCKER.parent
    subprocess.run(["make", "-s", "-C", str(root), str(home / "dagster.yaml"), f"DAGSTER_HOME={home}"], check=True)
    with caplog.at_level("WARNING", logger="dagster"):
        instance = dg.DagsterInstance.from_config(str(home))
    assert not instance.telemetry_enabled
    assert not [r for r in caplog.records if "No dagster instance configuration file" in r.getMessage()]
    instance.dispose()


def count(port: int, sql: str) -> int:
    """One number from the Dagster database."""
    with psycopg2.connect(host="127.0.0.1", port=port, user="dagster", dbname="dagster") as con, con.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


@pytest.fixture
def postgres():
    """A PostgreSQL server on a temporary data folder and port, stopped after the test."""
    need_system(bool(PG_BINS), "PostgreSQL server binaries (Debian package postgresql)")
    # PostgreSQL refuses to run as root: as root, the server runs as the postgres user in a folder it owns.
    bins, root, port = PG_BINS[-1], Path(tempfile.mkdtemp(prefix="threadembed-pg-")), free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    subprocess.run(
        [*as_postgres, str(bins / "initdb"), "-D", str(root / "data"), "-U", "dagster", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    # The server must not inherit a pipe of ours (the run would wait for it to close): it logs to a file.
    log = str(root / "server.log")
    subprocess.run(
        [*as_postgres, str(bins / "pg_ctl"), "-D", str(root / "data"), "-o", options, "-l", log, "-w", "start"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        subprocess.run(
            [str(bins / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster"], check=True
        )
        yield port
    finally:
        subprocess.run(
            [*as_postgres, str(bins / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "stop"], capture_output=True
        )


@pytest.fixture
def deployment(workdir, warehouse_db, postgres, monkeypatch) -> Path:
    """The deployment's instance (docker/dagster.yaml: PostgreSQL, queued runs, pools) in this test's DAGSTER_HOME,
    and a workspace file for its daemon; returns the workspace file."""
    shutil.copy(DOCKER / "dagster.yaml", workdir / "dagster_home" / "dagster.yaml")
    env = {
        "DAGSTER_POSTGRES_USER": "dagster",
        "DAGSTER_POSTGRES_PASSWORD": "",
        "DAGSTER_POSTGRES_HOST": "127.0.0.1",
        "DAGSTER_POSTGRES_DB": "dagster",
        "DAGSTER_POSTGRES_PORT": str(postgres),
        "THREADEMBED_WAREHOUSE": str(warehouse_db),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    workspace = workdir / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: threadembed_assets.definitions\n"
        f"      working_directory: {Path(__file__).resolve().parents[1]}\n"
    )
    return workspace


@contextmanager
def running_daemon(workspace: Path):
    """`dagster-daemon run` on the workspace (schedules, sensors, the run queue), stopped on exit."""
    log_path = workspace.parent / "daemon.log"
    with log_path.open("w") as log:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server joins its process group, and goes with it
        )
        try:
            yield daemon
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
            with suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)  # a code server the daemon left behind


def test_postgres_instance_materializes_sample_and_the_daemon_ticks_a_schedule(
    deployment, warehouse_db, postgres, monkeypatch
):
    monkeypatch.setenv("THREADEMBED_DISCORD_REFRESH", "on")
    monkeypatch.setenv("THREADEMBED_DISCORD_REFRESH_CRON", "* * * * *")
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = materialize_source("sample", warehouse_db, instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id).is_success
    assert count(postgres, "SELECT count(*) FROM runs") == 1

    with running_daemon(deployment) as daemon:
        ticks, deadline = 0, time.monotonic() + 150
        while ticks == 0 and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(2)
            ticks = count(postgres, "SELECT count(*) FROM job_ticks WHERE tick_body LIKE '%discord_sample_refresh%'")
        assert ticks >= 1, f"the daemon evaluated no tick: {(deployment.parent / 'daemon.log').read_text()[-2000:]}"


WAREHOUSE_WRITERS = [
    "messages",
    "conversations",
    "conversation_summaries",
    "thread_pairs",
    "query_response_pairs",
    "temporal_pairs",
    "summary_pairs",
]


def step_windows(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """(start, end) wall-clock time of every step of a run, from its event log."""
    starts, ends = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = record.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            ends[event.step_key] = record.timestamp
    return {step: (starts[step], ends[step]) for step in starts if step in ends}


def test_two_concurrent_runs_queue_their_warehouse_writes_and_both_keep_their_rows(deployment, warehouse_db):
    """Two runs of different sources, launched at once through the deployment's run queue and daemon: every step
    that writes the warehouse takes the `warehouse` pool's one slot in turn, both runs succeed and each source's rows
    are what its run reported. Each run executes in one process, so its writing steps follow each other closely and
    the two runs' writes coincide unless the pool keeps them apart."""
    sources = ["sample", "ubuntu_irc"]
    # The sample's writes (30,000 messages) last longer than the gap between the two runs' starts.
    ops_config = {"sample": {"raw_messages": {"config": {"n_messages": 30_000}}}, "ubuntu_irc": {}}
    for source in sources:
        steps = ",".join(["raw_messages", *WAREHOUSE_WRITERS])
        subprocess.run(
            [str(BIN / "dagster"), "job", "launch", "-w", str(deployment), "-j", "__ASSET_JOB", "-o", steps]
            + ["--tags", json.dumps({"dagster/partition": source})]
            + ["--config-json", json.dumps({"execution": {"config": {"in_process": {}}}, "ops": ops_config[source]})],
            check=True,
            capture_output=True,
        )
    with dg.DagsterInstance.get() as instance, running_daemon(deployment) as daemon:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and daemon.poll() is None:
            runs = instance.get_runs()
            if len(runs) == 2 and all(run.is_finished for run in runs):
                break
            time.sleep(1)
        runs = instance.get_runs()
        log = (deployment.parent / "daemon.log").read_text()[-3000:]
        assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 2, log
        windows = {run.tags["dagster/partition"]: step_windows(instance, run.run_id) for run in runs}
        reported = {}
        for source in sources:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("messages"), asset_partitions=[source]), limit=1
            ).records
            reported[source] = records[0].asset_materialization.metadata["dagster/row_count"].value
    # The two runs ran at the same time, but never both inside a warehouse-writing step.
    first, second = (windows[source] for source in sources)
    spans = [(min(s for s, _ in w.values()), max(e for _, e in w.values())) for w in (first, second)]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], f"the runs did not overlap: {spans}"
    for step_a, (start_a, end_a) in first.items():
        for step_b, (start_b, end_b) in second.items():
            if step_a in WAREHOUSE_WRITERS and step_b in WAREHOUSE_WRITERS:
                assert end_a <= start_b or end_b <= start_a, f"{step_a} and {step_b} wrote the warehouse at once"
    for source in sources:
        rows = query(warehouse_db, "SELECT count(*) FROM messages WHERE source = $s", {"s": source})[0][0]
        assert rows == reported[source] > 0
        pairs = query(warehouse_db, "SELECT count(*) FROM thread_pairs WHERE source = $s", {"s": source})[0][0]
        assert pairs > 0
