"""Connections to the warehouse file.

DuckDB lets one process write a database file, or several processes read it, never both at once. Every asset
opens the warehouse through `connect`: read-only where it only reads, for as short a time as it can (never while
encoding or waiting on an LLM), and waiting for another process's lock to go instead of failing at once. Dagster's
`warehouse` pool (limit 1 in the deployment) queues the writing steps, so the wait is short.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from dagster_duckdb import DuckDBResource

WAREHOUSE_POOL = "warehouse"
LOCK_WAIT_SECONDS = 900.0


class WarehouseLockTimeout(TimeoutError):
    """Another process held the warehouse longer than a step waits for it."""


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def _is_other_configuration(exc: duckdb.Error) -> bool:
    return isinstance(exc, duckdb.ConnectionException) and "different configuration" in str(exc)


@contextmanager
def connect(
    warehouse: DuckDBResource | str | Path, *, read_only: bool = False, wait_seconds: float = LOCK_WAIT_SECONDS
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the warehouse (the resource, or its file's path), closed on exit (also on an error).

    It waits up to `wait_seconds` while another process holds a conflicting lock (a writer, or readers when this
    one writes), polling with a growing interval. A reader in a process that already holds the file open for
    writing shares that database (DuckDB allows one configuration per file and process). A writer creates the
    file's folder on first use; a reader of a missing file is told which asset makes it.
    """
    resource = warehouse if isinstance(warehouse, DuckDBResource) else DuckDBResource(database=str(warehouse))
    path = Path(resource.database)
    if read_only and not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}: materialize `messages` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"custom_user_agent": "dagster", **resource.connection_config}
    deadline, delay = time.monotonic() + wait_seconds, 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=config)
            break
        except duckdb.Error as exc:
            if read_only and _is_other_configuration(exc):
                read_only = False
                continue
            if not _is_lock_conflict(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise WarehouseLockTimeout(
                    f"the warehouse {path} stayed locked by another process for {wait_seconds:.0f} s: {exc}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    try:
        yield con
    finally:
        con.close()
