"""Hugging Face hub datasets through `datasets.load_dataset`, or the same schema from local files."""

import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from threadembed_assets.sources.config import SourceConfigError

_LOCAL_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}
_TRUE = {"1", "true", "yes", "on"}


class HubUnavailableError(RuntimeError):
    """The hub cannot be reached (offline mode, or no network) and no local files were configured."""


# Network failures a second try may not meet: a dropped or refused connection, a timeout, a cut stream, and the
# HTTP answers that say "later" (by the class names of the HTTP clients under `datasets` and `huggingface_hub`).
_TRANSIENT_TYPES = (ConnectionError, TimeoutError, socket.gaierror)
_TRANSIENT_NAMES = {"TransportError", "ChunkedEncodingError", "IncompleteRead", "ProtocolError", "ReadTimeout"}
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


def is_transient(exc: BaseException) -> bool:
    """True when `exc`, or an error it was raised from, is a network failure that a retry can get past.

    A loader's own bug (a KeyError on a changed schema, a ValueError) and an HTTP answer that will not change (404,
    401) are not: retrying them only delays the traceback.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None) or getattr(exc, "status_code", None)
        if isinstance(status, int):
            return status in _TRANSIENT_STATUS
        if isinstance(exc, _TRANSIENT_TYPES) or _TRANSIENT_NAMES & {kind.__name__ for kind in type(exc).__mro__}:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def hub_unavailable_message(source: str, upstream: str, reason: str) -> str:
    """What to do when a hub source cannot load: name it and say how to use local files."""
    return (
        f"Source '{source}' loads {upstream} from the Hugging Face hub, which is unavailable ({reason}). "
        f"Download it where the hub is reachable and point partition {source} of raw_messages at the files in the "
        f"upstream schema: run config `ops: raw_messages: config: path: /path/to/files` (a file or a folder of "
        f"{'/'.join(sorted(set(_LOCAL_BUILDERS)))} files)."
    )


def ensure_hub_reachable(source: str, upstream: str, timeout_s: float = 3.0) -> None:
    """Fail at once, with a message that says what to do, when the hub cannot be reached."""
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").lower() in _TRUE:
            raise HubUnavailableError(hub_unavailable_message(source, upstream, f"{variable}=1"))
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as exc:
        raise HubUnavailableError(hub_unavailable_message(source, upstream, f"{host} not reachable: {exc}")) from exc


def local_data_files(path: str) -> tuple[str, list[str]]:
    """The `datasets` builder and files for a local file or folder in the upstream schema."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.suffix in _LOCAL_BUILDERS) if root.is_dir() else [root]
    if not files or not all(p.exists() for p in files):
        raise SourceConfigError(f"No data files at {path} (expected {', '.join(sorted(_LOCAL_BUILDERS))} files)")
    builders = {_LOCAL_BUILDERS.get(p.suffix) for p in files}
    if len(builders) != 1 or None in builders:
        raise SourceConfigError(f"Files at {path} must share one format of {', '.join(sorted(_LOCAL_BUILDERS))}")
    return builders.pop(), [str(p) for p in files]


def iter_hub_records(
    source: str,
    upstream: str,
    *,
    name: str | None = None,
    split: str = "train",
    path: str | None = None,
    revision: str | None = None,
    data_files: dict | None = None,
) -> Iterable[dict]:
    """Stream the records of a hub dataset (or of local files in its schema when `path` is set)."""
    import datasets

    if path:
        builder, files = local_data_files(path)
        return datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
    ensure_hub_reachable(source, upstream)
    return datasets.load_dataset(upstream, name, split=split, revision=revision, data_files=data_files, streaming=True)


def limited(rows: Iterable[dict], max_rows: int | None) -> Iterator[dict]:
    """At most `max_rows` rows (all when None)."""
    for count, row in enumerate(rows):
        if max_rows is not None and count >= max_rows:
            return
        yield row
