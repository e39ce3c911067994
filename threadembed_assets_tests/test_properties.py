"""Property-based tests of every import format and the warehouse load, on generated hostile and valid input.

Each import property writes generated files under a fresh imports folder, reads them as the `chat_export` source does
(`read_imports` into a raw cache) and loads that cache into a DuckDB warehouse file. Nothing may raise (the folder
always holds files, so not even a documented `SourceConfigError` applies), and no unit of input may vanish: the raw
cache holds one row per unit, and the warehouse puts each raw row in `messages` or `quarantine`, never nowhere.

Units, per detected format of a file (`detect_format`):
- chat JSONL: a `\\n`-separated line holding a byte other than ASCII whitespace (space, \\t, \\r, \\v, \\f).
- IRC log: a `\\n`-separated line that is not valid UTF-8, or whose text is not whitespace only.
- DiscordChatExporter JSON: each element of the `messages` array (object or not); a file that is not a JSON object
  (invalid UTF-8, malformed, nested past the parser's depth), or whose `messages` is neither an array nor null or
  missing, is one unit.
- Slack export folder: each element of each `<channel>/<day>.json` array; a day file that is not a JSON array is one
  unit, and so is a `users.json` that does not parse (`channels.json` is never read).
- Slack export zip: as the folder, per entry; an entry whose path leaves the archive, or that cannot be read from
  the archive (damaged, encrypted, unsupported method), is one unit; an archive expanding past the limit is one.
- a file of no known format (arbitrary bytes, empty, a cut-off file) is one unit.
"""

import io
import json
import tempfile
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from threadembed_assets.sources.chat_export import detect_format, read_imports
from threadembed_assets.sources.raw_cache import PART_GLOB, write_raw_cache
from threadembed_assets.sources.schema import CHAT_FIELDS, raw_batch
from threadembed_assets.warehouse.load import LoadOptions, load_messages

SOURCE = "chat_export"
MAX_ARCHIVE_BYTES = 16 * 1024 * 1024
HUGE = 2 * 1024 * 1024
DEEP = 10_000

CASES: Counter[tuple[str, str]] = Counter()  # (kind, test) -> generated cases run


def count(kind: str, test: str) -> None:
    """Count one generated case of `test`: `import` (read and loaded) or `warehouse-load` (raw rows loaded)."""
    CASES[kind, test] += 1


@pytest.fixture(scope="module", autouse=True)
def report_generated_cases(request):
    """Print how many generated cases each property ran, once the module's tests are done."""
    yield
    imports = sum(n for (kind, _), n in CASES.items() if kind == "import")
    loads = sum(n for (kind, _), n in CASES.items() if kind == "warehouse-load")
    lines = [f"hypothesis: {imports} generated import cases, {loads + imports} warehouse-load cases"]
    lines += [f"  {test}: {n} {kind} cases" for (kind, test), n in sorted(CASES.items(), key=lambda item: item[0][1])]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:  # run without pytest's terminal output or capturing
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled():
        reporter.write("\n")
        for line in lines:
            reporter.write_line(line)


def cases(n: int) -> settings:
    """Hypothesis settings of a property: `n` examples, no deadline, no example database in the repository."""
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


# --- strategies -------------------------------------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates included
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text  # NaN and Infinity included
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=6,
)
field_values = st.text(max_size=12) | json_values  # a right type or a wrong one


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"[" * depth + b"1" + b"]" * depth + b"}" * depth


def unclosed(depth: int) -> bytes:
    return b'[{"a":' * depth


deep_json = st.sampled_from([3, 500, DEEP // 2]).map(nested) | st.sampled_from([DEEP, 2 * DEEP]).map(unclosed)


@st.composite
def json_encoded(draw, values) -> bytes:
    """A drawn value as JSON text in UTF-8 (escaped or raw, a lone surrogate raw as well), latin-1 or UTF-16."""
    value = draw(values)
    encoding = draw(st.sampled_from(["ascii", "utf-8", "latin-1", "utf-16"]))
    text = json.dumps(value, ensure_ascii=encoding == "ascii")
    errors = "replace" if encoding == "latin-1" else "surrogatepass"
    return text.encode("utf-8" if encoding == "ascii" else encoding, errors)


def cut_or_mixed(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` as it is, cut at a random byte, with latin-1 or UTF-16 bytes spliced in, or all UTF-16."""
    spliced = st.sampled_from(["café".encode("latin-1"), "über".encode("utf-16"), b"\xff\xfe\x00", b"\x00"])
    return st.one_of(
        st.just(data),
        st.integers(0, len(data)).map(lambda cut: data[:cut]),
        st.tuples(st.integers(0, len(data)), spliced).map(lambda p: data[: p[0]] + p[1] + data[p[0] :]),
        st.just(data.decode("utf-8", "replace").encode("utf-16")),
    )


blank_lines = st.sampled_from([b"", b" \t", b"\r", b"\x0b\x0c", "\u00a0\u2003".encode()])


def huge_line(kind: str) -> bytes:
    """A 2 MB line: one chat JSONL message, one IRC line, or garbage."""
    if kind == "chat_jsonl":
        return json.dumps({"message_id": "huge", "text": "x" * HUGE}).encode()
    return b"[12:00] <big> " + b"y" * HUGE if kind == "irc_log" else b"z" * HUGE


huge_lines = st.sampled_from(["chat_jsonl", "irc_log", "garbage"]).map(huge_line)


def either(first: st.SearchStrategy, second: st.SearchStrategy) -> st.SearchStrategy:
    """One of two strategies, each half the time however many branches either has."""
    return st.booleans().flatmap(lambda pick_first: first if pick_first else second)


def mixed_lines(valid_lines: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Lines of a line-based format: half valid, half arbitrary bytes, wrong or deep JSON, lines in latin-1 or
    UTF-16, blank or huge."""
    chat_objects = st.fixed_dictionaries(
        {"message_id": field_values, "text": field_values},
        optional={name: field_values for name in [*CHAT_FIELDS, "platform"] if name not in {"message_id", "text"}},
    )
    hostile = st.one_of(
        st.binary(max_size=40),
        json_encoded(chat_objects | json_values),
        deep_json,
        valid_lines.map(lambda line: line.decode("utf-8").encode("utf-16")),
        st.text(st.characters(max_codepoint=255), max_size=20).map(lambda text: text.encode("latin-1")),
        blank_lines,
        huge_lines,
    )
    return either(valid_lines, hostile)


def chat_line(i: int, text: str) -> bytes:
    row = {"message_id": f"m{i}", "text": text, "timestamp": f"2020-01-01T10:{i % 60:02d}:00", "author": "ann"}
    return json.dumps({**row, "conversation_id": "c1", "source": "mine"}).encode()


def irc_line(i: int, text: str) -> bytes:
    return f"[{10 + i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}] <ann> {text}".encode()


irc_special_lines = either(
    st.sampled_from([b"--- Day changed Fri Dec 31 9999", b"*** Day changed to 9999-12-31"]),  # the last day
    st.sampled_from(
        [
            b"--- Log opened Sat May 04 12:00:00 2019",
            b"*** Day changed to 2019-02-30",
            b"[23:59] *** ann has joined #c",
            b"[99:99] <ann> hour 99",
            b"[00:00] * ann waves",
        ]
    ),
)
chat_texts = st.text(min_size=1, max_size=30).filter(str.strip)
irc_texts = chat_texts.filter(lambda text: "\n" not in text and not text.endswith("\r"))
valid_chat_lines = st.builds(chat_line, st.integers(0, 10**6), chat_texts)
irc_clocks = st.sampled_from(["00:00", "00:30:15", "12:00", "23:59:59", "99:99"])  # midnight, and past it
valid_irc_lines = either(
    st.builds(lambda clock, text: f"[{clock}] <ann> {text}".encode(), irc_clocks, irc_texts)
    | st.builds(irc_line, st.integers(0, 10**5), irc_texts),
    irc_special_lines,
)


def slack_message(i: int, text: str) -> dict:
    return {"type": "message", "user": "U1", "text": text, "ts": f"{1_600_000_000 + i}.000100"}


def discord_message(i: int, text: str) -> dict:
    minute = f"{i // 60 % 60:02d}:{i % 60:02d}"
    return {"id": str(1000 + i), "type": "Default", "timestamp": f"2024-01-01T10:{minute}+00:00", "content": text}


slack_objects = st.fixed_dictionaries(
    {},
    optional={
        name: field_values for name in "type subtype user user_profile bot_id username text ts thread_ts".split()
    },
)
discord_objects = st.fixed_dictionaries(
    {}, optional={name: field_values for name in "id type timestamp content author reference".split()}
)


def message_arrays(valid: st.SearchStrategy[dict], hostile: st.SearchStrategy[dict]) -> st.SearchStrategy[list]:
    return st.lists(valid | hostile | json_values, max_size=6)


def json_files(values: st.SearchStrategy[object]) -> st.SearchStrategy[bytes]:
    """A drawn value as a JSON file: encoded one way or another, then maybe cut, mixed with other encodings or
    replaced by a deep, arbitrary, empty or huge one."""
    files = json_encoded(values).flatmap(cut_or_mixed)
    return files | deep_json | st.binary(max_size=40) | st.just(b"") | huge_lines


def json_array_units(data: bytes) -> int:
    """Units of a Slack day file: its elements when it is a JSON array, else one."""
    value = parse(data)
    return len(value) if isinstance(value, list) else 1


UNREADABLE = object()


def parse(data: bytes) -> object:
    """`data` as UTF-8 JSON, or UNREADABLE where it is not (the test's own reading, independent of the readers')."""
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return UNREADABLE


# --- units and the pipeline -------------------------------------------------------------------------------------


def units_in(folder: Path) -> int:
    """The units of every import under `folder` (see the module docstring)."""
    total = 0
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and detect_format(entry) is None:
            total += units_in(entry)
        else:
            total += units_of(entry, detect_format(entry))
    return total


def units_of(path: Path, kind: str | None) -> int:
    if kind is None:
        return 1
    if kind == "slack_export":
        return slack_dir_units(path) if path.is_dir() else slack_zip_units(path)
    data = path.read_bytes()
    if kind == "chat_jsonl":
        return sum(1 for line in data.split(b"\n") if line.strip())
    if kind == "irc_log":
        return sum(1 for line in data.split(b"\n") if line.decode("utf-8", "replace").strip())
    assert kind == "discord_export", kind
    export = parse(data)
    if not isinstance(export, dict):
        return 1
    messages = export.get("messages")
    return 0 if messages is None else len(messages) if isinstance(messages, list) else 1


def slack_dir_units(folder: Path) -> int:
    users = folder / "users.json"
    unreadable_users = users.is_file() and parse(users.read_bytes()) is UNREADABLE
    return unreadable_users + sum(json_array_units(day.read_bytes()) for day in folder.glob("*/*.json"))


def slack_zip_units(archive: Path) -> int:
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > MAX_ARCHIVE_BYTES:
            return 1
        units = 0
        for member in members:
            path = PurePosixPath(member.filename.replace("\\", "/"))
            if path.is_absolute() or ".." in path.parts or member.filename[1:2] == ":":
                units += 1
                continue
            try:
                data = zf.read(member)
            except Exception:  # any failure to read an entry makes it one unit
                units += 1
                continue
            parts = PurePosixPath(member.filename).parts
            if parts and parts[-1] == "users.json":
                units += parse(data) is UNREADABLE
            elif len(parts) >= 2 and parts[-1].endswith(".json") and parts[-1] != "channels.json":
                units += json_array_units(data)
        return units


def load(raw: Path, warehouse: Path, source: str = SOURCE) -> dict:
    """Load a raw cache into the warehouse file as `source`; that source's rows there after it."""
    with duckdb.connect(str(warehouse)) as con:
        load_messages(con, source, raw, LoadOptions())
        return source_rows(con, source)


def source_rows(con: duckdb.DuckDBPyConnection, source: str) -> dict:
    """`source`'s message texts and quarantine details in the warehouse, and how many of each."""
    by_source = {"source": source}
    texts = [text for (text,) in con.execute("SELECT text FROM messages WHERE source = $source", by_source).fetchall()]
    details = [d for (d,) in con.execute("SELECT detail FROM quarantine WHERE source = $source", by_source).fetchall()]
    return {"messages": len(texts), "quarantined": len(details), "texts": texts, "details": details}


def read_and_load(imports: Path, work: Path) -> tuple[dict, dict]:
    """The raw cache of `imports` (rows and error rows) and the warehouse after loading it."""
    raw = write_raw_cache(read_imports(imports, SOURCE, MAX_ARCHIVE_BYTES), work / "raw")
    return raw, load(work / "raw", work / "warehouse.duckdb")


def raw_errors(raw: Path) -> list[tuple]:
    """(error, start of text) of each row of a raw cache, to show when a property fails."""
    with duckdb.connect() as con:
        sql = "SELECT error, left(text, 60) FROM read_parquet($glob)"
        return con.execute(sql, {"glob": str(raw / PART_GLOB)}).fetchall()


def check_accounted(files: dict[str, bytes]) -> None:
    """Write `files` as imports; assert each unit is one raw row and each raw row a message or quarantined."""
    with tempfile.TemporaryDirectory() as tmp:
        imports, work = Path(tmp) / "imports", Path(tmp) / "work"
        for name, data in files.items():
            (imports / name).parent.mkdir(parents=True, exist_ok=True)
            (imports / name).write_bytes(data)
        work.mkdir()
        expected = units_in(imports)
        raw, warehouse = read_and_load(imports, work)
        assert raw["rows"] == expected, raw_errors(work / "raw")
        assert warehouse["messages"] + warehouse["quarantined"] == raw["rows"]


# --- properties: hostile input ----------------------------------------------------------------------------------


@cases(50)
@given(
    first=mixed_lines(valid_chat_lines),
    lines=st.lists(mixed_lines(valid_chat_lines), max_size=8),
    end=st.sampled_from([b"", b"\n", b"\r\n"]),
)
def test_chat_jsonl_every_line_is_a_message_or_quarantined(first, lines, end):
    """Chat JSONL with arbitrary, wrong-typed, deep, huge, blank and mixed-encoding lines after a valid first line
    (or a hostile one, which makes the file another format or none)."""
    count("import", "chat_jsonl")
    check_accounted({"chat.jsonl": b"\n".join([first, *lines]) + end})


@cases(60)
@given(
    name=st.sampled_from(["#c.2019-05-04.log", "#c.log", "#c.2019-13-45.log", "#c.20191231.log"]),
    first=mixed_lines(valid_irc_lines),
    lines=st.lists(mixed_lines(valid_irc_lines), max_size=8),
)
def test_irc_log_every_line_is_a_message_or_quarantined(name, first, lines):
    """IRC logs with date markers (up to the last day there is), bad clocks, arbitrary bytes, latin-1 and UTF-16
    lines, huge lines, and file names with a date, an impossible date or none."""
    count("import", "irc_log")
    check_accounted({name: b"\n".join([first, *lines]) + b"\n"})


@cases(50)
@given(
    channel=st.fixed_dictionaries({"id": st.just("2"), "name": st.text(max_size=5)}) | json_values,
    messages=message_arrays(st.builds(discord_message, st.integers(0, 10**4), chat_texts), discord_objects)
    | json_values,
    data=st.data(),
)
def test_discord_export_every_message_is_a_message_or_quarantined(channel, messages, data):
    """DiscordChatExporter JSON with wrong-typed envelopes and messages, cut, mixed-encoding, deep or huge."""
    count("import", "discord_export")
    export = {"guild": {"id": "1"}, "channel": channel, "messages": messages}
    check_accounted({"Guild - help [2].json": data.draw(json_files(st.just(export)))})


slack_day_files = json_files(
    message_arrays(st.builds(slack_message, st.integers(0, 10**4), chat_texts), slack_objects) | json_values
)
users_files = json_files(st.just([{"id": "U1", "name": "ann"}]) | json_values)
slack_paths = st.sampled_from(["general/2021-03-01.json", "general/2021-03-02.json", "random/2021-03-01.json"])


@cases(40)
@given(
    days=st.dictionaries(slack_paths, slack_day_files, min_size=1, max_size=3),
    users=st.none() | users_files,
    channels=st.none() | st.binary(max_size=20),
)
def test_slack_export_folder_every_message_is_a_message_or_quarantined(days, users, channels):
    """Slack export folders whose day files and users.json are hostile JSON of every kind."""
    count("import", "slack_export_folder")
    files = {f"acme/{path}": data for path, data in days.items()}
    files |= {"acme/users.json": users} if users is not None else {}
    files |= {"acme/channels.json": channels} if channels is not None else {}
    check_accounted(files)


zip_names = (
    slack_paths
    | st.sampled_from(
        ["users.json", "acme/users.json", "channels.json", "acme/general/2021-03-01.json", "../../up/2021.json"]
        + ["/abs/2021.json", "C:/x/2021.json", "a\\..\\b/c.json", ".", "README.txt"]
    )
    | st.text(alphabet="ab/.\\:", min_size=1, max_size=10).map(lambda name: name + ".json")
)
zip_methods = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])


def zip_bytes(entries: dict[str, bytes], method: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """`data` as it is, cut at a random byte, or with a few bytes overwritten."""
    kind = draw(st.sampled_from(["intact", "cut", "overwritten"]))
    if kind == "cut":
        return data[: draw(st.integers(0, len(data)))]
    damaged_data = bytearray(data)
    for _ in range(draw(st.integers(1, 4)) if kind == "overwritten" else 0):
        damaged_data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(damaged_data)


@cases(50)
@given(
    entries=st.dictionaries(zip_names, slack_day_files | users_files, min_size=1, max_size=4),
    method=zip_methods,
    data=st.data(),
)
def test_slack_export_zip_every_message_is_a_message_or_quarantined(entries, method, data):
    """Zipped Slack exports with hostile entries and names (leaving the archive, odd paths), every compression
    method, cut or with overwritten bytes (bad CRCs, headers, methods, encryption flags)."""
    count("import", "slack_export_zip")
    check_accounted({"export.zip": data.draw(damaged(zip_bytes(entries, method)))})


any_valid_file = st.one_of(
    st.lists(valid_chat_lines, min_size=1, max_size=4).map(b"\n".join),
    st.lists(valid_irc_lines, min_size=1, max_size=4).map(b"\n".join),
    st.builds(lambda m: json.dumps({"guild": {}, "channel": {}, "messages": m}).encode(), st.lists(json_values)),
    st.builds(zip_bytes, st.dictionaries(slack_paths, slack_day_files, max_size=2), zip_methods),
)


@cases(40)
@given(
    files=st.dictionaries(
        st.sampled_from(["a.jsonl", "b.json", "c.log", "d.txt", "e.zip", "f", "sub/g.json", "acme/x/y.json"]),
        st.one_of(
            st.binary(max_size=200),
            st.just(b""),
            deep_json,
            any_valid_file.flatmap(cut_or_mixed),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_arbitrary_or_cut_files_of_any_name_are_accounted_for(files):
    """Arbitrary bytes, empty files, deep JSON and cut or re-encoded files of every format under every name: each
    is read as the format it is detected as, or is one unknown-format row."""
    count("import", "arbitrary_files")
    check_accounted(files)


# --- properties: valid input ------------------------------------------------------------------------------------


def write_valid(imports: Path, kind: str, texts: list[str]) -> None:
    """`texts` as well-formed messages of one import format."""
    if kind == "chat_jsonl":
        (imports / "mine.jsonl").write_bytes(b"\n".join(chat_line(i, t) for i, t in enumerate(texts)) + b"\n")
    elif kind == "irc_log":
        (imports / "#c.2019-05-04.log").write_bytes(b"\n".join(irc_line(i, t) for i, t in enumerate(texts)) + b"\n")
    elif kind == "discord_export":
        export = {"guild": {"id": "1"}, "channel": {"id": "2", "name": "help"}}
        export["messages"] = [discord_message(i, t) for i, t in enumerate(texts)]
        (imports / "help.json").write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")
    else:
        day = json.dumps([slack_message(i, t) for i, t in enumerate(texts)], ensure_ascii=False).encode()
        entries = {"users.json": b'[{"id": "U1", "name": "ann"}]', "general/2021-03-01.json": day}
        if kind == "slack_export_zip":
            (imports / "export.zip").write_bytes(zip_bytes(entries, zipfile.ZIP_DEFLATED))
            return
        for name, data in entries.items():
            (imports / "acme" / name).parent.mkdir(parents=True, exist_ok=True)
            (imports / "acme" / name).write_bytes(data)


@cases(50)
@given(
    kind=st.sampled_from(["chat_jsonl", "irc_log", "discord_export", "slack_export_folder", "slack_export_zip"]),
    data=st.data(),
)
def test_valid_messages_all_arrive_with_their_text(kind, data):
    """Well-formed messages of every format (any Unicode text; one line for IRC) all reach `messages`, intact."""
    count("import", "valid_messages")
    texts = data.draw(st.lists(irc_texts if kind == "irc_log" else chat_texts, min_size=1, max_size=8))
    with tempfile.TemporaryDirectory() as tmp:
        imports, work = Path(tmp) / "imports", Path(tmp) / "work"
        imports.mkdir()
        work.mkdir()
        write_valid(imports, kind, texts)
        raw, warehouse = read_and_load(imports, work)
        assert (raw["rows"], raw["error_rows"]) == (len(texts), 0), raw_errors(work / "raw")
        assert warehouse["quarantined"] == 0
        assert sorted(warehouse["texts"]) == sorted(texts)


# --- properties: the warehouse load -----------------------------------------------------------------------------

ids = st.sampled_from(["m1", "m2", "m3", "m4", "g1"])
timestamps = either(
    st.sampled_from(["2020-01-01T10:00:00", "2020-01-01T10:00:00+14:00", "0001-01-01", "1577872800", "epoch"]),
    either(
        st.sampled_from(["infinity", "-infinity"]),
        st.sampled_from([None, "yesterday", "1e300", "-1e18", "nan", "inf", "294277-01-01", "2020-02-30"]),
    ),
)
conversation_ids = st.sampled_from([None, "c1", "c2", ""])
channels = st.sampled_from([None, "#a", "#b", ""])
readable_fields = {"message_id": ids, "text": st.text(min_size=1, max_size=8), "timestamp": timestamps}
readable_rows = either(  # rows a reader gave, in time-gap sessions or linked: the load's own checks decide
    st.fixed_dictionaries({**readable_fields, "channel": st.sampled_from(["#a", "#b"])}),
    st.fixed_dictionaries(
        readable_fields,
        optional={"reply_to": ids, "conversation_id": conversation_ids, "channel": channels},
    ),
)
odd_rows = st.fixed_dictionaries(  # any field missing, blank, oversize or odd; error rows
    {},
    optional={
        "message_id": ids | st.sampled_from([None, "", "  "]) | st.text(max_size=4),
        "reply_to": ids | st.text(max_size=4),
        "conversation_id": conversation_ids,
        "channel": channels,
        "author": st.none() | st.text(max_size=4),
        "origin": st.sampled_from([None, "a.jsonl"]),
        "seq": st.none() | st.integers(-(2**63), 2**63 - 1),
        "text": st.sampled_from([None, "", "   ", "x" * 20_001]) | st.text(max_size=20),
        "timestamp": timestamps | st.text(max_size=8),
        "error": st.sampled_from([None, "malformed_json: x", "no colon", ":", "invalid_utf8: bad byte"]),
    },
)
raw_rows_strategy = st.lists(either(readable_rows, odd_rows), max_size=12)


@cases(50)
@given(parts=st.lists(raw_rows_strategy, min_size=1, max_size=3), other=raw_rows_strategy)
def test_warehouse_load_puts_every_raw_row_in_messages_or_quarantine(parts, other):
    """Raw caches of one to three parts, with duplicate, blank and missing ids, reply cycles, blank, missing and
    oversize text, unparseable and infinite times and error rows, loaded after another source: each row is one
    message or one quarantine row of its source (the other source's rows stay), a raw error is kept as the
    quarantine detail, and every message's text is a raw row's."""
    count("warehouse-load", "warehouse_load")
    rows = [row for part in parts for row in part]
    with tempfile.TemporaryDirectory() as tmp:
        raw, other_raw, warehouse = Path(tmp) / "raw" / "mine", Path(tmp) / "raw" / "other", Path(tmp) / "w.duckdb"
        write_raw_cache([raw_batch(part) for part in parts if part], raw)
        write_raw_cache([raw_batch(other)] if other else [], other_raw)
        load(other_raw, warehouse, "other")
        mine = load(raw, warehouse, "mine")
        with duckdb.connect(str(warehouse), read_only=True) as con:
            others = source_rows(con, "other")
    assert mine["messages"] + mine["quarantined"] == len(rows)
    assert others["messages"] + others["quarantined"] == len(other)
    assert Counter(mine["texts"]) <= Counter(row.get("text") for row in rows if row.get("error") is None)
    assert Counter(row["error"] for row in rows if row.get("error")) <= Counter(mine["details"])
