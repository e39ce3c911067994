"""Slack: workspace exports (folder or zip of channel/day JSON) and the disentangled Slack XML corpus."""

import json
import lzma
import zipfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree

from threadembed_assets.sources.schema import as_object, error_row, parse_json

# Message subtypes that carry no conversation (joins, topic changes, ...); they are quarantined, not mixed in.
_SYSTEM_SUBTYPES = {
    "channel_join",
    "channel_leave",
    "channel_topic",
    "channel_purpose",
    "channel_name",
    "channel_archive",
    "channel_unarchive",
    "group_join",
    "group_leave",
    "pinned_item",
    "unpinned_item",
    "bot_add",
    "bot_remove",
    "reminder_add",
    "tombstone",
}
# What a damaged zip raises besides BadZipFile: an unsupported method, an encrypted entry, a corrupt stream,
# a bad offset, a name that is not the UTF-8 its flag claims.
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    UnicodeDecodeError,
)


def slack_ts_to_iso(ts: str | float | None) -> str | None:
    """Slack's `"1503435956.000247"` epoch string as an ISO-8601 UTC timestamp."""
    if ts in (None, ""):
        return None
    try:
        return datetime.fromtimestamp(float(ts), tz=UTC).isoformat()
    except (TypeError, ValueError, OverflowError):
        return str(ts)  # left as is: the warehouse quarantines it as an unparseable time


def slack_messages(messages: list, channel: str, users: dict[str, str], source: str, origin: str) -> Iterator[dict]:
    """Rows from one channel-day list of Slack export messages; threads become conversations."""
    if not isinstance(messages, list):
        yield error_row(source, "slack", origin, 0, "malformed_export: expected a list of messages")
        return
    for seq, msg in enumerate(messages, start=1):
        if not isinstance(msg, dict):
            yield error_row(source, "slack", origin, seq, "malformed_export: message is not an object")
            continue
        subtype = msg.get("subtype")
        if isinstance(subtype, str) and subtype in _SYSTEM_SUBTYPES:
            yield error_row(source, "slack", origin, seq, f"system_message: {subtype}", msg.get("text") or "")
            continue
        ts, thread_ts = msg.get("ts"), msg.get("thread_ts")
        profile = as_object(msg.get("user_profile"))
        user = msg.get("user") or msg.get("bot_id") or msg.get("username")
        known = users.get(user) if isinstance(user, str) else None
        author = profile.get("display_name") or profile.get("real_name") or known or msg.get("username") or user
        yield {
            "source": source,
            "platform": "slack",
            "channel": channel,
            "message_id": f"{channel}:{ts}",
            "conversation_id": f"{channel}:{thread_ts}" if thread_ts else None,
            "reply_to": f"{channel}:{thread_ts}" if thread_ts and thread_ts != ts else None,
            "timestamp": slack_ts_to_iso(ts),
            "author": author,
            "text": msg.get("text"),
            "origin": origin,
            "seq": seq,
        }


def _users_map(users: object) -> dict[str, str]:
    if not isinstance(users, list):
        return {}
    return {
        u["id"]: as_object(u.get("profile")).get("display_name") or u.get("real_name") or u.get("name") or u["id"]
        for u in users
        if isinstance(u, dict) and isinstance(u.get("id"), str)
    }


def _parse_json(data: bytes, source: str, origin: str) -> tuple[object, dict | None]:
    try:
        return parse_json(data.decode("utf-8")), None
    except UnicodeDecodeError as exc:
        return None, error_row(source, "slack", origin, 0, f"invalid_utf8: {exc.reason}")
    except json.JSONDecodeError as exc:
        return None, error_row(source, "slack", origin, 0, f"malformed_json: {exc.msg}")


def is_slack_export_dir(folder: Path) -> bool:
    """A Slack export folder: `channels.json`/`users.json` at the top, or channel folders of day files."""
    if (folder / "channels.json").exists() or (folder / "users.json").exists():
        return True
    return any(p.suffix == ".json" for p in folder.glob("*/*.json"))


def read_slack_export_dir(folder: Path, source: str) -> Iterator[dict]:
    """Rows of a Slack workspace export folder: `<channel>/<YYYY-MM-DD>.json` files."""
    users: dict[str, str] = {}
    users_file = folder / "users.json"
    if users_file.is_file():
        parsed, error = _parse_json(users_file.read_bytes(), source, f"{folder.name}/users.json")
        if error:
            yield error
        users = _users_map(parsed)
    for day_file in sorted(p for p in folder.glob("*/*.json") if p.is_file()):
        origin = f"{folder.name}/{day_file.parent.name}/{day_file.name}"
        messages, error = _parse_json(day_file.read_bytes(), source, origin)
        if error:
            yield error
            continue
        yield from slack_messages(messages, day_file.parent.name, users, source, origin)


def _unsafe_member(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":")


def read_slack_export_zip(archive: Path, source: str, max_bytes: int) -> Iterator[dict]:
    """Rows of a zipped Slack export, read in memory: nothing is extracted to disk.

    An entry whose name points outside the archive (`../`, absolute) is refused with a reason; an archive whose
    entries expand past `max_bytes` is refused as a whole (zip bomb guard), checked on the bytes actually read.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except _ARCHIVE_ERRORS as exc:
        yield error_row(source, "slack", archive.name, 0, f"malformed_archive: {exc}")
        return
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            yield error_row(
                source,
                "slack",
                archive.name,
                0,
                f"archive_too_large: expands to {declared} bytes, limit {max_bytes}",
            )
            return
        users: dict[str, str] = {}
        days = []
        budget = max_bytes
        for seq, member in enumerate(members, start=1):
            origin = f"{archive.name}:{member.filename}"
            if _unsafe_member(member.filename):
                yield error_row(source, "slack", origin, seq, "unsafe_archive_entry: path leaves the archive")
                continue
            try:
                with zf.open(member) as handle:
                    data = handle.read(budget + 1)
            except _ARCHIVE_ERRORS as exc:
                yield error_row(source, "slack", origin, seq, f"malformed_archive: {exc}")
                continue
            budget -= len(data)
            if budget < 0:
                yield error_row(
                    source, "slack", archive.name, seq, f"archive_too_large: expands past limit {max_bytes}"
                )
                return
            parts = PurePosixPath(member.filename).parts  # none for a name such as `.`
            if parts and parts[-1] == "users.json":
                parsed, error = _parse_json(data, source, origin)
                if error:
                    yield error
                users = _users_map(parsed)
            elif len(parts) >= 2 and parts[-1].endswith(".json") and parts[-1] not in {"channels.json"}:
                days.append((origin, parts[-2], data))
        for origin, channel, data in days:
            messages, error = _parse_json(data, source, origin)
            if error:
                yield error
                continue
            yield from slack_messages(messages, channel, users, source, origin)


def is_slack_export_zip(archive: Path) -> bool:
    """A zip whose entries include channel/day JSON files or `channels.json`."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    except _ARCHIVE_ERRORS:
        return False
    return any(n.endswith("channels.json") or n.count("/") >= 1 and n.endswith(".json") for n in names)


def read_disentangled_xml(path: Path, source: str) -> Iterator[dict]:
    """Rows of one file of the disentangled Slack corpus: `<message conversation_id=..><ts/><user/><text/>`."""
    channel = path.stem
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        yield error_row(source, "slack", path.name, 0, f"malformed_xml: {exc}")
        return
    for seq, node in enumerate(root.iter("message"), start=1):
        conversation = node.get("conversation_id")
        ts = (node.findtext("ts") or "").strip()
        yield {
            "source": source,
            "platform": "slack",
            "channel": channel,
            "message_id": f"{channel}:{seq}",
            "conversation_id": f"{channel}:{conversation}" if conversation else None,
            "reply_to": None,
            "timestamp": ts or None,
            "author": (node.findtext("user") or "").strip() or None,
            "text": node.findtext("text"),
            "origin": path.name,
            "seq": seq,
        }
