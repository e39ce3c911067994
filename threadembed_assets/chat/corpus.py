"""The IRC disentanglement corpus's own format (Kummerfeld et al., ACL 2019): `<stem>.raw.txt`, one line per message
(`[HH:MM] <nick> text`, `[HH:MM]  * nick action`, `=== system line`), and `<stem>.annotation.txt`, one link per
line (`a b -`: the larger line replies to the smaller; `n n -`: line n starts a conversation). Lines from the first
annotated one on are annotated; earlier lines are context that annotated lines may link to."""

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RAW_SUFFIX = ".raw.txt"
ANNOTATION_SUFFIX = ".annotation.txt"

_TIMED = re.compile(r"^(?:\[(\d{1,2}):(\d{2})\]\s?)?(.*)$")  # logs without times too
_SAID = re.compile(r"^<([^>]*)>\s?(.*)$")
_ACTION = re.compile(r"^\s*\*\s+(\S+)\s?(.*)$")
_SYSTEM_NICK = re.compile(r"^===\s+(\S+)")


class FormatError(ValueError):
    """A file that is not in the corpus's format."""


@dataclass
class Log:
    """One channel log: its lines parsed, and the gold links where an annotation file came with it."""

    name: str
    lines: list[str]  # the raw lines
    speakers: list[str]  # the nick that wrote each line (a system line: the nick it is about, or "")
    texts: list[str]  # what was said, without time and nick ("* nick ..." for an action; the line for a system one)
    minutes: np.ndarray  # since the log's first timed line (untimed: the time of the line before; NaN: none yet)
    system: np.ndarray  # joins, parts, quits, nick changes
    first_annotated: int = 0
    parents: dict[int, set[int]] = field(default_factory=dict)  # gold: line -> the lines it replies to (itself: new)
    ids: list[str] = field(default_factory=list)  # message ids, where the lines came from chat messages

    def __len__(self) -> int:
        return len(self.lines)

    def annotated(self) -> range:
        return range(self.first_annotated, len(self.lines))

    def slice(self, start: int, end: int) -> "Log":
        """Lines [start, end) as a log of their own (gold links left out)."""
        return Log(
            self.name,
            self.lines[start:end],
            self.speakers[start:end],
            self.texts[start:end],
            self.minutes[start:end],
            self.system[start:end],
        )


def parse_lines(name: str, lines: list[str]) -> Log:
    """A log from its raw lines; a line of no known shape counts as a system line, so every line gets a link."""
    speakers, texts, clock, system = [], [], [], []
    for line in lines:
        timed = _TIMED.match(line)
        rest = timed.group(3)
        said, action = _SAID.match(rest), _ACTION.match(rest)
        if said:
            speakers.append(said.group(1).lstrip("@+"))
            texts.append(said.group(2))
        elif action:
            speakers.append(action.group(1).lstrip("@+"))
            texts.append(f"* {action.group(1)} {action.group(2)}".rstrip())
        else:
            nick = _SYSTEM_NICK.match(line)
            speakers.append(nick.group(1) if nick else "")
            texts.append(line)
        system.append(not (said or action))
        clock.append(int(timed.group(1)) * 60 + int(timed.group(2)) if timed.group(1) and (said or action) else None)
    return Log(name, lines, speakers, texts, _elapsed_minutes(clock), np.array(system, dtype=bool))


def _elapsed_minutes(clock: list[int | None]) -> np.ndarray:
    """Minutes since the first timed line, through midnight (and through noon while the log has shown no hour past
    12, as logs with a 12-hour clock never do); an untimed line takes the time of the line before it (NaN before
    any). Online: a line's time depends on the lines before it only."""
    out, offset, previous, past_noon = np.full(len(clock), np.nan), 0, None, False
    for i, c in enumerate(clock):
        if c is None:
            out[i] = out[i - 1] if i else np.nan
            continue
        if previous is not None and c + offset < previous - 60:  # the clock went round
            offset += 1440 if past_noon else 720
        past_noon |= c >= 13 * 60
        previous = c + offset
        out[i] = previous
    timed = [c for c in clock if c is not None]
    return out - (timed[0] if timed else 0)


def parse_annotation(text: str, n_lines: int, source: str = "annotation") -> dict[int, set[int]]:
    """Gold parents per line from `a b -` lines (either order; the larger number is the reply)."""
    parents: dict[int, set[int]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or not (fields[0].isdigit() and fields[1].isdigit()):
            raise FormatError(f"{source}:{number}: expected `<line> <line> -`, got {line[:80]!r}")
        a, b = int(fields[0]), int(fields[1])
        child, parent = max(a, b), min(a, b)
        if child >= n_lines:
            raise FormatError(f"{source}:{number}: line {child} is past the log's {n_lines} lines")
        parents.setdefault(child, set()).add(parent)
    return parents


def read_raw(path: Path) -> Log:
    """A `.raw.txt` log (or any plain IRC log of that shape) without annotation."""
    name = path.name.removesuffix(RAW_SUFFIX) if path.name.endswith(RAW_SUFFIX) else path.stem
    return parse_lines(name, path.read_text(encoding="utf-8", errors="replace").splitlines())


def read_annotated(raw_path: Path) -> Log:
    """A log and its gold links (`<stem>.annotation.txt` beside `<stem>.raw.txt`)."""
    log = read_raw(raw_path)
    annotation = raw_path.with_name(log.name + ANNOTATION_SUFFIX)
    if not annotation.exists():
        raise FormatError(f"{raw_path}: no {annotation.name} beside it")
    log.parents = parse_annotation(annotation.read_text(), len(log), str(annotation))
    log.first_annotated = min(log.parents) if log.parents else len(log)
    return log


def read_split(folder: Path) -> list[Log]:
    """Every annotated log of a split folder, in name order."""
    paths = sorted(Path(folder).glob("*" + RAW_SUFFIX))
    if not paths:
        raise FormatError(f"{folder}: no *{RAW_SUFFIX} files")
    return [read_annotated(p) for p in paths]


def format_links(log: Log, parents: np.ndarray, from_line: int = 0) -> list[str]:
    """The corpus's output format, `<stem>:<line> <parent line> -`, for every line from `from_line` on."""
    return [f"{log.name}:{i} {int(parents[i])} -" for i in range(from_line, len(log))]


def log_from_messages(name: str, rows: list[tuple], first_annotated: int = 0) -> Log:
    """A log of one channel's messages in channel order, rows of (message_id, reply_to, author, epoch seconds or
    None, text); its gold parents are the reply links (a message with none, or with a link out of the channel,
    starts a conversation) of every line from `first_annotated` on (the lines before are context)."""
    index = {row[0]: line for line, row in enumerate(rows)}
    times = np.array([np.nan if row[3] is None else float(row[3]) for row in rows])
    known = times[~np.isnan(times)]
    log = Log(
        name,
        lines=[row[4] for row in rows],
        speakers=[row[2] or "" for row in rows],
        texts=[row[4] for row in rows],
        minutes=(times - (known[0] if len(known) else 0.0)) / 60.0,
        system=np.zeros(len(rows), dtype=bool),
        ids=[row[0] for row in rows],
        first_annotated=first_annotated,
    )
    log.parents = {
        line: {parent if (parent := index.get(row[1], line)) <= line else line}
        for line, row in enumerate(rows)
        if line >= first_annotated
    }
    return log
