"""IRC: plain text logs (`[hh:mm] <nick> text`)."""

import re
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from itertools import groupby
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from threadembed_assets.chat.corpus import parse_annotation
from threadembed_assets.sources.schema import error_row, file_head

IRC_LINE = re.compile(r"^\[(\d{1,2}):(\d{2})(?::(\d{2}))?\]\s+(?:<[@+%~&]?([^>\s]+)>|\*\s+(\S+))\s?(.*)$")
_SYSTEM_LINE = re.compile(r"^\[\d{1,2}:\d{2}(?::\d{2})?\]\s+(?:\*\*\*|-->|<--|--|-!-)")
_DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{2})(-?)(\d{2})\2(\d{2})(?!\d)")  # YYYY-MM-DD or YYYYMMDD
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# A client's line stating the date, in C `ctime` style: irssi (`--- Day changed Sat May 04 2019`, `--- Log opened
# Sat May 04 12:00:00 2019`), mIRC (`Session Start: ...`, `Session Time: ...`), XChat/HexChat (`**** BEGIN LOGGING
# AT Sat May  4 12:00:00 2019`); or ISO: `*** Day changed to 2019-05-04`.
_CTIME_MARKER = re.compile(
    r"^(?:--- (?:Day changed|Log opened|Log closed)|Session (?:Start|Time|Close):|\*\*\*\* (?:BEGIN|ENDING) LOGGING AT)"
    rf"\s+[A-Z][a-z]{{2}}\s+({'|'.join(_MONTHS)})\s+(\d{{1,2}})(?:\s+\d{{1,2}}:\d{{2}}:\d{{2}})?\s+(\d{{4}})\s*$"
)
_ISO_MARKER = re.compile(r"^(?:\*\*\*|---|-!-)\s+Day changed(?: to)?\s+(\d{4})-(\d{2})-(\d{2})\s*$")
_NO_DATE = "no_date: put YYYY-MM-DD in the file name or set irc_log_date"
# A log's own line naming its channel: mIRC's `Session Ident: #ubuntu`, XChat/HexChat's `* Now talking on #ubuntu`.
_CHANNEL_HEADER = re.compile(r"^(?:Session Ident:|(?:\*+|-!-|---)?\s*Now talking (?:on|in))\s+([#&!+]\S+)\s*$")
_NAME_SEPARATORS = "._- "


def is_irc_log(head: str) -> bool:
    """True when one of the first lines is an IRC chat line."""
    return any(IRC_LINE.match(line) for line in head.splitlines()[:20])


def irc_channel(path: Path, root: Path | None = None) -> str:
    """The channel of an IRC log, the same for every day of it.

    A folder named `#channel` between `root` and the file (ZNC's `<network>/#ubuntu/2019-05-04.log`) names it; else
    the log's own header (mIRC's `Session Ident: #ubuntu`); else the file name without its date (`#ubuntu.2019-05-04`
    -> `#ubuntu`, `irc.libera.#ubuntu.weechatlog` -> `#ubuntu`); else, for a file named by its date alone, its folder.
    """
    folders = path.parent.relative_to(root).parts if root is not None and path.is_relative_to(root) else ()
    if named := next((folder for folder in reversed(folders) if folder[:1] in "#&"), None):
        return named
    head = file_head(path).splitlines()[:50]
    if header := next((found for line in head if (found := _CHANNEL_HEADER.match(line))), None):
        return header.group(1)
    name = _DATE_IN_NAME.sub("", path.stem)
    name = name[name.index("#") :] if "#" in name else name
    return name.strip(_NAME_SEPARATORS) or (folders[-1] if folders else path.parent.name) or "irc"


def read_irc_log(path: Path, source: str, start_day: date | None = None, root: Path | None = None) -> Iterator[dict]:
    """Rows of an IRC log, each line dated by the log's own markers, else its file name, else `start_day`.

    The channel is `irc_channel(path, root)`, so the days of one channel stay one stream; a message id is the
    file's path under `root` and its line number, unique across channels and days.

    The day starts as the date in the file name (`YYYY-MM-DD` or `YYYYMMDD`), else `start_day`; a date marker line
    (irssi, mIRC, XChat, `*** Day changed to YYYY-MM-DD`) sets it from there on, and between markers it rolls over
    at midnight. Markers are quarantined as `system_message`. Without a day, chat lines are quarantined as `no_date`:
    those of a log that states no date, and those above its first marker, which may be from any earlier day.
    """
    day = _date_in_name(path.name) or start_day
    channel = irc_channel(path, root)
    file_key = path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else path.name
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
            if marked_day := _marker_day(line):
                day, previous = marked_day, None
                yield error_row(source, "irc", path.name, seq, "system_message", line)
                continue
            match = IRC_LINE.match(line)
            if not match:
                reason = "system_message" if _SYSTEM_LINE.match(line) or line.startswith("===") else "unparsed_line"
                yield error_row(source, "irc", path.name, seq, reason, line)
                continue
            if day is None:
                yield error_row(source, "irc", path.name, seq, _NO_DATE, line)
                continue
            hour, minute, second, nick, action_nick, text = match.groups()
            clock = timedelta(hours=int(hour), minutes=int(minute), seconds=int(second or 0))
            try:
                if previous is not None and clock < previous - timedelta(hours=1):
                    day += timedelta(days=1)
                timestamp = (datetime.combine(day, datetime.min.time()) + clock).isoformat()
            except OverflowError:  # a marker dated 9999-12-31, then midnight or a clock past it
                yield error_row(source, "irc", path.name, seq, "unparseable_timestamp: after 9999-12-31", line)
                continue
            previous = clock
            yield {
                "source": source,
                "platform": "irc",
                "channel": channel,
                "message_id": f"{file_key}:{seq}",
                "conversation_id": None,
                "reply_to": None,
                "timestamp": timestamp,
                "author": nick or action_nick,
                "text": text if nick else f"/me {text}",
                "origin": path.name,
                "seq": seq,
            }


def _real_date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _date_in_name(name: str) -> date | None:
    """The first real date a file name holds as `YYYY-MM-DD` or `YYYYMMDD`."""
    found = (_real_date(int(year), int(month), int(day)) for year, _, month, day in _DATE_IN_NAME.findall(name))
    return next((day for day in found if day), None)


def _marker_day(line: str) -> date | None:
    """The day a client's date marker line states; None for any other line (or a marker naming no real day)."""
    if found := _CTIME_MARKER.match(line):
        month, day, year = found.groups()
        return _real_date(int(year), _MONTHS.index(month) + 1, int(day))
    if found := _ISO_MARKER.match(line):
        return _real_date(*map(int, found.groups()))
    return None


CORPUS_RAW, CORPUS_ANNOTATION = ".raw.txt", ".annotation.txt"


def is_irc_corpus(folder: Path) -> bool:
    """True for a folder in the IRC disentanglement corpus's own format (`<stem>.raw.txt` + `.annotation.txt`)."""
    return folder.is_dir() and any(folder.glob("*" + CORPUS_ANNOTATION))


def irc_corpus_rows(folder: Path, source: str) -> Iterator[dict]:
    """Rows of a split of the IRC disentanglement corpus in its own format: each `<stem>.raw.txt` a channel of its
    own (dated by its name), `<stem>.annotation.txt` its links (`a b -`: the later line replies to the earlier; `n n
    -`: n starts a conversation). Annotated lines get `reply_to` (the nearest earlier parent) and a conversation (a
    connected component); the context lines before them get neither, so the warehouse derives theirs."""
    for raw_path in sorted(folder.glob("*" + CORPUS_RAW)):
        stem = raw_path.name.removesuffix(CORPUS_RAW)
        annotation = raw_path.with_name(stem + CORPUS_ANNOTATION)
        if not annotation.exists():
            yield error_row(source, "irc", raw_path.name, 0, f"no_annotation: {annotation.name} is missing")
            continue
        n_lines = len(raw_path.read_bytes().splitlines())
        try:
            links = parse_annotation(annotation.read_text(encoding="utf-8"), n_lines, annotation.name)
        except ValueError as exc:
            yield error_row(source, "irc", annotation.name, 0, f"bad_annotation: {exc}")
            continue
        edges = np.array([(child, parent) for child, parents in links.items() for parent in parents]).reshape(-1, 2)
        graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_lines, n_lines))
        labels = connected_components(graph, directed=False)[1]
        first_line = {}
        for line, label in enumerate(labels):
            first_line.setdefault(label, line)
        for row in read_irc_log(raw_path, source):
            line = row["seq"] - 1  # the corpus numbers lines from 0
            if row.get("error") is None:
                earlier = [p for p in links.get(line, ()) if p < line]
                row |= {
                    "channel": stem,
                    "message_id": f"{stem}:{line}",
                    "conversation_id": f"{stem}:c{first_line[labels[line]]}" if line in links else None,
                    "reply_to": f"{stem}:{max(earlier)}" if earlier else None,
                }
            yield row


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
