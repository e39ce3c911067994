"""Discord: DiscordChatExporter JSON exports and Discord Unveiled's API messages."""

import hashlib
import json
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import zstandard

from threadembed_assets.sources.hub import ensure_hub_reachable
from threadembed_assets.sources.schema import as_object, error_row, parse_json

_CONVERSATION_TYPES = {"Default", "Reply"}
_THREAD_CHANNEL_TYPES = {"GuildPublicThread", "GuildPrivateThread", "GuildNewsThread"}


def is_discord_export(head: str) -> bool:
    """A DiscordChatExporter JSON export starts with an object holding `guild`, `channel` and `messages`."""
    start = head.lstrip()[:4096]
    return start.startswith("{") and '"guild"' in start and '"channel"' in start


def discord_channel(guild: dict, channel: dict, fallback: str) -> tuple[str, str]:
    """(key, display name) of a Discord channel: the key is `<server id>/<channel id>`, so that same-named channels
    of two servers stay apart; the name (`Server / #help`) is for people. `fallback` stands in for missing ids."""
    guild_id, channel_id = guild.get("id"), channel.get("id")
    key = f"{guild_id or guild.get('name') or '?'}/{channel_id or channel.get('name') or fallback}"
    name = channel.get("name") or channel_id or fallback
    return key, f"{guild['name']} / #{name}" if guild.get("name") else f"#{name}"


def read_discord_export(path: Path, source: str) -> Iterator[dict]:
    """Rows of one DiscordChatExporter JSON export; a thread channel is one gold conversation."""
    try:
        export = parse_json(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        yield error_row(source, "discord", path.name, 0, f"malformed_json: {exc}")
        return
    if not isinstance(export, dict):
        yield error_row(source, "discord", path.name, 0, "malformed_export: not a JSON object")
        return
    channel_info, guild_info = as_object(export.get("channel")), as_object(export.get("guild"))
    channel, channel_name = discord_channel(guild_info, channel_info, path.stem)
    is_thread = isinstance(channel_info.get("type"), str) and channel_info["type"] in _THREAD_CHANNEL_TYPES
    thread_id = channel_info.get("id") if is_thread else None
    messages = export.get("messages")
    if messages is None:
        messages = []
    if not isinstance(messages, list):
        yield error_row(source, "discord", path.name, 0, "malformed_export: messages is not a list")
        return
    for seq, msg in enumerate(messages, start=1):
        if not isinstance(msg, dict):
            yield error_row(source, "discord", path.name, seq, "malformed_export: message is not an object")
            continue
        kind = msg.get("type", "Default")
        if not (isinstance(kind, str) and kind in _CONVERSATION_TYPES):
            yield error_row(source, "discord", path.name, seq, f"system_message: {kind}", msg.get("content"))
            continue
        author = as_object(msg.get("author"))
        reference = as_object(msg.get("reference"))
        yield {
            "source": source,
            "platform": "discord",
            "channel": channel,
            "channel_name": channel_name,
            "message_id": msg.get("id"),
            "conversation_id": thread_id,
            "reply_to": reference.get("messageId"),
            "timestamp": msg.get("timestamp"),
            "author": author.get("nickname") or author.get("name") or author.get("id"),
            "text": msg.get("content"),
            "origin": path.name,
            "seq": seq,
        }


# Discord API message types that are conversation: 0 default, 19 reply (others are joins, pins, boosts, ...).
_API_CONVERSATION_TYPES = {0, 19}
_HOUR_MS = 3_600_000


def sample_bucket(message_id: str, channel_id: str, seed: int) -> float:
    """A stable number in [0, 1) for the channel-hour a Discord message falls in.

    The hour comes from the message id (a snowflake holds its creation time), so keeping ids whose bucket is
    below the rate keeps whole stretches of a channel and the conversations in them, not isolated messages.
    Ids that are not snowflakes are hashed on their own.
    """
    unit = f"{channel_id}:{(int(message_id) >> 22) // _HOUR_MS}" if message_id.isdigit() else message_id
    digest = hashlib.blake2b(f"{seed}:{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def discord_api_rows(lines: Iterable[bytes], source: str, origin: str, seed: int, sample_rate: float) -> Iterator[dict]:
    """Sampled rows from JSON lines of Discord API messages (Discord Unveiled's per-guild files)."""
    for seq, raw_line in enumerate(lines, start=1):
        if not raw_line.strip():
            continue
        try:
            msg = json.loads(raw_line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield error_row(source, "discord", origin, seq, f"malformed_json: {exc}")
            continue
        message_id, channel_id = str(msg.get("id", "")), str(msg.get("channel_id", ""))
        guild_id = str(msg.get("guild_id") or origin.rsplit("/", 1)[-1].split(".", 1)[0])
        if sample_bucket(message_id, channel_id, seed) >= sample_rate:
            continue
        if msg.get("type", 0) not in _API_CONVERSATION_TYPES:
            yield error_row(source, "discord", origin, seq, f"system_message: type {msg.get('type')}")
            continue
        author = msg.get("author") or {}
        yield {
            "source": source,
            "platform": "discord",
            "channel": f"{guild_id}/{channel_id}",
            "channel_name": f"#{msg['channel_name']}" if msg.get("channel_name") else None,
            "message_id": message_id,
            "conversation_id": None,
            "reply_to": (msg.get("message_reference") or {}).get("message_id"),
            "timestamp": msg.get("timestamp"),
            "author": author.get("global_name") or author.get("username") or author.get("id"),
            "text": msg.get("content"),
            "origin": origin,
            "seq": seq,
        }


def _tar_members(stream) -> Iterator[tuple[str, IO[bytes]]]:
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith((".json", ".jsonl")):
                yield member.name, archive.extractfile(member)


def discord_unveiled_files(path: str | None, upstream: str, source: str) -> Iterator[tuple[str, IO[bytes]]]:
    """(name, stream) of each per-guild JSON lines file: from a local folder, a local `.zst` tar, or the hub.

    The hub's `dataset.zst` (a zstd tar of `<guild_id>.json` files, about 118 GB) is streamed, never stored.
    """
    if path and Path(path).is_dir():
        for file in sorted(Path(path).rglob("*.json*")):
            with file.open("rb") as handle:
                yield file.name, handle
        return
    if not path:
        ensure_hub_reachable(source, upstream)
    with ExitStack() as stack:
        if path:
            compressed = stack.enter_context(Path(path).open("rb"))
        else:
            from huggingface_hub import HfFileSystem

            compressed = stack.enter_context(HfFileSystem().open(f"datasets/{upstream}/dataset.zst", "rb"))
        stream = stack.enter_context(zstandard.ZstdDecompressor().stream_reader(compressed))
        yield from _tar_members(stream)
