"""`messages` and `conversations` through real Dagster runs on a temporary DuckDB file."""

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster_duckdb import DuckDBResource

from threadembed_assets.definitions import ASSETS
from threadembed_assets.warehouse.connection import WarehouseLockTimeout, connect
from threadembed_assets_tests.conftest import materialize_source, need_shared, query, resources_for


def write_jsonl(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def chat(i: int, text: str = "hello", conversation: str | None = "c1", channel: str = "#a", **extra) -> dict:
    return {
        "source": "mine",
        "channel": channel,
        "message_id": f"m{i}",
        "conversation_id": conversation,
        "reply_to": None,
        "timestamp": f"2020-01-01T10:{i % 60:02d}:00",
        "author": f"u{i % 3}",
        "text": text,
        **extra,
    }


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset)
    return event.materialization.metadata


@pytest.mark.slow
def test_irc_dev_gives_its_330_conversations(workdir, warehouse_db):
    shutil.copy(need_shared("irc_dev.jsonl"), workdir / "data" / "imports" / "irc_dev.jsonl")
    result = materialize_source("chat_export", warehouse_db)
    assert result.success
    ((n_messages, n_conversations),) = query(
        warehouse_db,
        "SELECT count(*), count(DISTINCT conversation_id) FROM messages WHERE source = 'chat_export'",
    )
    quarantined = query(warehouse_db, "SELECT reason, conversation_id FROM quarantine")
    # 2,369 messages in 330 gold conversations; one conversation is a single message with empty text.
    assert n_messages + len(quarantined) == 2369
    assert quarantined == [("no_text", "irc_dev.jsonl:2005-06-27_12:c1134")]  # gold ids are per file
    gold = query(
        warehouse_db,
        "SELECT DISTINCT conversation_id FROM messages UNION SELECT conversation_id FROM quarantine",
    )
    assert n_conversations == 329 and len(gold) == 330
    assert query(warehouse_db, "SELECT DISTINCT conversation_method, platform FROM messages") == [("gold", "irc")]
    assert metadata(result, "conversations")["dagster/row_count"].value == 329
    assert {s for (s,) in query(warehouse_db, "SELECT DISTINCT split FROM conversations")} == {
        "train",
        "dev",
        "test",
    }


def test_rematerialization_is_idempotent_and_leaves_other_partitions_alone(workdir, warehouse_db):
    write_jsonl(workdir / "data" / "imports" / "mine.jsonl", [chat(i, f"text {i}", f"c{i // 4}") for i in range(40)])
    assert materialize_source("sample", warehouse_db, {"n_messages": 600}).success
    assert materialize_source("chat_export", warehouse_db).success
    snapshot_sql = (
        "SELECT source, count(*), count(DISTINCT conversation_id), sum(hash(message_id, conversation_id, split, "
        "position)) FROM messages GROUP BY ALL ORDER BY 1"
    )
    before = query(warehouse_db, snapshot_sql)
    conversations_before = query(warehouse_db, "SELECT * FROM conversations ORDER BY ALL")
    assert materialize_source("sample", warehouse_db, {"n_messages": 600}).success
    assert query(warehouse_db, snapshot_sql) == before
    assert query(warehouse_db, "SELECT * FROM conversations ORDER BY ALL") == conversations_before
    assert [row[0] for row in before] == ["chat_export", "sample"]


def test_bad_rows_are_quarantined_with_reasons_and_counted(workdir, warehouse_db):
    imports = workdir / "data" / "imports"
    lines = [json.dumps(chat(i, f"fine {i}")) for i in range(5)]
    lines.append('{"message_id": "broken", "text": "no closing brace"')
    lines.append(json.dumps(chat(10, text=None)))
    lines.append(json.dumps({k: v for k, v in chat(11).items() if k != "text"}))
    lines.append(json.dumps(chat(1, "same id again")))
    lines.append(json.dumps(chat(12, "x" * 1_000_000)))
    lines.append(json.dumps(chat(13, timestamp="yesterday-ish")))
    with (imports / "mixed.jsonl").open("wb") as handle:
        handle.write("\n".join(lines).encode() + b"\n")
        handle.write(b'{"message_id": "latin", "text": "caf\xe9 au lait", "conversation_id": "c1"}\n')
    result = materialize_source("chat_export", warehouse_db)
    assert result.success
    reasons = dict(query(warehouse_db, "SELECT reason, count(*) FROM quarantine GROUP BY ALL"))
    assert reasons == {
        "malformed_json": 1,
        "no_text": 2,
        "duplicate_message_id": 1,
        "oversize": 1,
        "unparseable_timestamp": 1,
        "invalid_utf8": 1,
    }
    texts = [t for (t,) in query(warehouse_db, "SELECT text FROM messages ORDER BY position")]
    assert texts == [f"fine {i}" for i in range(5)]
    assert metadata(result, "messages")["quarantined"].value == 7
    ((seq, origin),) = query(warehouse_db, "SELECT seq, origin FROM quarantine WHERE reason = 'malformed_json'")
    assert (seq, origin) == (6, "mixed.jsonl")


def test_conversations_are_derived_from_reply_chains_then_time_gaps(workdir, warehouse_db):
    rows = [
        chat(0, "anyone know vim?", None),
        chat(1, "yes", None, reply_to="m0"),
        chat(2, "how do I quit", None, reply_to="m1"),
        chat(3, "lunch?", None),
        chat(4, "sure", None),
        {**chat(5, "back after a long break", None), "timestamp": "2020-01-01T15:00:00"},
        chat(6, "joins the gold thread", None, reply_to="g1"),
        chat(7, "gold root", "gold-1", message_id="g1"),
    ]
    rows[7]["message_id"] = "g1"
    write_jsonl(workdir / "data" / "imports" / "derive.jsonl", rows)
    assert materialize_source("chat_export", warehouse_db, load_config={"gap_minutes": 30}).success
    ids = "SELECT replace(message_id, 'derive.jsonl:', ''), conversation_id || '|' || conversation_method FROM messages"
    assigned = dict(query(warehouse_db, ids))  # every id of the file carries its name: `derive.jsonl:m0`
    assert assigned["m0"] == assigned["m1"] == assigned["m2"] == "chain:derive.jsonl:m0|reply_chain"
    assert assigned["m3"] == assigned["m4"] != assigned["m5"]
    assert assigned["m3"].endswith("|time_gap") and assigned["m5"].endswith("|time_gap")
    assert assigned["m6"] == "derive.jsonl:gold-1|reply_chain" and assigned["g1"] == "derive.jsonl:gold-1|gold"
    positions = query(
        warehouse_db, "SELECT message_id, position FROM messages WHERE conversation_id = 'chain:derive.jsonl:m0'"
    )
    assert sorted(positions) == [("derive.jsonl:m0", 0), ("derive.jsonl:m1", 1), ("derive.jsonl:m2", 2)]


def test_split_is_stable_per_conversation(workdir, warehouse_db):
    write_jsonl(workdir / "data" / "imports" / "a.jsonl", [chat(i, f"t{i}", f"conv{i // 2}") for i in range(200)])
    assert materialize_source("chat_export", warehouse_db, load_config={"train_ratio": 0.5, "dev_ratio": 0.25}).success
    mixed = query(warehouse_db, "SELECT conversation_id FROM messages GROUP BY 1 HAVING count(DISTINCT split) > 1")
    assert mixed == []
    first = dict(query(warehouse_db, "SELECT conversation_id, split FROM conversations"))
    assert {"train", "dev", "test"} == set(first.values())
    write_jsonl(workdir / "data" / "imports" / "a.jsonl", [chat(i, f"t{i}", f"conv{i // 2}") for i in range(100, 300)])
    assert materialize_source("chat_export", warehouse_db, load_config={"train_ratio": 0.5, "dev_ratio": 0.25}).success
    second = dict(query(warehouse_db, "SELECT conversation_id, split FROM conversations"))
    assert all(second[c] == first[c] for c in set(first) & set(second))


def test_messages_without_raw_cache_fail_with_a_clear_message(workdir, warehouse_db):
    messages = next(a for a in ASSETS if a.key.to_user_string() == "messages")
    result = dg.materialize(
        [messages],
        partition_key="sample",
        raise_on_error=False,
        resources=resources_for(warehouse_db),
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "materialize raw_messages for partition sample first" in failure.step_failure_data.error.message


def test_empty_imports_fail_the_raw_asset_with_a_clear_message(workdir, warehouse_db):
    from threadembed_assets.definitions import ASSET_CHECKS

    result = dg.materialize(
        [*ASSETS, *ASSET_CHECKS],
        selection=dg.AssetSelection.assets("raw_messages"),
        partition_key="chat_export",
        raise_on_error=False,
        resources=resources_for(warehouse_db),
    )
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "holds no files" in failure.step_failure_data.error.message
    assert [p for p in (workdir / "data").rglob("*") if p.is_file()] == []


def gap_ids(warehouse) -> dict[str, str]:
    """Message id -> derived conversation id, by the ids the file gave (the warehouse prefixes the file's name)."""
    rows = query(warehouse, "SELECT message_id, conversation_id FROM messages WHERE conversation_method = 'time_gap'")
    return {message_id.split(":", 1)[1]: conversation_id for message_id, conversation_id in rows}


def test_time_gap_conversation_ids_survive_earlier_data_and_a_new_gap(workdir, warehouse_db):
    def derived(i: int, hour: int, minute: int) -> dict:  # no conversation_id, no reply_to: sessions by silence
        return {**chat(i, f"text {i}", None), "timestamp": f"2020-01-01T{hour:02d}:{minute:02d}:00"}

    # Sessions of channel #a: m10-m12 at 10:00, m20-m21 at 12:00 (gaps of 5 and 50 minutes), m30-m31 at 15:00.
    later = [derived(10, 10, 0), derived(11, 10, 5), derived(12, 10, 10), derived(20, 12, 0), derived(21, 12, 50)]
    later += [derived(30, 15, 0), derived(31, 15, 5)]
    imports = workdir / "data" / "imports" / "derived.jsonl"
    write_jsonl(imports, later)
    assert materialize_source("chat_export", warehouse_db, load_config={"gap_minutes": 30}).success
    before = gap_ids(warehouse_db)
    assert len(before) == 7 and len(set(before.values())) == 4  # m21 starts a session of its own

    # A new, earlier session at the start of the channel: the later sessions keep their ids.
    write_jsonl(imports, [derived(1, 8, 0), derived(2, 8, 5), *later])
    assert materialize_source("chat_export", warehouse_db, load_config={"gap_minutes": 30}).success
    after = gap_ids(warehouse_db)
    assert after["m1"] == after["m2"] and after["m1"] not in before.values()
    assert {m: after[m] for m in before} == before

    # A longer gap joins m20 and m21; the sessions that did not change keep their ids.
    assert materialize_source("chat_export", warehouse_db, load_config={"gap_minutes": 60}).success
    wider = gap_ids(warehouse_db)
    assert wider["m20"] == wider["m21"] == after["m20"]
    assert {m: wider[m] for m in ["m1", "m2", "m10", "m11", "m12", "m30", "m31"]} == {
        m: after[m] for m in ["m1", "m2", "m10", "m11", "m12", "m30", "m31"]
    }


def hold_write_lock(path: Path) -> subprocess.Popen:
    """Another process that holds the warehouse open for writing until its stdin closes."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; c = duckdb.connect({str(path)!r}); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_connect_waits_for_another_process_lock_and_says_so_when_it_stays(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE t AS SELECT 42 AS x")
    warehouse = DuckDBResource(database=str(path))
    holder = hold_write_lock(path)
    try:
        with (
            pytest.raises(WarehouseLockTimeout, match="stayed locked by another process"),
            connect(warehouse, read_only=True, wait_seconds=0.3),
        ):
            pass
        got = {}

        def read():
            with connect(warehouse, read_only=True, wait_seconds=60) as con:
                got["x"] = con.execute("SELECT x FROM t").fetchone()[0]

        reader = threading.Thread(target=read)
        reader.start()
        holder.stdin.close()  # the other process lets go: the waiting reader gets in
        reader.join(timeout=60)
        assert got == {"x": 42}
    finally:
        holder.kill()
        holder.wait()


def test_connect_reads_in_a_process_that_writes_and_closes_on_errors(tmp_path):
    warehouse = DuckDBResource(database=str(tmp_path / "w.duckdb"))
    with pytest.raises(FileNotFoundError, match="materialize `messages` first"), connect(warehouse, read_only=True):
        pass
    with connect(warehouse) as writer:
        writer.execute("CREATE TABLE t AS SELECT 1 AS x")
        with connect(warehouse, read_only=True) as reader:
            assert reader.execute("SELECT x FROM t").fetchone() == (1,)
    with pytest.raises(duckdb.CatalogException), connect(warehouse) as con:
        con.execute("SELECT * FROM missing")
    with pytest.raises(duckdb.ConnectionException, match="closed"):
        con.execute("SELECT 1")


_STATE_SQL = "SELECT count(*), coalesce(sum(hash(COLUMNS(*))), 0) FROM {table} WHERE source = 'chat_export'"

_KILLED_LOADS = r"""
import contextlib, json, os, shutil, signal, sys
import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from threadembed_assets.resources import ModelStore
from threadembed_assets.warehouse import assets as warehouse_assets

warehouse, tries, state_sql = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pristine = warehouse + ".pristine"
shutil.copyfile(warehouse, pristine)
real_connect = warehouse_assets.connect


class DiesAtStatement:
    # The warehouse connection of a `messages` step, SIGKILLed just before its k-th statement.

    def __init__(self, con, k):
        self.con, self.k, self.n = con, k, 0

    def execute(self, *args, **kwargs):
        self.n += 1
        if self.n == self.k:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.con.execute(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.con, name)


for k in range(1, tries + 1):
    shutil.copyfile(pristine, warehouse)
    with contextlib.suppress(FileNotFoundError):
        os.remove(warehouse + ".wal")
    child = os.fork()
    if child == 0:
        @contextlib.contextmanager
        def dying_connect(resource, **options):
            with real_connect(resource, **options) as con:
                yield DiesAtStatement(con, k)

        warehouse_assets.connect = dying_connect
        result = dg.materialize(
            [warehouse_assets.messages], partition_key="chat_export",
            resources={"warehouse": DuckDBResource(database=warehouse), "models": ModelStore()},
        )
        os._exit(0 if result.success else 1)
    _, status = os.waitpid(child, 0)
    with duckdb.connect(warehouse, read_only=True) as con:
        state = [list(con.execute(state_sql.format(table=t)).fetchone()) for t in ("messages", "quarantine")]
    print(json.dumps({"k": k, "killed": os.WIFSIGNALED(status), "exit": os.waitstatus_to_exitcode(status),
                      "state": state}), flush=True)
"""


def partition_state(warehouse: Path) -> list:
    """A digest of partition `chat_export` in `messages` and `quarantine`: counts and a hash of every row."""
    return [list(query(warehouse, _STATE_SQL.format(table=table))[0]) for table in ("messages", "quarantine")]


def test_a_messages_step_killed_at_any_statement_leaves_the_partition_as_it_was(workdir, warehouse_db):
    """A real `messages` materialization, SIGKILLed just before each of its statements in turn (each time on a copy
    of the same warehouse): afterwards the partition holds all of its old rows, or (killed after the commit) all of
    the new ones, never a mix. Both versions have messages and quarantined rows, so a mix would show in either."""
    imports = workdir / "data" / "imports" / "team.jsonl"

    def export(n_messages: int, n_bad: int) -> None:
        write_jsonl(imports, [chat(i, f"message {i} of {n_messages}", f"c{i % 7}") for i in range(n_messages)])
        with imports.open("a") as handle:
            handle.writelines(f'{{"broken": {i}\n' for i in range(n_bad))

    export(300, 3)
    assert materialize_source("chat_export", warehouse_db).success
    before = partition_state(warehouse_db)
    export(500, 7)
    assert materialize_source("chat_export", warehouse_db, only=["raw_messages"]).success
    tries = 24
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_LOADS, str(warehouse_db), str(tries), _STATE_SQL],
        capture_output=True,
        text=True,
        timeout=900,
    )
    runs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(runs) == tries, done.stderr[-3000:]
    assert runs[-1]["killed"] is False and runs[-1]["exit"] == 0, "a load makes fewer statements than there are tries"
    after = runs[-1]["state"]
    assert after[0][0] == 500 and after[1][0] == 7 and before[0][0] == 300 and before[1][0] == 3
    killed = [run for run in runs if run["killed"]]
    assert len(killed) >= 5

    mixed = [run["k"] for run in runs if run["state"] not in (before, after)]
    assert not mixed, f"killed before statement {mixed}: the partition mixes old and new rows"
    assert {json.dumps(run["state"]) for run in killed} == {json.dumps(before), json.dumps(after)}
