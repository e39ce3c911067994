"""Benchmark: metrics and paired verdicts by hand, honest tasks and time signals, refusal of leaked models, the CLI,
and the embedding cache."""

import datetime as dt
import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from threadembed_assets.benchmark.__main__ import main as benchmark_cli
from threadembed_assets.benchmark.__main__ import tasks_from_file
from threadembed_assets.benchmark.score import (
    headline_scores,
    query_clusters,
    results_markdown,
    score_all,
    score_baselines,
    score_rows,
    scored,
)
from threadembed_assets.chat.metrics import (
    bootstrap_interval,
    holm,
    paired_test,
    per_query,
    ranks_of_relevant,
    summarize,
    verdict,
)
from threadembed_assets.chat.retrievers import (
    EmbeddingCache,
    HeldVectors,
    bm25_scores,
    line_windows,
    nearest_gaps,
    recency_scores,
    rrf_scores,
    time_prior,
    windowed_scores,
)
from threadembed_assets.chat.task import Task
from threadembed_assets.evaluation.tasks import TaskConfig, all_tasks, split_by_conversation
from threadembed_assets.resources import ModelStore
from threadembed_assets.warehouse.provenance import train_conversations, write_provenance
from threadembed_assets_tests.conftest import materialize_source


def test_ranks_and_metrics_by_hand():
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.3], [0.4, 0.4, 0.1]])
    ranks = ranks_of_relevant(scores, np.array([0, 2, 1]))
    assert ranks.tolist() == [1, 2, 2]  # a tie counts against the relevant document
    values = per_query(np.array([1, 2, 4, 11]))
    assert values["mrr@10"].tolist() == [1.0, 0.5, 0.25, 0.0]
    assert values["recall@1"].tolist() == [1, 0, 0, 0] and values["recall@5"].tolist() == [1, 1, 1, 0]
    assert values["ndcg@10"] == pytest.approx([1.0, 1 / np.log2(3), 1 / np.log2(5), 0.0])
    allowed = np.array([[True, False, True], [True, True, True], [False, True, True]])
    assert ranks_of_relevant(scores, np.array([2, 2, 2]), allowed).tolist() == [2, 2, 2]
    mean, low, high = summarize(np.array([1, 1, 2, 11]), n_bootstrap=200)["mrr@10"]
    assert mean == pytest.approx(0.625) and low <= mean <= high


def toy_task(n: int = 20) -> Task:
    return Task(
        name="thread",
        source="s",
        queries=[f"q{i}" for i in range(n)],
        docs=[f"d{i}" for i in range(n)],
        doc_ids=[str(i) for i in range(n)],
        relevant=list(range(n)),
    )


def test_a_perfect_retriever_scores_one_and_a_reversed_one_scores_low():
    task = toy_task()
    perfect = np.eye(20) + np.random.default_rng(0).random((20, 20)) * 0.5
    rows = score_rows([scored("oracle", "dense", 8, task, perfect)], 100)
    assert {r["metric"]: r["value"] for r in rows} == {
        "mrr@10": 1.0,
        "recall@1": 1.0,
        "recall@5": 1.0,
        "recall@10": 1.0,
        "ndcg@10": 1.0,
    }
    reversed_metrics = {r["metric"]: r["value"] for r in score_rows([scored("anti", "dense", 8, task, -perfect)], 100)}
    assert reversed_metrics["mrr@10"] == 0.0 and reversed_metrics["recall@10"] == 0.0


def test_paired_verdicts_need_a_significant_difference_on_the_same_queries():
    rng = np.random.default_rng(1)
    baseline = rng.random(200)
    better = np.clip(baseline + 0.1 + rng.normal(0, 0.05, 200), 0, 1)
    delta, p_value = paired_test(better, baseline)
    assert delta > 0.05 and p_value < 0.001 and verdict(delta, p_value) == "win"
    assert verdict(*paired_test(baseline, better)) == "loss"
    noisy = baseline + rng.normal(0, 0.3, 200)  # no systematic difference
    assert verdict(*paired_test(noisy - noisy.mean() + baseline.mean(), baseline)) == "tie"
    assert paired_test(baseline, baseline) == (0.0, 1.0)
    task = toy_task()
    good = np.eye(20)
    results = [scored("bm25", "bm25", None, task, -good), scored("m", "dense", 384, task, good)]
    table = results_markdown(results)
    assert "| m | dense | 1.000 ▲† |" in table and "| bm25 | bm25 | 0.000 |" in table


def test_holm_adjusts_each_p_value_for_the_comparisons_of_its_table():
    adjusted = holm([0.01, 0.04, 0.03, 0.5])
    # Sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08, 0.5; then never below the one before.
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.9, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_intervals_resample_whole_channel_days_when_queries_cluster():
    # 10 channel-days of 30 queries each, all alike within a day: 10 observations, not 300.
    day_values = np.random.default_rng(0).random(10)
    values = np.repeat(day_values, 30)
    clusters = np.repeat([f"#c/{day}" for day in range(10)], 30)
    _, plain_low, plain_high = bootstrap_interval(values, 2000)
    mean, low, high = bootstrap_interval(values, 2000, clusters=clusters)
    assert mean == pytest.approx(day_values.mean())
    assert (high - low) > 3 * (plain_high - plain_low)
    # Independent queries, one per cluster: the clustered interval is the plain one.
    _, alone_low, alone_high = bootstrap_interval(values, 2000, clusters=np.arange(300).astype(str))
    assert alone_high - alone_low == pytest.approx(plain_high - plain_low, rel=0.2)


def test_query_clusters_are_channel_days_of_a_source():
    task = timed_task("thread", ("#x", 86400.0 * 3 + 5, 1), [("#x", [1.0], [0])])
    task.queries, task.query_channel, task.query_ts = ["a", "b", "c"], ["#x", "#x", None], [86400.0 * 3 + 5, None, 9.0]
    assert list(query_clusters(task)) == ["s/#x/3", "s/#x/", "s/q2"]  # day 3; time unknown; channel unknown


def test_headline_scores_are_plain_numbers_per_task_and_model():
    task = toy_task()
    good = np.eye(20)
    results = [
        scored("bm25", "bm25", None, task, -good),
        scored("m", "dense", 384, task, good),
        scored("m", "dense", 64, task, -good, full_dim=False),  # a truncated dimension is not the headline
        scored("m", "hybrid", 384, task, -good),  # nor a fusion of the model
    ]
    assert headline_scores(results) == {f"mrr@10_{task.name}_bm25": 0.0, f"mrr@10_{task.name}_m": 1.0}


def timed_task(name: str, query: tuple[str, float | None, int], docs: list[tuple[str, list[float], list[int]]]) -> Task:
    """One query (channel, time, order) over documents (channel, message times, message orders)."""
    return Task(
        name=name,
        source="s",
        queries=["q"],
        docs=[f"d{i}" for i in range(len(docs))],
        doc_ids=[f"d{i}" for i in range(len(docs))],
        relevant=[0],
        query_channel=[query[0]],
        query_ts=[query[1]],
        query_order=[query[2]],
        doc_channel=[d[0] for d in docs],
        doc_times=[d[1] for d in docs],
        doc_orders=[d[2] for d in docs],
    )


def test_time_prior_and_recency_use_the_nearest_message_in_the_same_channel():
    task = timed_task(
        "thread",
        ("#a", 1000.0, 10),
        [
            ("#a", [400.0, 1600.0], [4, 16]),  # nearest message 600 s away
            ("#a", [4600.0, 100.0], [30, 2]),  # 900 s
            ("#b", [1000.0], [11]),  # the same time, another channel
            ("#a", [], [12]),  # no times: two messages away
        ],
    )
    prior = time_prior(task, scale_s=600)
    assert prior[0] == pytest.approx([np.exp(-1), np.exp(-1.5), 0.0, 0.0])
    seconds, messages = nearest_gaps(task)
    assert seconds[0, :3].tolist() == [600.0, 900.0, np.inf] and messages[0].tolist() == [6, 8, np.inf, 2]
    assert (-recency_scores(task)[0]).argsort().tolist() == [0, 1, 3, 2]
    response = timed_task("response_message", ("#a", None, 10), [("#a", [], [13]), ("#a", [], [11])])
    assert recency_scores(response)[0, 1] > recency_scores(response)[0, 0]  # the next message in the channel first
    a = np.array([[3.0, 2.0, 1.0]])
    fused = rrf_scores(a, a[:, ::-1])
    assert fused[0, 1] == pytest.approx(2 / 62) and fused[0, 0] == fused[0, 2]


def test_windows_cover_each_document_and_the_best_window_adds_to_its_score():
    windows, owners = line_windows(["a\nb\nc\nd\ne\nf\ng", "x", "a\nb\nc\nd\ne"])
    assert windows == ["a\nb\nc\nd", "c\nd\ne\nf", "d\ne\nf\ng", "x", "a\nb\nc\nd", "b\nc\nd\ne"]
    assert owners.tolist() == [0, 0, 0, 1, 2, 2]
    doc_scores = np.array([[0.5, 0.6, 0.1]])
    window_scores = np.array([[0.1, 0.9, 0.2, 0.3, 0.0, 0.4]])
    assert windowed_scores(doc_scores, window_scores, owners) == pytest.approx(np.array([[1.4, 0.9, 0.5]]))


def test_queries_come_from_the_test_split_and_candidates_from_every_split(workdir, warehouse_db):
    assert materialize_source("sample", warehouse_db, with_pairs=True).success
    with duckdb.connect(str(warehouse_db)) as con:
        tasks = all_tasks(con, ["test"], TaskConfig())
        split_of = dict(con.execute("SELECT conversation_id, split FROM conversations").fetchall())
        channel_of = dict(con.execute("SELECT conversation_id, channel FROM conversations").fetchall())
    assert {t.name for t in tasks} >= {"thread", "response_message", "response_window", "summary_extractive"}
    assert "thread@slack" in {t.name for t in tasks}
    for task in tasks:
        assert {split_of[c] for c in task.conversations} == {"test"}
    thread = next(t for t in tasks if t.name == "thread")
    assert {split_of[d] for d in thread.doc_ids} == {"train", "dev", "test"}  # the real interleaved neighbours
    for query, candidates in zip(thread.conversations, thread.candidates, strict=True):
        assert {channel_of[thread.doc_ids[i]] for i in candidates} == {channel_of[query]}
    response = next(t for t in tasks if t.name == "response_message")
    assert all(c[0] == r and 1 < len(c) <= 30 for c, r in zip(response.candidates, response.relevant, strict=True))
    assert sum(len(c) == 30 for c in response.candidates) > len(response.candidates) / 2
    windows = next(t for t in tasks if t.name == "response_window")
    assert {split_of[d.split("@")[0]] for d in windows.doc_ids} == {"train", "dev", "test"}


def publish_fake_model(models: Path, stage: str, learned: dict) -> None:
    """A checkpoint folder holding only its provenance (benchmark_tasks reads nothing else), published as latest."""
    run_dir = models / stage / "run-1"
    run_dir.mkdir(parents=True)
    write_provenance(run_dir, learned, [], None)
    ModelStore(root=str(models)).publish(stage, run_dir)


def test_benchmark_tasks_refuse_a_model_that_learned_from_a_test_conversation(workdir, warehouse_db):
    assert materialize_source("sample", warehouse_db, {"n_messages": 1500}).success
    with duckdb.connect(str(warehouse_db)) as con:
        learned = train_conversations(con, ["sample"])
    publish_fake_model(workdir / "models", "thread_model", learned)
    assert materialize_source("sample", warehouse_db, only=["benchmark_tasks"]).success  # trained on train: fine
    # The same data split otherwise: conversations the model learned from now give test queries.
    resplit = {"train_ratio": 0.4, "dev_ratio": 0.1}
    assert materialize_source("sample", warehouse_db, {"n_messages": 1500}, resplit).success
    refused = materialize_source("sample", warehouse_db, only=["benchmark_tasks"])
    assert not refused.success
    failure = next(e for e in refused.all_events if e.is_step_failure).step_failure_data.error.message
    assert "thread_model" in failure and "learned from the conversations of" in failure


def conversation_rows(c: int, times: list, texts: list[str]) -> list[dict]:
    """Conversation c of channel `#c`: a message per (time or None, text), authors taking turns."""
    return [
        {
            "source": "irc_test",
            "channel": "#c",
            "message_id": f"{c}-{i}",
            "conversation_id": f"c{c}",
            "timestamp": when.isoformat() if when else None,
            "author": f"u{(c + i) % 5}",
            "text": text,
        }
        for i, (when, text) in enumerate(zip(times, texts, strict=True))
    ]


def write_time_only_chat(path: Path) -> None:
    """Conversations of one channel where only a query's own timestamp links it to its conversation's time span:
    the messages of every conversation but its middle (query) one were sent at the same moment (or carry no time),
    and conversation c's query is sent c hours after that; so its own conversation is no nearer in time than any
    other, but a span that kept the query would contain the query's time."""
    topics = ["grub after a kernel update", "wifi firmware", "docker disk full", "git rebase conflict", "sourdough"]
    rows = []
    origin = dt.datetime(2020, 1, 1)
    for c in range(30):
        times = [origin, origin + dt.timedelta(seconds=1), origin + dt.timedelta(hours=c + 1), None]
        topic = topics[c % len(topics)]
        texts = [f"anyone know about {topic}?", f"{topic} again", f"the {topic} fix worked", "ok"]
        rows += conversation_rows(c, times, texts)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_time_aware_gains_nothing_from_the_query_own_timestamp(workdir):
    data = workdir / "time_only.jsonl"
    write_time_only_chat(data)
    config = TaskConfig(held_out_platform="", candidate_hours=0)  # every conversation of the channel
    tasks = [t for t in tasks_from_file(data, config) if t.name == "thread"]
    assert len(tasks[0].queries) == 30
    cache = EmbeddingCache(workdir / "cache.duckdb")
    results, _ = score_all(tasks, {"base": ModelStore().base_model_path()}, cache, device="cpu", batch_size=32)
    cache.close()
    mrr = {(r.model, r.retriever): r.mrr().mean() for r in results if r.full_dim}
    assert mrr[("base", "dense")] < 0.9  # room for a leak to show
    assert mrr[("base", "time_aware")] <= mrr[("base", "dense")]
    assert mrr[("recency", "recency")] < 0.2


def write_answered_soon_chat(path: Path) -> None:
    """Conversations of one channel whose messages before the query were all sent at one moment, and whose query
    (conversation c's, c hours later) is answered a second after it: in the archive, the answer gives the query's
    conversation away by time alone; as the query arrives, that answer does not exist yet."""
    origin, rows = dt.datetime(2020, 1, 1), []
    for c in range(30):
        times = [origin, origin, origin + dt.timedelta(hours=c + 1), origin + dt.timedelta(hours=c + 1, seconds=1)]
        texts = ["anyone around?", "yes", "my question, at last", "the answer"]
        rows += conversation_rows(c, times, texts)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_thread_live_sees_no_message_after_the_query(workdir):
    data = workdir / "answered_soon.jsonl"
    write_answered_soon_chat(data)
    config = TaskConfig(held_out_platform="", candidate_hours=0)
    tasks = {t.name: t for t in tasks_from_file(data, config) if t.name.startswith("thread")}
    live = tasks["thread_live"]
    assert len(live.queries) == 30
    assert all(len(live.docs[d].splitlines()) == 2 for d in live.relevant)  # the two messages before the query
    assert all(max(live.doc_times[d]) < live.query_ts[q] for q, docs in enumerate(live.candidates) for d in docs)
    results = score_baselines(list(tasks.values()), {id(t): bm25_scores(t) for t in tasks.values()})
    recency = {r.task.name: r.mrr().mean() for r in results if r.retriever == "recency"}
    assert recency["thread"] > 0.9  # the archive lets the later answer in: here a leak would show
    assert recency["thread_live"] < 0.2


def write_chat(path, n_conversations: int = 30) -> None:
    topics = [
        "grub after a kernel update",
        "wifi firmware on realtek",
        "docker disk full",
        "git rebase conflict",
        "sourdough too dense",
        "ranked tonight",
    ]
    rows = []
    for c in range(n_conversations):
        topic = topics[c % len(topics)]
        for i, text in enumerate(
            [
                f"anyone know about {topic}?",
                f"yes, {topic} is common, try the usual fix",
                f"thanks, the {topic} fix worked",
                "great",
            ]
        ):
            rows.append(
                {
                    "source": "irc_test",
                    "channel": f"#c{c % 3}",
                    "message_id": f"{c}-{i}",
                    "conversation_id": f"c{c}",
                    "reply_to": f"{c}-{i - 1}" if i else None,
                    "timestamp": f"2020-01-01T{c // 6 + 10:02d}:{(c * 7 + i) % 60:02d}:00",
                    "author": f"u{(c + i) % 5}",
                    "text": text,
                }
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_cli_scores_a_model_and_bm25_on_a_chat_file(workdir, capsys):
    data = workdir / "chat.jsonl"
    write_chat(data)
    out = workdir / "scores.json"
    assert (
        benchmark_cli(
            [
                "--model",
                ModelStore().base_model_path(),
                "--data",
                str(data),
                "--json",
                str(out),
                "--tasks",
                "thread,response_message",
            ]
        )
        == 0
    )
    written = json.loads(out.read_text())
    rows = written["scores"]
    assert {r["task"] for r in rows} == {"thread", "response_message"}
    assert {r["retriever"] for r in rows} == {"bm25", "recency", "dense", "dense_windows", "hybrid", "time_aware"}
    assert {r["dim"] for r in rows if r["retriever"] == "dense"} == {384, 256, 128, 64}
    assert all(0.0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1.0 for r in rows)
    verdicts = [v for v in written["verdicts"] if v["retriever"] == "dense"]
    assert {v["task"] for v in verdicts} == {"thread", "response_message"}
    assert all(v["vs_bm25"] in ("win", "tie", "loss") and 0 < v["vs_bm25_p"] <= 1 for v in verdicts)
    assert "| model | retriever |" in capsys.readouterr().out
    assert benchmark_cli(["--model", "recency", "--data", str(data), "--json", str(out)]) == 0
    assert {r["model"] for r in json.loads(out.read_text())["scores"]} == {"bm25", "recency"}
    with pytest.raises(SystemExit):
        benchmark_cli(["--model", "bm25", "--data", str(workdir / "missing.jsonl")])


def test_embedding_cache_encodes_each_text_once(tmp_path):
    class Counting:
        calls = 0

        def encode(self, texts, batch_size, convert_to_numpy):
            Counting.calls += len(texts)
            return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    cache = EmbeddingCache(tmp_path / "cache.duckdb")
    first = cache.encode(Counting(), "m", ["a", "bb", "a"], 8)
    again = cache.encode(Counting(), "m", ["bb", "a", "ccc"], 8)
    cache.close()
    assert Counting.calls == 3 and first[1].tolist() == [2.0, 1.0] and again.tolist() == [[2, 1], [1, 1], [3, 1]]
    reopened = EmbeddingCache(tmp_path / "cache.duckdb")  # read back from the file, rows in the order asked
    assert reopened.encode(Counting(), "m", ["ccc", "a", "ccc"], 8).tolist() == [[3, 1], [1, 1], [3, 1]]
    assert reopened.encode(Counting(), "other", ["a"], 8).tolist() == [[1, 1]] and Counting.calls == 4
    reopened.close()


def test_the_cache_encodes_new_texts_in_batches_of_similar_token_counts():
    """Chat lines whose characters say little of their tokens (a URL, a run of short words) are batched by token
    count, so no batch pads short lines to a long one's length; the vectors are the model's own."""
    model = SentenceTransformer(ModelStore().base_model_path(), device="cpu")
    batches = []

    class Recording:
        tokenizer, max_seq_length = model.tokenizer, model.max_seq_length
        get_embedding_dimension = model.get_embedding_dimension

        def encode(self, texts, batch_size, convert_to_numpy):
            batches.append(list(texts))
            return model.encode(texts, batch_size=batch_size, convert_to_numpy=convert_to_numpy)

    texts = [("a b c d e f g h i j k l" if i % 2 else "https://paste.ubuntu.com/p/x9") + f" {i}" for i in range(12)]
    vectors = HeldVectors().encode(Recording(), "m", texts, 4)
    assert np.allclose(vectors, model.encode(texts, batch_size=4), atol=1e-5)
    counts = [[len(model.tokenizer(text)["input_ids"]) for text in batch] for batch in batches]
    assert len(batches) == 3 and all(max(a) <= min(b) for a, b in zip(counts, counts[1:], strict=False))


def test_a_task_splits_by_conversation_into_disjoint_halves():
    task = toy_task()
    task.conversations = [f"c{i // 2}" for i in range(len(task.queries))]  # two queries per conversation
    fit, choose = split_by_conversation(task, 0.5)
    assert len(fit.queries) + len(choose.queries) == len(task.queries) and fit.queries and choose.queries
    assert not set(fit.conversations) & set(choose.conversations)  # a conversation's queries stay on one side
    assert fit.docs == task.docs and sorted(fit.queries + choose.queries) == sorted(task.queries)
    again, _ = split_by_conversation(task, 0.5)
    assert again.queries == fit.queries  # stable
