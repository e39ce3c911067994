"""Summaries against a real HTTP server speaking chat.completions, with injected faults; offline extractive."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import dagster as dg
import duckdb
import openai
import pytest
from dagster_duckdb import DuckDBResource

from threadembed_assets.summaries.client import LLMCallFailed, LLMResource, backoff_seconds
from threadembed_assets.summaries.extractive import extractive_summaries, opening_question
from threadembed_assets.summaries.summarize import Conversation, ensure_summary_tables, summarize_with_llm
from threadembed_assets.warehouse.connection import connect
from threadembed_assets_tests.conftest import materialize_source, query
from threadembed_assets_tests.fake_openai import FakeOpenAI

SECRET = "sk-test-SECRET-9f8e7d"
PLAN = ["rate_limited", "server_error", "slow", "malformed", "empty", "always_500", "ok", "ok", "ok", "ok"]


def llm_for(server: FakeOpenAI, **overrides) -> LLMResource:
    settings = {
        "max_concurrency": 3,
        "timeout_s": 0.5,
        "max_attempts": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
    }
    return LLMResource(
        base_url=server.base_url, model="test-model", api_key=dg.EnvVar("OPENAI_API_KEY"), **{**settings, **overrides}
    )


def summarize(warehouse, llm, count: int, instance=None) -> dg.ExecuteInProcessResult:
    return materialize_source(
        "sample",
        warehouse,
        only=["conversation_summaries"],
        llm=llm,
        instance=instance,
        run_config={"conversation_summaries": {"config": {"count": count}}},
    )


@pytest.fixture
def sample_warehouse(workdir, warehouse_db, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert materialize_source("sample", warehouse_db, {"n_messages": 800}).success
    return warehouse_db


def test_faults_are_retried_or_recorded_and_a_rerun_asks_only_for_what_is_missing(sample_warehouse):
    instance = dg.DagsterInstance.ephemeral()
    with FakeOpenAI(PLAN) as server:
        first = summarize(sample_warehouse, llm_for(server), count=10, instance=instance)
        assert first.success
        meta = first.get_asset_materialization_events()[0].materialization.metadata
        assert meta["summarizer"].value == "llm" and meta["requested"].value == 10
        assert meta["dagster/row_count"].value == 8  # empty content and an endless 500 are given up
        assert meta["failures_by_kind"].data == {"empty_content": 1, "server_error": 1}
        # 429, 500, slow and malformed each cost one retry; the endless 500 three tries; the rest one call.
        assert meta["calls"].value == 4 * 2 + 3 + 1 + 4 == len(server.requests)
        assert (
            meta["tokens_in"].value == 8 * 50
            and meta["estimated_cost_usd"].value == "no price configured for this model"
        )
        retried_after_429 = [t for t, p, _ in server.requests if server.scenario_of[p] == "rate_limited"]
        assert retried_after_429[1] - retried_after_429[0] >= 0.9  # Retry-After: 1 honoured
        failures = dict(query(sample_warehouse, "SELECT kind, attempts FROM summary_failures"))
        assert failures == {"empty_content": 1, "server_error": 3}

        before = len(server.requests)
        second = summarize(sample_warehouse, llm_for(server), count=10, instance=instance)
        again = server.requests[before:]
        failed_prompts = {p for p, s in server.scenario_of.items() if s in ("empty", "always_500")}
        assert {prompt for _, prompt, _ in again} == failed_prompts
        assert second.get_asset_materialization_events()[0].materialization.metadata["cache_hits"].value == 8

    assert server.auth_headers == {f"Bearer {SECRET}"}
    everything = "".join(
        str(record.dagster_event) + record.user_message
        for record in instance.all_logs(first.run_id) + instance.all_logs(second.run_id)
    )
    assert "rejected request with Bearer ***" in everything  # the server echoed the key; we masked it
    assert SECRET not in everything
    with duckdb.connect(str(sample_warehouse), read_only=True) as con:
        for table in ["summary_cache", "summary_failures", "conversation_summaries"]:
            dump = json.dumps(con.execute(f"SELECT * FROM {table}").fetchall(), default=str)
            assert SECRET not in dump, table


_KILLABLE_RUN = r"""
import sys
import dagster as dg
from dagster_duckdb import DuckDBResource
from threadembed_assets.definitions import ASSETS, build_resources
from threadembed_assets.summaries.client import LLMResource
warehouse, base_url = sys.argv[1], sys.argv[2]
dg.materialize(
    ASSETS, selection=dg.AssetSelection.assets("conversation_summaries"), partition_key="sample",
    resources={**build_resources(), "warehouse": DuckDBResource(database=warehouse),
               "llm": LLMResource(base_url=base_url, model="test-model", max_concurrency=2)},
    run_config={"ops": {"conversation_summaries": {"config": {"count": 40}}}},
)
"""


def test_a_running_summary_leaves_the_warehouse_readable_and_a_killed_one_keeps_what_it_finished(
    sample_warehouse, workdir
):
    with FakeOpenAI(["ok"], delay_s=0.15) as server:
        child = subprocess.Popen(
            [sys.executable, "-c", _KILLABLE_RUN, str(sample_warehouse), server.base_url],
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while server.served_ok < 12 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        # Another process reads the warehouse between two answers: the run holds no connection while it waits.
        with connect(DuckDBResource(database=str(sample_warehouse)), read_only=True, wait_seconds=60) as con:
            assert con.execute("SELECT count(*) FROM summary_cache").fetchone()[0] >= 10
        assert child.poll() is None and server.served_ok < 40, "the read had to wait for the run's end"
        child.send_signal(signal.SIGKILL)
        child.wait()
        served = server.served_ok
        assert 12 <= served < 40
    kept = query(sample_warehouse, "SELECT count(*) FROM summary_cache")[0][0]
    assert served - 2 <= kept <= served  # at most the answers in flight when it died are lost
    with FakeOpenAI(["ok"]) as server:
        assert summarize(sample_warehouse, llm_for(server), count=40).success
        assert len(server.requests) == 40 - kept
    assert query(sample_warehouse, "SELECT count(*) FROM conversation_summaries")[0][0] == 40


def test_offline_summaries_are_extractive_and_labelled(sample_warehouse):
    result = summarize(sample_warehouse, LLMResource(), count=20)
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["summarizer"].value == "extractive" and meta["model"].value == "extractive"
    rows = query(sample_warehouse, "SELECT DISTINCT summarizer, model, prompt_version FROM conversation_summaries")
    assert rows == [("extractive", "extractive", "extractive-v1")]
    assert query(sample_warehouse, "SELECT count(*) FROM conversation_summaries")[0][0] == 20


def test_extractive_summary_is_the_opening_question_and_distinctive_terms():
    summaries = extractive_summaries(
        {
            "c1": [
                ("ann", "hi"),
                ("ann", "bob: why does grub vanish after a kernel update?"),
                ("bob", "ann: reinstall grub from a live usb"),
                ("ann", "grub is back, thanks bob"),
            ],
            "c2": [("cy", "anyone tried the new ramen place downtown"), ("di", "the ramen there is great")],
        }
    )
    assert summaries["c1"].startswith("why does grub vanish after a kernel update?")
    assert "ann" not in summaries["c1"] and "bob" not in summaries["c1"].split("(")[1]
    assert "ramen" not in summaries["c2"].split("(")[1]  # already in the opening
    assert opening_question(["x: hello there, I have a long question about docker"]) == (
        "hello there, I have a long question about docker"
    )


def test_backoff_grows_with_jitter():
    rng = random.Random(0)
    waits = [backoff_seconds(n, 1.0, 8.0, rng) for n in range(1, 8)]
    assert all(0 <= w <= min(8.0, 2 ** (n - 1)) for n, w in zip(range(1, 8), waits, strict=True))


def test_call_gives_up_after_max_attempts_with_the_kind():
    with FakeOpenAI(["always_500"]) as server:
        llm = LLMResource(base_url=server.base_url, model="m", api_key="sk-x", max_attempts=2, backoff_base_s=0.01)
        with pytest.raises(LLMCallFailed) as failed:
            llm.complete([{"role": "user", "content": "hello"}])
    assert failed.value.kind == "server_error" and failed.value.attempts == 2 and "sk-x" not in str(failed.value)


def test_one_client_per_resource_retries_transport_failures_and_the_resource_retries_malformed_answers(monkeypatch):
    made = []
    real_client = openai.OpenAI

    def counted(**options):
        made.append(options)
        return real_client(**options)

    monkeypatch.setattr(openai, "OpenAI", counted)
    with FakeOpenAI(["server_error", "malformed", "ok"]) as server:
        llm = LLMResource(base_url=server.base_url, model="m", api_key="sk-x", max_attempts=3, backoff_base_s=0.01)
        answers = [llm.complete([{"role": "user", "content": f"hello {n}"}]) for n in range(3)]
    assert len(made) == 1 and made[0]["max_retries"] == 0  # retries are set per call, from what is left
    assert [step for _, _, step in server.requests] == ["500", "ok", "malformed", "ok", "ok"]
    assert [answer.attempts for answer in answers] == [2, 2, 1]


def test_answers_wait_for_a_busy_warehouse_instead_of_piling_up_unwritten(tmp_path):
    """While one write waits on the warehouse, no new request goes out: at most `max_concurrency` answers unwritten."""
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_summary_tables(con)
    conversations = [Conversation(f"c{i}", "train", [], f"conversation {i}", f"h{i}") for i in range(12)]
    opened, unwritten = [], []

    with FakeOpenAI(["ok"]) as server:

        @contextmanager
        def busy_warehouse():
            written = len(opened) - 1  # the first opening reads the cache
            if written == 2:  # another process holds the warehouse for a while
                deadline = time.monotonic() + 1.0
                while server.served_ok < written + 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
            if written >= 0:
                unwritten.append(server.served_ok - written)
            opened.append(1)
            yield con

        llm = LLMResource(base_url=server.base_url, model="test-model", api_key="sk-local", max_concurrency=2)
        stats = summarize_with_llm(busy_warehouse, "s", conversations, llm)
    assert stats.calls == 12, stats.failure_examples
    assert con.execute("SELECT count(*) FROM summary_cache").fetchone()[0] == 12 and stats.calls == 12
    assert max(unwritten) <= 2, unwritten
