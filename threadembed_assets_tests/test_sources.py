"""Every loader on small files written in its upstream schema."""

import dataclasses
import gzip
import io
import itertools
import json
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from threadembed_assets.sources import assets as raw_assets
from threadembed_assets.sources import registry
from threadembed_assets.sources.config import RawSourceConfig, SourceConfigError
from threadembed_assets.sources.hub import HubUnavailableError, is_transient
from threadembed_assets.sources.irc import irc_disentangle_rows
from threadembed_assets.sources.raw_cache import raw_cache_stats
from threadembed_assets.sources.registry import SOURCES, UBUNTU_IRC_FILE
from threadembed_assets_tests.conftest import materialize_source, need_shared, query, raw_rows


def load(source: str, **config) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        return raw_rows(SOURCES[source].load(RawSourceConfig(**config)), Path(folder))


def messages_only(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["error"] is None]


def test_irc_disentangle_streams_a_day_at_a_time():
    def records():
        for i in range(3):
            yield {"id": i, "raw": f"[04:1{i}] <ann> line {i}", "date": "2004-11-15", "connections": [0]}
        yield {"id": 3, "raw": "[05:00] <bo> next day", "date": "2004-11-16", "connections": []}
        raise AssertionError("read past the second day's first record before giving the first day's rows")

    first_day = list(itertools.islice(irc_disentangle_rows(records(), "irc_disentangle", "hub"), 3))
    assert [r["message_id"] for r in first_day] == ["0", "1", "2"]
    assert len({r["conversation_id"] for r in first_day}) == 1  # linked within the day


def test_hub_sources_keep_a_default_row_budget_unless_told(tmp_path, monkeypatch):
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    pq.write_table(
        pa.table({"prompt_id": [f"p{i}" for i in range(50)], "messages": [turns] * 50}), tmp_path / "t.parquet"
    )
    monkeypatch.setattr(registry, "HUB_ROW_BUDGET", 30)
    assert len(load("ultrachat", path=str(tmp_path))) == 30
    assert len(load("ultrachat", path=str(tmp_path), max_rows=0)) == 100  # 0: no budget
    assert len(load("ultrachat", path=str(tmp_path), max_rows=5)) == 5


def with_loader(monkeypatch, source: str, loader) -> dg.ExecuteInProcessResult:
    """Materialize partition `source` of raw_messages with its loader replaced."""
    monkeypatch.setitem(SOURCES, source, dataclasses.replace(SOURCES[source], loader=loader))
    return dg.materialize([raw_assets.raw_messages], partition_key=source, raise_on_error=False)


def step_failure(result: dg.ExecuteInProcessResult):
    return next(e for e in result.all_events if e.is_step_failure).step_failure_data.error


def test_a_loader_bug_keeps_its_traceback_and_a_configuration_error_is_a_message(workdir, monkeypatch):
    def broken(spec, config):
        raise ValueError("a bug inside a loader")

    def misconfigured(spec, config):
        raise SourceConfigError("no files at /nowhere: set run config path")

    bug = step_failure(with_loader(monkeypatch, "clojurians", broken))
    assert bug.cause is not None and bug.cause.cls_name == "ValueError" and bug.cause.stack  # the traceback stays
    told = step_failure(with_loader(monkeypatch, "clojurians", misconfigured))
    assert "raw_messages[clojurians]: no files at /nowhere" in told.message and told.cause is None


def test_hub_streams_retry_with_backoff_and_local_sources_do_not(workdir, monkeypatch):
    monkeypatch.setattr(raw_assets, "HUB_RETRY_DELAY_S", 0.0)
    calls = []

    def drops_once(spec, config):
        calls.append(spec.key)
        if calls.count(spec.key) == 1:
            raise ConnectionError("the hub closed the stream")
        return SOURCES["sample"].loader(spec, RawSourceConfig(n_messages=50))

    assert with_loader(monkeypatch, "ultrachat", drops_once).success
    assert calls == ["ultrachat", "ultrachat"]
    failed = with_loader(monkeypatch, "chat_export", drops_once)
    assert not failed.success and calls.count("chat_export") == 1
    assert step_failure(failed).cause.cls_name == "ConnectionError"

    def always_drops(spec, config):
        calls.append(spec.key)
        raise ConnectionError("the hub is down")

    exhausted = with_loader(monkeypatch, "flyte_slack", always_drops)
    assert calls.count("flyte_slack") == 1 + raw_assets.HUB_RETRIES
    assert step_failure(exhausted).cause.cls_name == "ConnectionError"  # the last try's own error, not a retry request


def test_a_loader_bug_on_a_hub_stream_fails_at_once_with_its_traceback(workdir, monkeypatch):
    calls = []

    def schema_changed(spec, config):
        calls.append(spec.key)
        raise KeyError("messages")  # the upstream renamed a column: no retry can pass

    failed = with_loader(monkeypatch, "ultrachat", schema_changed)
    assert calls == ["ultrachat"]
    assert step_failure(failed).cause.cls_name == "KeyError" and step_failure(failed).cause.stack


class HTTPAnswer(OSError):
    """An HTTP client's error carrying the server's answer, as huggingface_hub's HfHubHTTPError does."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.response = type("Response", (), {"status_code": status})()


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionError("reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (HTTPAnswer(503), True),
        (HTTPAnswer(429), True),
        (HTTPAnswer(404), False),
        (HTTPAnswer(401), False),
        (ValueError("a bug"), False),
        (FileNotFoundError("no such file"), False),
    ],
)
def test_only_network_failures_are_transient(error, transient):
    assert is_transient(error) is transient
    try:  # the same error wrapped by a loader keeps its verdict
        raise RuntimeError("stream broke") from error
    except RuntimeError as wrapped:
        assert is_transient(wrapped) is transient


def test_irc_disentangle_conversations_from_connections(tmp_path):
    lines = [
        (1000, "[04:14] <alice> my wifi died after the update", [1000, 1002]),
        (1001, "[04:15] <bob> anyone tried the new kernel?", [1001, 1003]),
        (1002, "[04:15] <carol> alice: check dmesg for firmware errors", [1000]),
        (1003, "[04:16] <dave> bob: yes, works fine", [1001]),
        (1004, "=== erin is now known as erin_", []),
        (1005, "[04:17]  * alice reboots", [1002]),
    ]
    table = pa.table(
        {
            "id": pa.array([i for i, _, _ in lines], pa.int32()),
            "raw": [raw for _, raw, _ in lines],
            "ascii": [raw for _, raw, _ in lines],
            "tokenized": [raw.lower() for _, raw, _ in lines],
            "date": ["2004-11-15"] * len(lines),
            "connections": pa.array([c for _, _, c in lines], pa.list_(pa.int32())),
        }
    )
    pq.write_table(table, tmp_path / "train-00000.parquet")
    rows = load("irc_disentangle", path=str(tmp_path))
    by_id = {r["message_id"]: r for r in messages_only(rows)}
    assert by_id["1002"]["conversation_id"] == by_id["1000"]["conversation_id"]
    assert by_id["1005"]["conversation_id"] == by_id["1000"]["conversation_id"]
    assert by_id["1003"]["conversation_id"] == by_id["1001"]["conversation_id"] != by_id["1000"]["conversation_id"]
    assert by_id["1002"]["reply_to"] == "1000" and by_id["1000"]["reply_to"] is None
    assert by_id["1002"]["author"] == "carol" and by_id["1002"]["timestamp"] == "2004-11-15T04:15:00"
    assert by_id["1005"]["text"] == "/me reboots"
    assert [r["error"] for r in rows if r["error"]] == ["system_message"]


def test_discord_dialogues_chatml(tmp_path):
    chains = [
        "<|im_start|>user\nanyone know a good pc case?<|im_end|>\n<|im_start|>assistant\nthe mesh ones<|im_end|>\n"
        "<|im_start|>user\nthanks<|im_end|>",
        "<|im_start|>user\nlol<|im_end|>\n<|im_start|>assistant\nxd<|end_of_text|>",
    ]
    pq.write_table(pa.table({"text": chains, "tokens": [30, 8]}), tmp_path / "train.parquet")
    rows = load("discord_dialogues", path=str(tmp_path / "train.parquet"))
    assert [r["text"] for r in rows] == [
        "anyone know a good pc case?",
        "the mesh ones",
        "thanks",
        "lol",
        "xd",
    ]
    assert len({r["conversation_id"] for r in rows}) == 2
    assert rows[1]["reply_to"] == rows[0]["message_id"] and rows[0]["platform"] == "discord"


def _discord_api_message(message_id: int, channel_id: int, content: str, kind: int = 0, reply: int | None = None):
    message = {
        "id": str(message_id),
        "channel_id": str(channel_id),
        "channel_name": f"chan{channel_id}",
        "author": {"id": "9", "username": f"user{message_id % 3}", "discriminator": "0", "bot": False},
        "content": content,
        "timestamp": "2023-05-01T10:00:00.000000+00:00",
        "edited_timestamp": None,
        "type": kind,
        "attachments": [],
        "embeds": [],
        "mentions": [],
        "pinned": False,
        "tts": False,
        "flags": 0,
    }
    if reply:
        message["message_reference"] = {"message_id": str(reply), "guild_id": "1"}
    return message


def _write_unveiled_zst(path, guilds: dict[str, list[dict]]):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, messages in guilds.items():
            data = "\n".join(json.dumps(m) for m in messages).encode()
            info = tarfile.TarInfo(f"./{name}.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(zstandard.ZstdCompressor().compress(buffer.getvalue()))


def test_discord_unveiled_sample_is_deterministic_seedable_and_bounded(tmp_path):
    hour = 3_600_000 << 22
    messages = [
        _discord_api_message(hour * h + i, channel, f"message {h} {i}", reply=hour * h + i - 1 if i else None)
        for channel in (1, 2)
        for h in range(40)
        for i in range(3)
    ]
    messages.append(_discord_api_message(hour * 41, 1, "", kind=7))  # a member join
    archive = tmp_path / "dataset.zst"
    _write_unveiled_zst(archive, {"111": messages[:120], "222": messages[120:]})

    everything = load("discord_unveiled", path=str(archive), sample_rate=1.0)
    assert len(messages_only(everything)) == 240
    assert [r["error"] for r in everything if r["error"]] == ["system_message: type 7"]

    first = load("discord_unveiled", path=str(archive), sample_rate=0.3, seed=1)
    again = load("discord_unveiled", path=str(archive), sample_rate=0.3, seed=1)
    other = load("discord_unveiled", path=str(archive), sample_rate=0.3, seed=2)
    ids = [r["message_id"] for r in messages_only(first)]
    assert ids == [r["message_id"] for r in messages_only(again)]
    assert ids != [r["message_id"] for r in messages_only(other)]
    assert 0 < len(ids) < 240 and len(ids) % 3 == 0  # whole channel-hours, so conversations stay whole
    kept = {r["message_id"] for r in messages_only(first)}
    assert all(r["reply_to"] in kept for r in messages_only(first) if r["reply_to"])

    bounded = load("discord_unveiled", path=str(archive), sample_rate=1.0, max_rows=10)
    assert len(bounded) == 10


def test_slack_disentangled_xml(tmp_path):
    folder = tmp_path / "pythondev" / "2018"
    folder.mkdir(parents=True)
    (folder / "merged-pythondev-help.xml").write_text(
        "<slack><team_domain>pythondev</team_domain><channel_name>help</channel_name>"
        "<start_date>2018-12-01T00:00:00</start_date><end_date>2018-12-31T00:00:00</end_date>"
        '<message conversation_id="1"><ts>2018-12-31T04:52:41.387200</ts><user>Fred</user>'
        "<text>how do I read a csv with pandas?</text></message>"
        '<message conversation_id="2"><ts>2018-12-31T04:53:00.000000</ts><user>Ann</user>'
        "<text>is the meeting today?</text></message>"
        '<message conversation_id="1"><ts>2018-12-31T04:54:02.100000</ts><user>Bo</user>'
        "<text>&lt;@Fred&gt; pd.read_csv(path)</text></message></slack>"
    )
    rows = load("slack_disentangled", path=str(tmp_path))
    assert [r["author"] for r in rows] == ["Fred", "Ann", "Bo"]
    assert rows[0]["conversation_id"] == rows[2]["conversation_id"] != rows[1]["conversation_id"]
    assert rows[2]["text"] == "<@Fred> pd.read_csv(path)" and rows[0]["timestamp"].startswith("2018-12-31T04:52")


def test_slack_disentangled_without_files_says_where_to_put_them(workdir):
    with pytest.raises(SourceConfigError, match="slack_disentangled.*path"):
        load("slack_disentangled")


@pytest.mark.parametrize("source", ["flyte_slack", "slack_long_responses"])
def test_slack_thread_qa_datasets(tmp_path, source):
    table = pa.table(
        {
            "input": ["U024: ```how do I cache a task output?```", "U031: ```map task fails on k8s```"],
            "output": ["set cache=True and a cache_version", "check the pod resources\nand the image"],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    rows = load(source, path=str(tmp_path))
    assert [r["text"] for r in rows[:2]] == [
        "how do I cache a task output?",
        "set cache=True and a cache_version",
    ]
    assert rows[0]["author"] == "U024" and rows[1]["reply_to"] == rows[0]["message_id"]
    assert len({r["conversation_id"] for r in rows}) == 2


def test_clojurians_slack_export_folder(tmp_path):
    (tmp_path / "users.json").write_text(json.dumps([{"id": "U1", "name": "rich"}, {"id": "U2", "name": "alex"}]))
    (tmp_path / "channels.json").write_text(json.dumps([{"id": "C1", "name": "beginners"}]))
    (tmp_path / "beginners").mkdir()
    (tmp_path / "beginners" / "2020-01-02.json").write_text(
        json.dumps(
            [
                {
                    "type": "message",
                    "user": "U1",
                    "text": "how do I reverse a vector?",
                    "ts": "1577923200.000100",
                    "thread_ts": "1577923200.000100",
                },
                {
                    "type": "message",
                    "user": "U2",
                    "text": "rseq or reverse",
                    "ts": "1577923260.000200",
                    "thread_ts": "1577923200.000100",
                    "parent_user_id": "U1",
                },
                {
                    "type": "message",
                    "subtype": "channel_join",
                    "user": "U2",
                    "text": "<@U2> has joined",
                    "ts": "1577923000.1",
                },
            ]
        )
    )
    rows = load("clojurians", path=str(tmp_path))
    good = messages_only(rows)
    assert [r["author"] for r in good] == ["rich", "alex"]
    assert good[1]["reply_to"] == good[0]["message_id"] and good[0]["conversation_id"] == good[1]["conversation_id"]
    assert good[0]["timestamp"].startswith("2020-01-02T00:00:00")
    assert [r["error"] for r in rows if r["error"]] == ["system_message: channel_join"]


def test_topical_chat_jsonl(tmp_path):
    record = {
        "article_url": "https://example.com/a",
        "config": "A",
        "content": [
            {
                "message": "Are you a football fan?",
                "agent": "agent_1",
                "sentiment": "Curious to dive deeper",
                "knowledge_source": ["AS1"],
                "turn_rating": "Good",
            },
            {
                "message": "Yes, I watch every weekend",
                "agent": "agent_2",
                "sentiment": "Happy",
                "knowledge_source": ["Personal Knowledge"],
                "turn_rating": "Good",
            },
        ],
        "conversation_rating": {"agent_1": "Good", "agent_2": "Good"},
    }
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    rows = load("topical_chat", path=str(tmp_path / "train.jsonl"))
    assert [(r["author"], r["text"]) for r in rows] == [
        ("agent_1", "Are you a football fan?"),
        ("agent_2", "Yes, I watch every weekend"),
    ]


def test_ultrachat_parquet(tmp_path):
    table = pa.table(
        {
            "prompt": ["How do plants breathe?"],
            "prompt_id": ["abc123"],
            "messages": [
                [
                    {"content": "How do plants breathe?", "role": "user"},
                    {"content": "Through stomata.", "role": "assistant"},
                ]
            ],
        }
    )
    pq.write_table(table, tmp_path / "train_sft-00000.parquet")
    rows = load("ultrachat", path=str(tmp_path))
    assert [r["conversation_id"] for r in rows] == ["abc123", "abc123"]
    assert rows[1]["author"] == "assistant" and rows[1]["reply_to"] == rows[0]["message_id"]


@pytest.mark.parametrize(
    "source",
    [
        "irc_disentangle",
        "discord_dialogues",
        "discord_unveiled",
        "flyte_slack",
        "slack_long_responses",
        "topical_chat",
        "ultrachat",
    ],
)
def test_hub_loaders_fail_at_once_offline_with_what_to_do(source):
    with pytest.raises(HubUnavailableError) as raised:
        load(source)
    message = str(raised.value)
    assert source in message and SOURCES[source].upstream in message and "path" in message


def test_sample_is_deterministic_multi_platform_and_interleaved():
    rows = load("sample", n_messages=1400, seed=3)
    assert rows == load("sample", n_messages=1400, seed=3)
    assert rows != load("sample", n_messages=1400, seed=4)
    assert 1300 <= len(rows) <= 1500
    assert {r["platform"] for r in rows} == {"irc", "discord", "slack"}
    ids = {r["message_id"] for r in rows}
    assert len(ids) == len(rows)
    assert all(r["reply_to"] in ids for r in rows if r["reply_to"])
    assert sum(1 for r in rows if r["reply_to"]) > len(rows) / 2
    # Threads interleave: in a channel, consecutive messages often belong to different conversations.
    switches = sum(
        1
        for a, b in zip(rows, rows[1:], strict=False)
        if a["channel"] == b["channel"] and a["conversation_id"] != b["conversation_id"]
    )
    assert switches > len(rows) / 4
    assert any(r["platform"] == "irc" and ": " in r["text"][:12] for r in rows)  # nick address
    assert len({r["text"].split()[0] for r in rows}) > 100  # topical variety


def test_ubuntu_irc_reads_the_shipped_slice_as_irc_chat():
    rows = load("ubuntu_irc", max_rows=200)
    assert len(rows) == 200 and rows == load("ubuntu_irc", max_rows=200)
    assert {(r["source"], r["platform"], r["error"]) for r in rows} == {("ubuntu_irc", "irc", None)}
    assert rows[0]["message_id"] == "2004-12-25.train-c:1000" and rows[0]["origin"] == UBUNTU_IRC_FILE.name
    assert all(r["conversation_id"] and r["timestamp"] and r["author"] for r in rows)
    with pytest.raises(SourceConfigError, match="chat_export"):
        load("ubuntu_irc", path="/somewhere/else.jsonl")
    assert (UBUNTU_IRC_FILE.parent / "LICENSE-ubuntu_irc.md").read_text().count("CC-BY-4.0") >= 1


def test_ubuntu_irc_loads_into_the_warehouse_with_gold_conversations(workdir, warehouse_db):
    result = materialize_source("ubuntu_irc", warehouse_db)
    assert result.success
    ((n_messages, n_conversations, n_channels),) = query(
        warehouse_db,
        "SELECT count(*), count(DISTINCT conversation_id), count(DISTINCT channel) FROM messages "
        "WHERE source = 'ubuntu_irc'",
    )
    quarantined = query(warehouse_db, "SELECT reason, count(*) FROM quarantine GROUP BY ALL")
    assert quarantined == [("no_text", 3)]  # three lines of the corpus have empty text, each its own conversation
    assert (n_messages, n_conversations, n_channels) == (20_337 - 3, 3_124 - 3, 51)
    assert query(warehouse_db, "SELECT DISTINCT platform, conversation_method FROM messages") == [("irc", "gold")]
    ((conversation_rows,),) = query(warehouse_db, "SELECT count(*) FROM conversations WHERE source = 'ubuntu_irc'")
    assert conversation_rows == n_conversations
    splits = dict(query(warehouse_db, "SELECT split, count(*) FROM conversations GROUP BY ALL"))
    assert set(splits) == {"train", "dev", "test"} and splits["train"] > splits["dev"] + splits["test"]


@pytest.mark.slow
def test_ubuntu_irc_slice_is_every_third_channel_of_irc_train_unchanged():
    """The shipped file is what data/LICENSE-ubuntu_irc.md says: every third channel of irc_train, in sorted order
    from the first, whole and in order, with `source` set to ubuntu_irc and nothing else changed."""
    with need_shared("irc_train.jsonl").open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    keep = set(sorted({r["channel"] for r in records})[::3])
    expected = [{**r, "source": "ubuntu_irc"} for r in records if r["channel"] in keep]
    with gzip.open(UBUNTU_IRC_FILE, "rt", encoding="utf-8") as handle:
        shipped = [json.loads(line) for line in handle]
    assert shipped == expected
    assert (len(shipped), len(keep), len({r["conversation_id"] for r in shipped})) == (20_337, 51, 3_124)


# A process that writes a raw cache of `n` sample messages and kills itself (SIGKILL, no cleanup) at its k-th
# filesystem change (rename, replace, symlink, unlink, rmtree); k = 0 never.
_DIE_AT_STEP = """
import os, shutil, signal, sys
from pathlib import Path
from threadembed_assets.sources.raw_cache import write_raw_cache
from threadembed_assets.sources.sample import generate_sample
from threadembed_assets.sources.schema import batched

dest, n, k = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
calls = 0

def dying(change):
    def wrapped(*args, **kwargs):
        global calls
        calls += 1
        if calls == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return change(*args, **kwargs)
    return wrapped

for module, name in [(os, "rename"), (os, "replace"), (os, "symlink"), (os, "unlink"), (shutil, "rmtree")]:
    setattr(module, name, dying(getattr(module, name)))
write_raw_cache(batched(generate_sample(n, seed=3), size=100), dest)
print(calls)
"""


def _raw_cache_rows(dest: Path) -> int:
    return raw_cache_stats(dest)["rows"]


def test_a_raw_cache_load_killed_at_any_step_leaves_the_old_cache_or_the_new_one(tmp_path):
    """Kill the writer at each of its filesystem changes in turn: readers then find all of the old cache's rows or all
    of the new one's, never nothing or a mix, and the next load still succeeds."""
    dest = tmp_path / "raw" / "sample"
    run = [sys.executable, "-c", _DIE_AT_STEP, str(dest)]
    subprocess.run([*run, "600", "0"], check=True, capture_output=True)
    old = _raw_cache_rows(dest)
    subprocess.run([*run, "300", "0"], check=True, capture_output=True)
    new = _raw_cache_rows(dest)
    assert 0 < new < old
    outcomes = []
    for size in ("600", "300"):  # each load replaces a cache of the other size
        for k in itertools.count(1):
            before = _raw_cache_rows(dest)
            attempt = subprocess.run([*run, size, str(k)], capture_output=True)
            if attempt.returncode == 0:  # it made fewer than k changes: every step has had its kill
                break
            assert attempt.returncode == -signal.SIGKILL, attempt.stderr
            after = _raw_cache_rows(dest)
            assert after in (old, new), f"killed at step {k}: {after} rows, neither {old} nor {new}"
            outcomes.append(after == before)
            subprocess.run([*run, "300" if size == "600" else "600", "0"], check=True, capture_output=True)
        assert k > 2 and _raw_cache_rows(dest) == (old if size == "600" else new)
    assert True in outcomes and False in outcomes  # some kills came before the switch, some after
    versions = list((tmp_path / "raw" / ".versions" / "sample").iterdir())
    assert len(versions) <= 2, versions  # the current version and the one before it; killed loads are cleaned up
