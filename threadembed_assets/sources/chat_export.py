"""`chat_export`: the user's own files under the imports folder, format detected per file."""

from collections.abc import Iterator
from datetime import date
from pathlib import Path

from threadembed_assets.sources.chat_jsonl import chat_jsonl_part, looks_like_chat_jsonl
from threadembed_assets.sources.config import SourceConfigError
from threadembed_assets.sources.discord import is_discord_export, read_discord_export
from threadembed_assets.sources.irc import is_irc_log, read_irc_log
from threadembed_assets.sources.schema import RawPiece, batched, error_row, file_head
from threadembed_assets.sources.slack import (
    is_slack_export_dir,
    is_slack_export_zip,
    read_slack_export_dir,
    read_slack_export_zip,
)

IMPORT_FORMATS = ("chat_jsonl", "slack_export", "discord_export", "irc_log")


class EmptyImportsError(SourceConfigError):
    """The imports folder is missing or holds no files."""


def detect_format(path: Path) -> str | None:
    """The import format of a file or folder, or None when it is none of IMPORT_FORMATS."""
    if path.is_dir():
        return "slack_export" if is_slack_export_dir(path) else None
    if path.suffix.lower() == ".zip":
        return "slack_export" if is_slack_export_zip(path) else None
    head = file_head(path)
    first_line = head.lstrip().split("\n", 1)[0]
    if looks_like_chat_jsonl(first_line):
        return "chat_jsonl"
    if is_discord_export(head):
        return "discord_export"
    if is_irc_log(head):
        return "irc_log"
    return None


def _import_units(folder: Path) -> list[Path]:
    """Files under `folder`, with a Slack export folder taken as one unit; hidden files are skipped."""
    units: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            units.extend([entry] if is_slack_export_dir(entry) else _import_units(entry))
        else:
            units.append(entry)
    return units


def read_imports(
    folder: Path,
    source: str,
    max_archive_bytes: int,
    global_conversation_ids: bool = False,
    irc_log_date: str | None = None,
) -> Iterator[RawPiece]:
    """Raw pieces of every import under `folder`; an unknown file becomes one error row. The ids of chat JSONL files
    (message, reply and gold conversation ids) are namespaced by the file's path under `folder` unless
    `global_conversation_ids`. An IRC log
    with no date in its file name starts on `irc_log_date` (YYYY-MM-DD); without it, its undated lines are
    quarantined."""
    try:
        irc_start_day = date.fromisoformat(irc_log_date) if irc_log_date else None
    except ValueError:
        raise SourceConfigError(f"irc_log_date {irc_log_date!r} is not a date: write it as YYYY-MM-DD.") from None
    if not folder.is_dir():
        raise EmptyImportsError(
            f"Imports folder {folder} does not exist. Create it (or set THREADEMBED_IMPORTS_DIR) and put chat "
            "JSONL, Slack exports, DiscordChatExporter JSON or IRC logs in it."
        )
    units = _import_units(folder)
    if not units:
        raise EmptyImportsError(
            f"Imports folder {folder} holds no files. Put chat JSONL, Slack exports (folder or zip), "
            "DiscordChatExporter JSON or IRC logs in it, or set THREADEMBED_IMPORTS_DIR."
        )
    for unit in units:
        kind = detect_format(unit)
        if kind == "chat_jsonl":
            namespace = None if global_conversation_ids else unit.relative_to(folder).as_posix()
            yield chat_jsonl_part(unit, source, platform=None, namespace=namespace)
        elif kind == "slack_export" and unit.is_dir():
            yield from batched(read_slack_export_dir(unit, source))
        elif kind == "slack_export":
            yield from batched(read_slack_export_zip(unit, source, max_archive_bytes))
        elif kind == "discord_export":
            yield from batched(read_discord_export(unit, source))
        elif kind == "irc_log":
            yield from batched(read_irc_log(unit, source, irc_start_day, root=folder))
        else:
            reason = f"unknown_format: not one of {', '.join(IMPORT_FORMATS)}"
            yield from batched([error_row(source, "unknown", unit.name, 0, reason, file_head(unit, 500))])
