"""Shared fixtures: offline hubs, a private data folder per test, the shared IRC data, Dagster runs."""

import os
import socket
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster_duckdb import DuckDBResource

from threadembed_assets.settings import exit_quietly

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def raw_rows(pieces, folder: Path) -> list[dict]:
    """The rows a loader's pieces give once written to a raw cache folder, in cache order."""
    from threadembed_assets.sources.raw_cache import PART_GLOB, write_raw_cache

    write_raw_cache(pieces, folder / "raw")
    with duckdb.connect() as con:
        table = con.sql(
            "SELECT * EXCLUDE (filename, file_row_number, seq), coalesce(seq, file_row_number + 1) AS seq "
            "FROM read_parquet($glob, filename = true, "
            "file_row_number = true) ORDER BY filename, file_row_number",
            params={"glob": str(folder / "raw" / PART_GLOB)},
        ).to_arrow_table()
    return table.to_pylist()


def need_shared(name: str, corpus: str = "irc") -> Path:
    """A file of ../shared/data/<corpus>; skipped without it on a user's machine, a failure under CI=true."""
    path = SHARED_DATA / corpus / name
    if not path.exists():
        message = f"{path} not found: real-data tests need ../shared beside the checkout"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def need_system(present: bool, what: str) -> None:
    """Skip without a system service on a user's machine; under CI=true its absence is a failure."""
    if present:
        return
    message = f"{what} is not installed here (.ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Data, models, imports and DAGSTER_HOME folders of this test alone."""
    for variable, sub in [
        ("THREADEMBED_DATA_DIR", "data"),
        ("THREADEMBED_MODELS_DIR", "models"),
        ("THREADEMBED_IMPORTS_DIR", "data/imports"),
        ("DAGSTER_HOME", "dagster_home"),
    ]:
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(variable, str(tmp_path / sub))
    monkeypatch.delenv("THREADEMBED_WAREHOUSE", raising=False)
    return tmp_path


@pytest.fixture
def warehouse_db(workdir) -> Path:
    return workdir / "data" / "warehouse.duckdb"


def resources_for(warehouse: Path, **overrides) -> dict:
    """The code location's resources, on this test's warehouse file and folders."""
    from threadembed_assets.definitions import build_resources

    return {**build_resources(), "warehouse": DuckDBResource(database=str(warehouse)), **overrides}


def materialize_source(
    source: str,
    warehouse: Path,
    raw_config: dict | None = None,
    load_config: dict | None = None,
    *,
    with_pairs: bool = False,
    instance: dg.DagsterInstance | None = None,
    extra_assets: list | None = None,
    run_config: dict | None = None,
    llm=None,
    only: list[str] | None = None,
    also: list[str] | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize raw_messages, messages and conversations (and the summaries and pair tables with their checks)
    for partition `source` in one real run; `only` names the assets instead, `also` adds some."""
    from threadembed_assets.definitions import ASSET_CHECKS, ASSETS
    from threadembed_assets.pairs.assets import PAIR_ASSETS
    from threadembed_assets.summaries.client import LLMResource

    names = only or ["raw_messages", "messages", "conversations"]
    if with_pairs:
        names += ["conversation_summaries", *(asset.key.to_user_string() for asset in PAIR_ASSETS)]
    extra = extra_assets or []
    names += [asset.key.to_user_string() for asset in extra] + (also or [])
    ops = {}
    if "raw_messages" in names:
        ops["raw_messages"] = {"config": raw_config or {}}
    if "messages" in names:
        ops["messages"] = {"config": load_config or {}}
    return dg.materialize(
        [*ASSETS, *ASSET_CHECKS, *extra],
        selection=dg.AssetSelection.assets(*names),
        partition_key=source
        if any(a.partitions_def for a in [*ASSETS, *extra] if a.key.to_user_string() in names)
        else None,
        resources=resources_for(warehouse, llm=llm or LLMResource()),
        run_config={"ops": {**ops, **(run_config or {})}},
        instance=instance,
        raise_on_error=False,
    )


def query(warehouse: Path, sql: str, params: dict | None = None) -> list[tuple]:
    """Rows of a read-only query on the warehouse file."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(sql, params or {}).fetchall()


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process once pytest has reported, without the interpreter's teardown, whose DuckDB bindings
    print dozens of "leaked" lines under the summary (as the command lines do, see `exit_quietly`)."""
    if _EXIT_STATUS in config.stash:
        exit_quietly(config.stash[_EXIT_STATUS])
