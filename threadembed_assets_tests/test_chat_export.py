"""`chat_export`: every import format, and the bad imports a user can hand it."""

import gzip
import json
import tempfile
import zipfile
from pathlib import Path

import duckdb
import pytest

from threadembed_assets.sources.chat_export import EmptyImportsError, detect_format, read_imports
from threadembed_assets.sources.chat_jsonl import chat_jsonl_part
from threadembed_assets.sources.config import SourceConfigError
from threadembed_assets.sources.irc import irc_channel
from threadembed_assets_tests.conftest import materialize_source, raw_rows

LIMIT = 10 * 1024 * 1024


def read(folder, max_archive_bytes: int = LIMIT, **options) -> list[dict]:
    with tempfile.TemporaryDirectory() as cache:
        return raw_rows(read_imports(folder, "chat_export", max_archive_bytes, **options), Path(cache))


def chat_line(i: int, conversation: str, text: str, **extra) -> str:
    row = {
        "source": "irc_ubuntu",
        "channel": "#x",
        "message_id": f"m{i}",
        "conversation_id": conversation,
        "reply_to": None,
        "timestamp": f"2020-01-01T10:{i:02d}:00",
        "author": f"u{i % 2}",
        "text": text,
    }
    return json.dumps({**row, **extra})


def test_gzipped_chat_jsonl_part_with_a_row_budget_clean_or_with_a_bad_line(tmp_path):
    lines = [chat_line(i, "c1", f"hello {i}") for i in range(5)]
    clean, broken = tmp_path / "clean.jsonl.gz", tmp_path / "broken.jsonl.gz"
    clean.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    broken.write_bytes(gzip.compress(("\n".join([*lines[:2], '{"text": "cut', *lines[2:]]) + "\n").encode()))

    def rows_of(path, **options) -> list[dict]:
        with tempfile.TemporaryDirectory() as cache:
            return raw_rows([chat_jsonl_part(path, "mine", "irc", **options)], Path(cache))

    assert [r["text"] for r in rows_of(clean)] == [f"hello {i}" for i in range(5)]
    assert [(r["text"], r["source"], r["platform"]) for r in rows_of(clean, max_rows=2)] == [
        ("hello 0", "irc_ubuntu", "irc"),
        ("hello 1", "irc_ubuntu", "irc"),
    ]
    # The bad line sends the file through the line-by-line reader, which must read gzip too.
    tolerant = rows_of(broken)
    assert [r["text"] for r in tolerant if r["error"] is None] == [f"hello {i}" for i in range(5)]
    assert [(r["seq"], r["error"].split(":")[0]) for r in tolerant if r["error"]] == [(3, "malformed_json")]
    assert len(rows_of(broken, max_rows=2)) == 2


def test_platform_is_the_rows_own_or_a_whole_word_of_its_source_alike_on_both_paths(tmp_path):
    cases = [  # (source, the row's own platform) -> platform
        (("irc_ubuntu", None), "irc"),
        (("ubuntu-irc", None), "irc"),
        (("#irc", None), "irc"),
        (("IRC.libera", None), "irc"),
        (("circle", None), "chat"),
        (("fabric", None), "chat"),
        (("slackers", None), "chat"),
        (("team-slack", None), "slack"),
        (("my_discord", None), "discord"),
        (("circle", "discord"), "discord"),
        (("irc_ubuntu", "Slack"), "slack"),
        (("irc_ubuntu", "teams"), "irc"),
        (("irc_ubuntu", 5), "irc"),
        ((None, None), "irc"),  # no source: the part's (`my-irc`) fills it and names the platform
        (("", None), "chat"),
    ]
    lines = []
    for i, ((source, platform), _) in enumerate(cases):
        own = {} if platform is None else {"platform": platform}
        lines.append(chat_line(i, "c1", f"hello {i}", source=source, **own))
    clean, broken = tmp_path / "clean.jsonl", tmp_path / "broken.jsonl"
    clean.write_text("\n".join(lines) + "\n")
    broken.write_text("\n".join(['{"text": "cut', *lines]) + "\n")  # the bad line forces the tolerant reader

    def platforms(path) -> list[tuple]:
        with tempfile.TemporaryDirectory() as cache:
            rows = raw_rows([chat_jsonl_part(path, "my-irc", None)], Path(cache))
        return [(r["source"], r["platform"]) for r in rows if r["error"] is None]

    expected = [("my-irc" if source is None else source, platform) for (source, _), platform in cases]
    assert platforms(clean) == expected
    assert platforms(broken) == expected


def slack_day(messages: list[tuple[str, str, str]]) -> str:
    return json.dumps([{"type": "message", "user": u, "text": t, "ts": ts} for u, t, ts in messages])


def test_gold_conversation_ids_are_per_file_unless_said_global(workdir, warehouse_db):
    imports = workdir / "data" / "imports"
    (imports / "team").mkdir()
    for name in ("a.jsonl", "team/b.jsonl"):
        lines = [chat_line(i, "c1", f"{name} {i}", message_id=f"{name}-m{i}") for i in range(3)]
        (imports / name).write_text("".join(line + "\n" for line in lines))

    def conversations(**raw_config) -> list[tuple]:
        assert materialize_source("chat_export", warehouse_db, raw_config).success
        with duckdb.connect(str(warehouse_db), read_only=True) as con:
            return con.execute(
                "SELECT conversation_id, count(*) FROM messages WHERE source = 'chat_export' GROUP BY 1 ORDER BY 1"
            ).fetchall()

    assert conversations() == [("a.jsonl:c1", 3), ("team/b.jsonl:c1", 3)]
    assert conversations(global_conversation_ids=True) == [("c1", 6)]


def test_chat_jsonl(tmp_path):
    (tmp_path / "mine.jsonl").write_text("\n".join(chat_line(i, "c1", f"hello {i}") for i in range(3)) + "\n")
    rows = read(tmp_path)
    assert [r["text"] for r in rows] == ["hello 0", "hello 1", "hello 2"]
    assert rows[0]["platform"] == "irc" and rows[2]["seq"] == 3 and rows[0]["error"] is None


def test_slack_export_folder(tmp_path):
    export = tmp_path / "acme-slack"
    (export / "general").mkdir(parents=True)
    (export / "channels.json").write_text("[]")
    (export / "users.json").write_text(json.dumps([{"id": "U1", "name": "ann", "real_name": "Ann"}]))
    (export / "general" / "2021-03-01.json").write_text(slack_day([("U1", "deploy is out", "1614556800.0001")]))
    rows = read(tmp_path)
    assert detect_format(export) == "slack_export"
    assert [(r["channel"], r["author"], r["text"], r["platform"]) for r in rows] == [
        ("general", "Ann", "deploy is out", "slack")
    ]


def test_slack_export_zip(tmp_path):
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as zf:
        zf.writestr("channels.json", "[]")
        zf.writestr("users.json", json.dumps([{"id": "U1", "name": "ann"}]))
        zf.writestr("random/2021-03-01.json", slack_day([("U1", "lunch?", "1614556800.0001")]))
    rows = read(tmp_path)
    assert [(r["channel"], r["author"], r["text"]) for r in rows] == [("random", "ann", "lunch?")]


def test_discord_chat_exporter_json(tmp_path):
    export = {
        "guild": {"id": "1", "name": "Guild", "iconUrl": ""},
        "channel": {
            "id": "2",
            "type": "GuildTextChat",
            "categoryId": "3",
            "category": "Text",
            "name": "help",
            "topic": None,
        },
        "dateRange": {"after": None, "before": None},
        "exportedAt": "2024-01-01T00:00:00+00:00",
        "messages": [
            {
                "id": "10",
                "type": "Default",
                "timestamp": "2024-01-01T10:00:00+00:00",
                "timestampEdited": None,
                "callEndedTimestamp": None,
                "isPinned": False,
                "content": "my build fails",
                "author": {
                    "id": "5",
                    "name": "kim",
                    "discriminator": "0000",
                    "nickname": "Kim",
                    "isBot": False,
                },
                "attachments": [],
                "embeds": [],
                "stickers": [],
                "reactions": [],
                "mentions": [],
            },
            {
                "id": "11",
                "type": "Reply",
                "timestamp": "2024-01-01T10:01:00+00:00",
                "timestampEdited": None,
                "callEndedTimestamp": None,
                "isPinned": False,
                "content": "which error?",
                "author": {
                    "id": "6",
                    "name": "lee",
                    "discriminator": "0000",
                    "nickname": "lee",
                    "isBot": False,
                },
                "attachments": [],
                "embeds": [],
                "stickers": [],
                "reactions": [],
                "mentions": [],
                "reference": {"messageId": "10", "channelId": "2", "guildId": "1"},
            },
            {
                "id": "12",
                "type": "GuildMemberJoin",
                "timestamp": "2024-01-01T10:02:00+00:00",
                "content": "",
                "author": {"id": "7", "name": "new", "nickname": "new"},
            },
        ],
        "messageCount": 3,
    }
    (tmp_path / "Guild - help [2].json").write_text(json.dumps(export))
    rows = read(tmp_path)
    good = [r for r in rows if r["error"] is None]
    assert [(r["author"], r["text"], r["reply_to"]) for r in good] == [
        ("Kim", "my build fails", None),
        ("lee", "which error?", "10"),
    ]
    assert [r["error"] for r in rows if r["error"]] == ["system_message: GuildMemberJoin"]


def test_plain_irc_log(tmp_path):
    (tmp_path / "#ubuntu.2019-05-04.log").write_text(
        "[23:58] <ann> grub is gone after the update\n"
        "[23:59] *** bob has joined #ubuntu\n"
        "[00:01] <bob> ann: boot a live usb\n"
        "[00:02] * ann tries\n"
    )
    rows = read(tmp_path)
    good = [r for r in rows if r["error"] is None]
    assert [(r["author"], r["text"]) for r in good] == [
        ("ann", "grub is gone after the update"),
        ("bob", "ann: boot a live usb"),
        ("ann", "/me tries"),
    ]
    assert good[0]["timestamp"] == "2019-05-04T23:58:00" and good[1]["timestamp"] == "2019-05-05T00:01:00"
    assert [r["error"] for r in rows if r["error"]] == ["system_message"]


@pytest.mark.parametrize("name", ["#ubuntu.2019-05-04.log", "znc_libera_#ubuntu_20190504.log"])
def test_irc_log_day_from_a_date_in_the_file_name(tmp_path, name):
    (tmp_path / name).write_text("[23:59] <ann> hi\n[00:01] <bob> hello\n")
    assert [r["timestamp"] for r in read(tmp_path)] == ["2019-05-04T23:59:00", "2019-05-05T00:01:00"]


IRC_CLIENT_MARKERS = {  # a log opening on 2019-05-04, the day changing to 05-05, a marker after a silent day
    "irssi": (
        "--- Log opened Sat May 04 23:50:00 2019",
        "--- Day changed Sun May 05 2019",
        "--- Day changed Wed May 08 2019",
    ),
    "mirc": (
        "Session Start: Sat May 04 23:50:00 2019",
        "Session Time: Sun May 05 00:00:00 2019",
        "Session Time: Wed May 08 00:00:00 2019",
    ),
    "xchat": (
        "**** BEGIN LOGGING AT Sat May  4 23:50:00 2019",
        "**** BEGIN LOGGING AT Sun May  5 00:00:30 2019",
        "**** BEGIN LOGGING AT Wed May  8 08:59:00 2019",
    ),
    "iso": ("*** Day changed to 2019-05-04", "*** Day changed to 2019-05-05", "*** Day changed to 2019-05-08"),
}


@pytest.mark.parametrize("client", IRC_CLIENT_MARKERS)
def test_irc_log_day_from_the_logs_date_markers(tmp_path, client):
    opened, changed, later = IRC_CLIENT_MARKERS[client]
    lines = [
        "[23:40] <early> said above the first marker",
        opened,
        "[23:58] <ann> grub is gone",
        changed,
        "[00:01] <bob> boot a live usb",
        "[23:59] <ann> still here",
        "[00:02] <bob> night",  # no marker: rolls over at midnight
        later,  # two days on, which no rollover could tell
        "[09:00] <ann> morning",
    ]
    (tmp_path / "#ubuntu.log").write_text("\n".join(lines) + "\n")
    rows = read(tmp_path)
    assert [r["timestamp"] for r in rows if r["error"] is None] == [
        "2019-05-04T23:58:00",
        "2019-05-05T00:01:00",
        "2019-05-05T23:59:00",
        "2019-05-06T00:02:00",
        "2019-05-08T09:00:00",
    ]
    errors = [(r["seq"], r["error"].split(":")[0], r["text"]) for r in rows if r["error"]]
    assert errors == [
        (1, "no_date", lines[0]),
        (2, "system_message", opened),
        (4, "system_message", changed),
        (8, "system_message", later),
    ]


def test_irc_log_without_a_date_is_quarantined_unless_run_config_gives_one(workdir, warehouse_db):
    imports = workdir / "data" / "imports"
    lines = ["[10:00] <ann> which kernel?", "[10:01] *** bob has joined #ubuntu", "[10:02] <bob> 6.8"]
    (imports / "#ubuntu.log").write_text("\n".join(lines) + "\n")
    assert [(r["error"], r["text"]) for r in read(imports)] == [
        ("no_date: put YYYY-MM-DD in the file name or set irc_log_date", lines[0]),
        ("system_message", lines[1]),
        ("no_date: put YYYY-MM-DD in the file name or set irc_log_date", lines[2]),
    ]
    dated = read(imports, irc_log_date="2019-05-04")
    assert [r["timestamp"] for r in dated if r["error"] is None] == ["2019-05-04T10:00:00", "2019-05-04T10:02:00"]
    with pytest.raises(SourceConfigError, match="irc_log_date"):
        read(imports, irc_log_date="May 4th")
    # The run config field reaches the loader.
    assert materialize_source("chat_export", warehouse_db, {"irc_log_date": "2019-05-04"}).success
    with duckdb.connect(str(warehouse_db), read_only=True) as con:
        stamps = con.execute("SELECT strftime(ts, '%Y-%m-%d %H:%M') FROM messages ORDER BY ts").fetchall()
    assert stamps == [("2019-05-04 10:00",), ("2019-05-04 10:02",)]


def test_format_is_told_by_the_content_not_the_file_name(tmp_path):
    (tmp_path / "circle.txt").write_text("[10:00] <ann> which kernel?\n[10:02] <bob> 6.8\n")
    (tmp_path / "irc.txt").write_text("Notes from the irc meeting\n- move to matrix\n")
    assert detect_format(tmp_path / "circle.txt") == "irc_log"
    assert detect_format(tmp_path / "irc.txt") is None
    rows = read(tmp_path, irc_log_date="2019-05-04")
    assert [(r["origin"], r["platform"], r["error"]) for r in rows if r["error"] is None] == [
        ("circle.txt", "irc", None),
        ("circle.txt", "irc", None),
    ]
    assert [(r["origin"], r["error"].split(":")[0]) for r in rows if r["error"]] == [("irc.txt", "unknown_format")]


def test_unknown_format_is_quarantined_with_a_reason(tmp_path):
    (tmp_path / "notes.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "ok.jsonl").write_text(chat_line(1, "c1", "hi") + "\n")
    rows = read(tmp_path)
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 1 and errors[0]["error"].startswith("unknown_format") and errors[0]["origin"] == "notes.csv"
    assert [r["text"] for r in rows if r["error"] is None] == ["hi"]


@pytest.mark.parametrize("make_folder", [False, True])
def test_empty_or_missing_imports_folder_is_a_clear_error(tmp_path, make_folder):
    folder = tmp_path / "imports"
    if make_folder:
        folder.mkdir()
        (folder / ".gitkeep").write_text("")
    with pytest.raises(EmptyImportsError, match="THREADEMBED_IMPORTS_DIR"):
        read(folder)


def test_zip_entries_pointing_outside_are_refused_and_nothing_is_written(tmp_path):
    imports = tmp_path / "imports"
    imports.mkdir()
    with zipfile.ZipFile(imports / "evil.zip", "w") as zf:
        zf.writestr("general/2021-03-01.json", slack_day([("U1", "fine", "1614556800.0001")]))
        zf.writestr("../../escaped/2021-03-01.json", slack_day([("U1", "evil", "1614556800.0002")]))
        zf.writestr("/abs/2021-03-01.json", slack_day([("U1", "evil", "1614556800.0003")]))
    before = sorted(p for p in tmp_path.rglob("*"))
    rows = read(imports)
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert [r["text"] for r in rows if r["error"] is None] == ["fine"]
    errors = [r["error"] for r in rows if r["error"]]
    assert len(errors) == 2 and all(e.startswith("unsafe_archive_entry") for e in errors)


def test_zip_expanding_past_the_limit_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("general/2021-03-01.json", "[" + " " * 3_000_000 + "]")
    rows = read(tmp_path, max_archive_bytes=1_000_000)
    assert len(rows) == 1 and rows[0]["error"].startswith("archive_too_large")


def test_zip_whose_header_lies_about_its_size_is_stopped_on_the_bytes_read(tmp_path):
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("general/2021-03-01.json", "[" + " " * 3_000_000 + "]")
    data = bytearray(path.read_bytes())
    real = (3_000_002).to_bytes(4, "little")
    for start in [i for i in range(len(data) - 3) if data[i : i + 4] == real]:
        data[start : start + 4] = (100).to_bytes(4, "little")  # local and central headers claim 100 bytes
    path.write_bytes(bytes(data))
    rows = read(tmp_path, max_archive_bytes=1_000_000)
    assert len(rows) == 1 and rows[0]["error"].split(":")[0] in {"archive_too_large", "malformed_archive"}


def warehouse_rows(warehouse, sql: str) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def rows_in_equal_rows_kept(warehouse, lines_in: int) -> None:
    """Every line handed in is a message or a quarantined row: nothing lost, nothing merged away."""
    kept = warehouse_rows(
        warehouse,
        "SELECT (SELECT count(*) FROM messages WHERE source = 'chat_export')"
        " + (SELECT count(*) FROM quarantine WHERE source = 'chat_export')",
    )
    assert kept == [(lines_in,)]


def test_bouncer_irc_tree_keeps_channels_apart_and_days_of_a_channel_together(workdir, warehouse_db):
    network = workdir / "data" / "imports" / "libera"
    for channel, day, lines in [
        ("#ubuntu", "2019-05-04", ["[23:50] <ann> grub is gone after the update", "[23:58] <bob> ann: live usb"]),
        ("#ubuntu", "2019-05-05", ["[00:03] <ann> bob: booted, now what", "[00:05] <bob> ann: chroot in"]),
        ("#debian", "2019-05-04", ["[23:51] <cid> apt is stuck", "[23:52] <dee> cid: dpkg --configure -a"]),
    ]:
        (network / channel).mkdir(parents=True, exist_ok=True)
        (network / channel / f"{day}.log").write_text("\n".join(lines) + "\n")
    assert materialize_source("chat_export", warehouse_db).success
    rows_in_equal_rows_kept(warehouse_db, 6)
    assert warehouse_rows(warehouse_db, "SELECT count(*) FROM quarantine") == [(0,)]
    by_channel = warehouse_rows(
        warehouse_db,
        "SELECT channel, count(*), count(DISTINCT conversation_id) FROM messages GROUP BY 1 ORDER BY 1",
    )
    # One conversation in #ubuntu across midnight (a 5-minute silence), one in #debian, none mixed.
    assert by_channel == [("#debian", 2, 1), ("#ubuntu", 4, 1)]


@pytest.mark.parametrize(
    ("relative", "head", "channel"),
    [
        ("libera/#ubuntu/2019-05-04.log", "", "#ubuntu"),
        ("logs/2019-05-04.log", "Session Start: Sat May 04 10:00:00 2019\nSession Ident: #kde\n", "#kde"),
        ("logs/2019-05-04.log", "**** BEGIN LOGGING AT Sat May  4 10:00:00 2019\n* Now talking on #gnome\n", "#gnome"),
        ("libera/#ubuntu-2019-05-04.log", "", "#ubuntu"),
        ("irc.libera.#python.weechatlog", "", "#python"),
        ("znc_libera_#ubuntu_20190504.log", "", "#ubuntu"),
        ("fedora/20190504.log", "", "fedora"),
    ],
)
def test_irc_channel_from_folder_header_or_name_without_its_date(tmp_path, relative, head, channel):
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "[10:00] <ann> hi\n")
    assert irc_channel(path, tmp_path) == channel


def test_chat_jsonl_ids_are_per_file_so_repeated_ids_neither_collide_nor_link(workdir, warehouse_db):
    imports = workdir / "data" / "imports"
    for name in ("a.jsonl", "b.jsonl"):  # both files say m0, m1, m2, and m1 and m2 reply to m0
        lines = [chat_line(i, None, f"{name} {i}", reply_to="m0" if i else None) for i in range(3)]
        (imports / name).write_text("".join(line + "\n" for line in lines))
    assert materialize_source("chat_export", warehouse_db).success
    rows_in_equal_rows_kept(warehouse_db, 6)
    assert warehouse_rows(warehouse_db, "SELECT count(*) FROM quarantine") == [(0,)]
    replies = warehouse_rows(
        warehouse_db, "SELECT message_id, reply_to FROM messages WHERE reply_to IS NOT NULL ORDER BY 1"
    )
    assert replies == [("a.jsonl:m1", "a.jsonl:m0"), ("a.jsonl:m2", "a.jsonl:m0")] + [
        ("b.jsonl:m1", "b.jsonl:m0"),
        ("b.jsonl:m2", "b.jsonl:m0"),
    ]
    conversations = warehouse_rows(
        warehouse_db, "SELECT list(DISTINCT text[1]) FROM messages GROUP BY conversation_id ORDER BY 1"
    )
    assert conversations == [(["a"],), (["b"],)]  # each file's reply chain is its own conversation


def discord_export(guild: tuple[str, str], channel: tuple[str, str], texts: list[str]) -> dict:
    """A DiscordChatExporter JSON export of one channel (`(id, name)` of its server and of itself)."""
    messages = [
        {
            "id": f"{channel[0]}{i}",
            "type": "Default",
            "timestamp": f"2024-01-01T10:0{i}:00+00:00",
            "content": text,
            "author": {"id": str(i % 2), "name": f"user{i % 2}", "nickname": f"user{i % 2}"},
        }
        for i, text in enumerate(texts)
    ]
    return {
        "guild": {"id": guild[0], "name": guild[1], "iconUrl": ""},
        "channel": {"id": channel[0], "type": "GuildTextChat", "name": channel[1]},
        "messages": messages,
        "messageCount": len(messages),
    }


def test_same_named_discord_channels_of_two_servers_stay_apart(workdir, warehouse_db):
    imports = workdir / "data" / "imports"
    for guild, channel, texts in [
        (("100", "Rust"), ("7", "help"), ["borrow checker says no", "show the error"]),
        (("200", "Python"), ("8", "help"), ["pip is broken", "which version?"]),
    ]:
        export = discord_export(guild, channel, texts)
        (imports / f"{guild[1]} - help [{channel[0]}].json").write_text(json.dumps(export))
    assert materialize_source("chat_export", warehouse_db).success
    rows_in_equal_rows_kept(warehouse_db, 4)
    channels = warehouse_rows(
        warehouse_db,
        "SELECT channel, channel_name, count(*), count(DISTINCT conversation_id) FROM messages GROUP BY ALL ORDER BY 1",
    )
    assert channels == [("100/7", "Rust / #help", 2, 1), ("200/8", "Python / #help", 2, 1)]
    named = warehouse_rows(warehouse_db, "SELECT DISTINCT channel_name FROM conversations ORDER BY 1")
    assert named == [("Python / #help",), ("Rust / #help",)]
