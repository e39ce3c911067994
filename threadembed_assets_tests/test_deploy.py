"""Deployment: the compose file, and a Dagster instance on a real PostgreSQL server whose daemon ticks a schedule."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml

from threadembed_assets_tests.conftest import free_port, materialize_source, need_system

DOCKER = Path(__file__).resolve().parents[1] / "docker"
PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


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
        subprocess.run(["docker", "compose", "-f", str(DOCKER / "docker-compose.yml"), "config", "-q"], check=True)


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


def test_postgres_instance_materializes_sample_and_the_daemon_ticks_a_schedule(
    workdir, warehouse_db, postgres, monkeypatch
):
    home = workdir / "dagster_home"
    shutil.copy(DOCKER / "dagster.yaml", home / "dagster.yaml")
    env = {
        "DAGSTER_POSTGRES_USER": "dagster",
        "DAGSTER_POSTGRES_PASSWORD": "",
        "DAGSTER_POSTGRES_HOST": "127.0.0.1",
        "DAGSTER_POSTGRES_DB": "dagster",
        "DAGSTER_POSTGRES_PORT": str(postgres),
        "THREADEMBED_DISCORD_REFRESH": "on",
        "THREADEMBED_DISCORD_REFRESH_CRON": "* * * * *",
        "THREADEMBED_WAREHOUSE": str(warehouse_db),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = materialize_source("sample", warehouse_db, instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id).is_success
    assert count(postgres, "SELECT count(*) FROM runs") == 1

    workspace = workdir / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: threadembed_assets.definitions\n"
        f"      working_directory: {Path(__file__).resolve().parents[1]}\n"
    )
    daemon_log = (workdir / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
        env=os.environ.copy(),
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
    )
    try:
        ticks, deadline = 0, time.monotonic() + 150
        while ticks == 0 and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(2)
            ticks = count(postgres, "SELECT count(*) FROM job_ticks WHERE tick_body LIKE '%discord_sample_refresh%'")
        assert ticks >= 1, f"the daemon evaluated no tick: {(workdir / 'daemon.log').read_text()[-2000:]}"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        daemon_log.close()
