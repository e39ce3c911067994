"""Paths the project reads from the environment, with defaults that work from the repository root."""

import os
from pathlib import Path


def data_dir() -> Path:
    """Root of the warehouse, raw caches and imports (`THREADEMBED_DATA_DIR`, default `data`)."""
    return Path(os.environ.get("THREADEMBED_DATA_DIR", "data"))


def models_dir() -> Path:
    """Where checkpoints live (`THREADEMBED_MODELS_DIR`, default `models`)."""
    return Path(os.environ.get("THREADEMBED_MODELS_DIR", "models"))


def imports_dir() -> Path:
    """The user's own chat exports (`THREADEMBED_IMPORTS_DIR`, default `<data dir>/imports`)."""
    return Path(os.environ.get("THREADEMBED_IMPORTS_DIR", str(data_dir() / "imports")))


def warehouse_path() -> Path:
    """The DuckDB warehouse file (`THREADEMBED_WAREHOUSE`, default `<data dir>/warehouse.duckdb`)."""
    return Path(os.environ.get("THREADEMBED_WAREHOUSE", str(data_dir() / "warehouse.duckdb")))


def raw_dir(source: str) -> Path:
    """Parquet cache of one source's raw dataset."""
    return data_dir() / "raw" / source


def exit_quietly(code: int) -> None:
    """End a command-line process once its work is done, without the interpreter's teardown: DuckDB's nanobind
    bindings report every type still referenced at teardown (the Dagster definitions keep its types in annotations)
    as hundreds of "leaked" lines that hide the real output. Output is flushed and logging shut down first; a
    real error has been printed, and the exit code kept, before this runs."""
    import logging
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
