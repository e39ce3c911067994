"""IRC: plain text logs (`[hh:mm] <nick> text`)."""

import re
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from itertools import groupby
from pathlib import Path

from threadembed_assets.sources.schema import error_row

IRC_LINE = re.compile(r"^\[(\d{1,2}):(\d{2})(?::(\d{2}))?\]\s+(?:<[@+%~&]?([^>\s]+)>|\*\s+(\S+))\s?(.*)$")
_SYSTEM_LINE = re.compile(r"^\[\d{1,2}:\d{2}(?::\d{2})?\]\s+(?:\*\*\*|-->|<--|--|-!-)")
_DATE_IN_NAME = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def is_irc_log(head: str) -> bool:
    """True when one of the first lines is an IRC chat line."""
    return any(IRC_LINE.match(line) for line in head.splitlines()[:20])


def read_irc_log(path: Path, source: str) -> Iterator[dict]:
    """Rows of an IRC log; the day comes from a `YYYY-MM-DD` in the file name and rolls over at midnight."""
    found = _DATE_IN_NAME.search(path.name)
    day = date(*map(int, found.groups())) if found else date(1970, 1, 1)
    channel = path.stem
    previous = None
    with path.open("rb") as handle:
        for seq, raw_line in enumerate(handle, start=1):
            try:
                line = raw_line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                text = raw_line.decode("utf-8", errors="replace")
                yield error_row(source, "irc", path.name, seq, f"invalid_utf8: {exc.reason}", text)
                continue
            if not line.strip():
                continue
            match = IRC_LINE.match(line)
            if not match:
                reason = "system_message" if _SYSTEM_LINE.match(line) else "unparsed_line"
                yield error_row(source, "irc", path.name, seq, reason, line)
                continue
            hour, minute, second, nick, action_nick, text = match.groups()
            clock = timedelta(hours=int(hour), minutes=int(minute), seconds=int(second or 0))
            if previous is not None and clock < previous - timedelta(hours=1):
                day += timedelta(days=1)
            previous = clock
            yield {
                "source": source,
                "platform": "irc",
                "channel": channel,
                "message_id": f"{channel}:{seq}",
                "conversation_id": None,
                "reply_to": None,
                "timestamp": (datetime.combine(day, datetime.min.time()) + clock).isoformat(),
                "author": nick or action_nick,
                "text": text if nick else f"/me {text}",
                "origin": path.name,
                "seq": seq,
            }


def irc_disentangle_rows(records: Iterable[dict], source: str, origin: str) -> Iterator[dict]:
    """Rows of the IRC disentanglement corpus (`id, raw, date, connections`), conversations from its links.

    `connections` are symmetric annotator links; a conversation is a connected component, and `reply_to` the
    nearest earlier linked message. Unannotated context lines keep no conversation (derived later). Links stay
    within a day's file, so the records stream one day (a run of equal `date`s) at a time.
    """
    seq = 0
    for _, day_records in groupby(records, key=lambda record: record.get("date")):
        day_records = list(day_records)
        yield from _irc_day_rows(day_records, source, origin, seq)
        seq += len(day_records)


def _irc_day_rows(records: list[dict], source: str, origin: str, first_seq: int) -> Iterator[dict]:
    parent: dict[int, int] = {}

    def find(node: int) -> int:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for record in records:
        for other in record.get("connections") or []:
            parent[find(other)] = find(record["id"])
    annotated = {r["id"] for r in records if r.get("connections")}
    for seq, record in enumerate(records, start=first_seq + 1):
        line, message_id, day = record.get("raw") or "", record["id"], record.get("date") or "1970-01-01"
        match = IRC_LINE.match(line)
        if not match:
            reason = "system_message" if line.startswith("===") or _SYSTEM_LINE.match(line) else "unparsed_line"
            yield error_row(source, "irc", origin, seq, reason, line)
            continue
        hour, minute, second, nick, action_nick, text = match.groups()
        earlier = [c for c in record.get("connections") or [] if c < message_id]
        yield {
            "source": source,
            "platform": "irc",
            "channel": day,
            "message_id": str(message_id),
            "conversation_id": f"{day}:c{find(message_id)}" if message_id in annotated else None,
            "reply_to": str(max(earlier)) if earlier else None,
            "timestamp": f"{day}T{int(hour):02d}:{minute}:{second or '00'}",
            "author": nick or action_nick,
            "text": text if nick else f"/me {text}",
            "origin": origin,
            "seq": seq,
        }
