"""Pair tables and their blocking quality checks, through real Dagster runs on a temporary DuckDB file."""

import json
import shutil

import dagster as dg
import duckdb
import pytest

from threadembed_assets.definitions import ASSET_CHECKS
from threadembed_assets.pairs.assets import PAIR_ASSETS
from threadembed_assets.pairs.build import STRATEGIES, PairConfig, build_pairs
from threadembed_assets.pairs.quality import PairQualityThresholds, judge, pair_metrics
from threadembed_assets.warehouse.conversations import build_conversations
from threadembed_assets.warehouse.render import RENDER_MESSAGE_SQL, render_message
from threadembed_assets.warehouse.schema import ensure_schema
from threadembed_assets_tests.conftest import materialize_source, need_shared, query, resources_for

PAIR_TABLES = list(STRATEGIES.values())


def assert_pair_invariants(warehouse) -> None:
    """Anchor and positive from the pair's conversation, negative from another one of the same channel and split,
    and no train row touching a dev/test conversation."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        lines: dict[str, list[str]] = {}
        channel_of: dict[str, str] = {}
        split_of: dict[str, str] = {}
        for conversation, author, text, platform, channel, split in con.execute(
            "SELECT conversation_id, author, text, platform, channel, split FROM messages "
            "ORDER BY conversation_id, position"
        ).fetchall():
            lines.setdefault(conversation, []).append(render_message(author, text, platform))
            channel_of[conversation], split_of[conversation] = channel, split

        summaries = dict(con.execute("SELECT conversation_id, summary FROM conversation_summaries").fetchall())

        def from_conversation(window: str, conversation: str) -> bool:
            return all(any(full.startswith(part) for full in lines[conversation]) for part in window.split("\n"))

        for table in PAIR_TABLES:
            rows = con.execute(
                f"SELECT split, anchor, positive, negative, conversation_id, meta FROM {table}"
            ).fetchall()
            assert rows, table
            negatives = 0
            for split, anchor, positive, negative, conversation, meta in rows:
                meta = json.loads(meta)
                assert split == split_of[conversation], table
                if table == "summary_pairs":  # the anchor is the conversation's own summary
                    assert summaries[conversation] == anchor
                else:
                    assert from_conversation(anchor, conversation), table
                assert from_conversation(positive, conversation), table
                assert anchor != positive
                if negative is not None:
                    negatives += 1
                    other = meta["negative_conversation_id"]
                    assert other != conversation and channel_of[other] == channel_of[conversation], table
                    assert split_of[other] == split, table
                    assert from_conversation(negative, other), table
            assert negatives > len(rows) / 3, f"{table}: few interleaved negatives ({negatives}/{len(rows)})"
        for table in PAIR_TABLES:
            leaked = con.execute(
                f"SELECT count(*) FROM {table} p JOIN conversations c USING (source, conversation_id) "
                "WHERE p.split = 'train' AND c.split != 'train'"
            ).fetchone()[0]
            assert leaked == 0


def test_pairs_on_sample_keep_conversations_channels_and_splits_apart(workdir, warehouse_db):
    result = materialize_source("sample", warehouse_db, with_pairs=True)
    assert result.success
    assert_pair_invariants(warehouse_db)
    evaluations = result.get_asset_check_evaluations()
    assert sorted(e.asset_key.to_user_string() for e in evaluations) == sorted(PAIR_TABLES)
    assert all(e.passed for e in evaluations)
    answered = query(
        warehouse_db, "SELECT DISTINCT json_extract_string(meta, '$.answer_from') FROM query_response_pairs"
    )
    assert {"reply_to", "following"} <= {a for (a,) in answered}


@pytest.mark.slow
def test_pairs_on_real_irc_dev(workdir, warehouse_db):
    shutil.copy(need_shared("irc_dev.jsonl"), workdir / "data" / "imports" / "irc_dev.jsonl")
    result = materialize_source("chat_export", warehouse_db, with_pairs=True)
    assert result.success
    assert_pair_invariants(warehouse_db)
    assert all(e.passed for e in result.get_asset_check_evaluations())


@dg.asset(partitions_def=PAIR_ASSETS[0].partitions_def, deps=PAIR_ASSETS, group_name="training")
def downstream_of_pairs() -> None:
    """Stands in for training: must not run when a pair check fails with ERROR."""


def step_keys_started(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}


def test_rows_dropped_between_materializations_fail_the_check_and_block_downstream(workdir, warehouse_db):
    instance = dg.DagsterInstance.ephemeral()
    first = materialize_source(
        "sample",
        warehouse_db,
        {"n_messages": 3000},
        with_pairs=True,
        instance=instance,
        extra_assets=[downstream_of_pairs],
    )
    assert first.success and "downstream_of_pairs" in step_keys_started(first)
    # The same partition, now with far fewer messages: every pair table loses more than 20% of its rows.
    second = materialize_source(
        "sample",
        warehouse_db,
        {"n_messages": 1500},
        with_pairs=True,
        instance=instance,
        extra_assets=[downstream_of_pairs],
    )
    assert not second.success
    failed = [e for e in second.get_asset_check_evaluations() if not e.passed]
    # Summaries are capped at a fixed count of conversations, so only A-C lose rows.
    assert {e.asset_key.to_user_string() for e in failed} == {"thread_pairs", "query_response_pairs", "temporal_pairs"}
    assert all(e.severity == dg.AssetCheckSeverity.ERROR for e in failed)
    errors = failed[0].metadata["errors"].data
    assert any("rows fell" in message for message in errors)
    assert failed[0].metadata["previous"].data["rows"] > failed[0].metadata["current"].data["rows"]
    assert "downstream_of_pairs" not in step_keys_started(second)


def test_injected_duplicates_fail_the_check_and_block_downstream(workdir, warehouse_db):
    conversations = [
        [
            ("ann", "how do I undo a rebase?"),
            ("bo", "git reflog, then reset to the old head"),
            ("ann", "worked"),
            ("bo", "nice"),
            ("ann", "and how do I push it?"),
            ("bo", "force with lease"),
        ],
        [
            ("cy", "anyone up for ranked tonight?"),
            ("di", "count me in"),
            ("cy", "starting at 8"),
            ("ed", "me too"),
            ("cy", "we are four"),
            ("di", "gg later"),
        ],
    ]
    rows = []
    for copy in range(10):  # the same conversations copied under new ids: a scraper that re-imported its data
        for c, turns in enumerate(conversations):
            for i, (author, text) in enumerate(turns):
                rows.append(
                    {
                        "source": "mine",
                        "channel": "#x",
                        "message_id": f"{copy}-{c}-{i}",
                        "conversation_id": f"{copy}-{c}",
                        "reply_to": f"{copy}-{c}-{i - 1}" if i else None,
                        "timestamp": f"2021-01-0{1 + c} 10:{copy:02d}:0{i}",
                        "author": author,
                        "text": text,
                    }
                )
    (workdir / "data" / "imports" / "dup.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = materialize_source("chat_export", warehouse_db, with_pairs=True, extra_assets=[downstream_of_pairs])
    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed and all(e.severity == dg.AssetCheckSeverity.ERROR for e in failed)
    assert all(any("duplicate rate" in m for m in e.metadata["errors"].data) for e in failed)
    assert "downstream_of_pairs" not in step_keys_started(result)


def run_pair_checks(warehouse, instance: dg.DagsterInstance, tables: list[str]) -> dict:
    """Run the pair_quality checks of `tables` alone (no pair table is rebuilt): table -> its evaluation."""
    result = dg.materialize(
        [*PAIR_ASSETS, *ASSET_CHECKS],
        selection=dg.AssetSelection.checks(*(dg.AssetCheckKey(dg.AssetKey(t), "pair_quality") for t in tables)),
        tags={"dagster/partition": "sample"},  # a selection of checks alone has no partitions to validate a key
        instance=instance,
        resources=resources_for(warehouse),
        raise_on_error=False,
    )
    assert step_keys_started(result) == {f"{t}_pair_quality" for t in tables}
    return {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}


def corrupt(warehouse, sql: str) -> int:
    """Rows of a real pair table changed by hand: what the builder never writes."""
    with duckdb.connect(str(warehouse)) as con:
        return con.execute(sql).fetchone()[0]


def assert_fails_with(evaluation, rule: str) -> None:
    errors = evaluation.metadata["errors"].data
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR, errors
    assert any(rule in message for message in errors), errors


def test_hand_corrupted_pairs_fail_the_rules_the_builder_never_trips(workdir, warehouse_db):
    """Empty texts, anchor = positive and negative = positive cannot come out of the builder, so only rows changed
    by hand after a real materialization show that the check catches them."""
    instance = dg.DagsterInstance.ephemeral()
    tables = ["thread_pairs", "query_response_pairs", "temporal_pairs"]
    built = materialize_source("sample", warehouse_db, {"n_messages": 1500}, instance=instance, also=tables)
    assert built.success and all(e.passed for e in built.get_asset_check_evaluations())
    assert all(e.passed for e in run_pair_checks(warehouse_db, instance, tables).values())  # clean as built

    # With no earlier materialization to compare with, the rules on the table alone.
    emptied = corrupt(warehouse_db, "UPDATE thread_pairs SET anchor = ' ' WHERE rowid % 10 = 0")
    echoed = corrupt(warehouse_db, "UPDATE query_response_pairs SET positive = anchor WHERE rowid % 20 = 0")
    same = corrupt(
        warehouse_db, "UPDATE temporal_pairs SET negative = positive WHERE negative IS NOT NULL AND rowid % 50 = 0"
    )
    assert emptied > 0 and echoed > 0 and same > 0
    evaluations = run_pair_checks(warehouse_db, instance, tables)
    assert_fails_with(evaluations["thread_pairs"], "empty rate")
    assert_fails_with(evaluations["query_response_pairs"], f"{echoed} pairs have anchor equal to positive")
    assert_fails_with(evaluations["temporal_pairs"], f"{same} pairs have a negative equal to their positive")


def metrics_of(rows: list[tuple]) -> dict:
    con = duckdb.connect()
    con.execute("CREATE TABLE conversations (source VARCHAR, conversation_id VARCHAR, split VARCHAR)")
    con.execute("INSERT INTO conversations VALUES ('s', 'c1', 'train'), ('s', 'c2', 'train'), ('s', 'c3', 'test')")
    con.execute(
        "CREATE TABLE thread_pairs (strategy VARCHAR, source VARCHAR, split VARCHAR, anchor VARCHAR, "
        "positive VARCHAR, negative VARCHAR, conversation_id VARCHAR, meta JSON)"
    )
    con.executemany("INSERT INTO thread_pairs VALUES ('A', 's', ?, ?, ?, ?, ?, ?)", rows)
    return pair_metrics(con, "thread_pairs", "s")


def test_metrics_by_hand():
    neg = json.dumps({"negative_conversation_id": "c2"})
    leak = json.dumps({"negative_conversation_id": "c3"})
    metrics = metrics_of(
        [
            ("train", "a", "b", "x", "c1", neg),
            ("train", "a", "b", "x", "c1", neg),  # exact duplicate
            ("train", "k", "l", "l", "c2", neg),  # negative equal to positive
            ("train", "q", "q", None, "c1", "{}"),  # anchor equal to positive
            ("train", "", "z", None, "c2", "{}"),  # empty anchor
            ("train", "m", "n", "o", "c2", leak),  # negative from a test conversation
            ("train", "t", "u", None, "c3", "{}"),  # train row of a test conversation
            ("test", "v", "w", None, "c3", "{}"),
        ]
    )
    assert metrics["rows"] == 8 and metrics["train_rows"] == 7
    assert metrics["duplicates"] == 1 and metrics["anchor_equals_positive"] == 1 and metrics["empty"] == 1
    assert metrics["negative_equals_positive"] == 1 and metrics["with_negative"] == 4
    assert metrics["leakage"] == 2
    assert metrics["pairs_per_conversation_max"] == 3
    assert metrics["negative_coverage"] == pytest.approx(4 / 8)


def test_judge_errors_and_warnings():
    base = {
        "rows": 1000,
        "leakage": 0,
        "anchor_equals_positive": 0,
        "negative_equals_positive": 0,
        "empty_rate": 0.0,
        "duplicate_rate": 0.01,
        "anchor_equals_positive_rate": 0.0,
        "negative_equals_positive_rate": 0.0,
        "negative_coverage": 0.8,
        "anchor_chars_p50": 50,
        "positive_chars_p50": 200,
    }
    limits = PairQualityThresholds()
    assert judge(base, None, limits) == [] and judge(base, base, limits) == []

    def severities(current, previous=base):
        return sorted(f.severity.value for f in judge({**base, **current}, previous, limits))

    assert severities({"rows": 900}) == ["WARN"]
    assert severities({"rows": 700}) == ["ERROR"]
    assert severities({"duplicate_rate": 0.06}) == ["ERROR", "ERROR"]  # over the limit and a regression
    assert severities({"duplicate_rate": 0.02}) == ["WARN"]
    assert severities({"negative_coverage": 0.7}) == ["ERROR"]
    assert severities({"leakage": 1}) == ["ERROR"]
    assert severities({"anchor_equals_positive": 2}) == ["ERROR"]
    assert severities({"empty_rate": 0.03}) == ["ERROR", "ERROR"]
    assert severities({"positive_chars_p50": 400}) == ["WARN"]
    assert severities({"rows": 0}, None) == ["WARN"]
    assert severities({"rows": 0}) == ["ERROR", "WARN"]


def test_sql_rendering_matches_python_rendering():
    """One rendering in SQL and Python, mentions normalised per platform."""
    cases = [
        ("ann", "hi there", "irc", "ann: hi there"),
        (None, "no author", "irc", "no author"),
        ("", "empty author", "slack", "empty author"),
        ("bob", "ann: try grub-install", "irc", "bob: @ann try grub-install"),
        ("bob", "ann: try it", "slack", "bob: ann: try it"),  # addressing is IRC's; on Slack it is text
        ("bob", "Note: ann: x", "irc", "bob: @Note ann: x"),  # only the start of a line is addressing
        ("bob", "<@Fred> see <https://elm-lang.org|the guide> in <#C01|beginners>", "slack",
         "bob: @Fred see https://elm-lang.org in #beginners"),
        ("bob", "<@!1234> and <@U01|ann> hi", "discord", "bob: @1234 and @U01 hi"),
        ("bob", "a < b and c > d, <@ann>", "slack", "bob: a < b and c > d, @ann"),
        ("it's", "o'brien: hey", "irc", "it's: o'brien: hey"),
    ]  # fmt: skip
    with duckdb.connect() as con:
        for author, text, platform, expected in cases:
            sql = con.execute(
                f"SELECT {RENDER_MESSAGE_SQL} FROM (SELECT $a AS author, $t AS text, $p AS platform) m",
                {"a": author, "t": text, "p": platform},
            ).fetchone()[0]
            assert sql == render_message(author, text, platform) == expected, (author, text, platform)


def test_a_question_keeps_its_replies_even_when_they_also_follow_it():
    """Replies to a question are also its following messages; the answer is cut among the replies alone."""
    messages = [
        ("q", None, "ann", "how do I get grub back after the kernel update?"),
        ("r1", "q", "bob", "boot a live usb and chroot in"),
        ("r2", "q", "cyd", "then run update-grub"),
        ("r3", None, "bob", "and reboot"),
    ]
    with duckdb.connect() as con:
        ensure_schema(con)
        for position, (message_id, reply_to, author, text) in enumerate(messages):
            con.execute(
                "INSERT INTO messages VALUES ('s', 'irc', '#c', ?, 'c1', ?, ?, TIMESTAMP '2024-01-01 10:00:00' "
                "+ to_minutes(?), ?, ?, 'train', 'gold', NULL)",
                [message_id, reply_to, author, position, position, text],
            )
        build_conversations(con, "s")
        for _ in range(3):  # the same answer every time
            assert build_pairs(con, "B", "s", PairConfig(response_messages=2)) == 1
            answer = con.execute("SELECT positive, meta->>'answer_from' FROM query_response_pairs").fetchone()
            assert answer == ("bob: boot a live usb and chroot in\ncyd: then run update-grub", "reply_to")
