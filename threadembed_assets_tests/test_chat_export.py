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
from threadembed_assets_tests.conftest import materialize_source, raw_rows

LIMIT = 10 * 1024 * 1024


def read(folder, max_archive_bytes: int = LIMIT) -> list[dict]:
    with tempfile.TemporaryDirectory() as cache:
        return raw_rows(read_imports(folder, "chat_export", max_archive_bytes), Path(cache))


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
