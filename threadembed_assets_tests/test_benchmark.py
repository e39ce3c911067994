"""Benchmark: metrics by hand, tasks free of training conversations, the CLI, and the embedding cache."""

import json

import duckdb
import numpy as np
import pytest

from threadembed_assets.benchmark.__main__ import main as benchmark_cli
from threadembed_assets.benchmark.assets import training_conversations_in
from threadembed_assets.benchmark.metrics import per_query, ranks_of_relevant, summarize
from threadembed_assets.benchmark.retrievers import (
    EmbeddingCache,
    line_windows,
    rrf_scores,
    time_prior,
    windowed_scores,
)
from threadembed_assets.benchmark.score import score_rows
from threadembed_assets.benchmark.tasks import Task, TaskConfig, all_tasks
from threadembed_assets.training.resources import ModelStore
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
        query_ts=[None] * n,
        docs=[f"d{i}" for i in range(n)],
        doc_ids=[str(i) for i in range(n)],
        doc_ts=[(None, None)] * n,
        relevant=list(range(n)),
    )


def test_a_perfect_retriever_scores_one_and_a_reversed_one_scores_low():
    task = toy_task()
    perfect = np.eye(20) + np.random.default_rng(0).random((20, 20)) * 0.5
    metrics = {r["metric"]: r["value"] for r in score_rows("oracle", "dense", 8, task, perfect, 100)}
    assert metrics == {"mrr@10": 1.0, "recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0, "ndcg@10": 1.0}
    reversed_metrics = {r["metric"]: r["value"] for r in score_rows("anti", "dense", 8, task, -perfect, 100)}
    assert reversed_metrics["mrr@10"] == 0.0 and reversed_metrics["recall@10"] == 0.0


def test_fusion_and_time_prior():
    a = np.array([[3.0, 2.0, 1.0]])
    b = np.array([[1.0, 2.0, 3.0]])
    fused = rrf_scores(a, b)
    assert fused[0, 1] == pytest.approx(2 / 62) and fused[0, 0] == fused[0, 2]
    task = Task(
        "thread",
        "s",
        ["q"],
        [1000.0],
        ["a", "b", "c"],
        ["a", "b", "c"],
        [(900.0, 1100.0), (4600.0, 5000.0), (None, None)],
        [0],
    )
    prior = time_prior(task, scale_s=3600)
    assert prior[0, 0] == 1.0 and prior[0, 1] == pytest.approx(np.exp(-1)) and prior[0, 2] == 0.0


def test_windows_cover_each_document_and_the_best_window_adds_to_its_score():
    windows, owners = line_windows(["a\nb\nc\nd\ne\nf\ng", "x", "a\nb\nc\nd\ne"])
    assert windows == ["a\nb\nc\nd", "c\nd\ne\nf", "d\ne\nf\ng", "x", "a\nb\nc\nd", "b\nc\nd\ne"]
    assert owners.tolist() == [0, 0, 0, 1, 2, 2]
    doc_scores = np.array([[0.5, 0.6, 0.1]])
    window_scores = np.array([[0.1, 0.9, 0.2, 0.3, 0.0, 0.4]])
    assert windowed_scores(doc_scores, window_scores, owners) == pytest.approx(np.array([[1.4, 0.9, 0.5]]))


def test_tasks_come_from_the_test_split_only(workdir, warehouse_db):
    assert materialize_source("sample", warehouse_db, with_pairs=True).success
    with duckdb.connect(str(warehouse_db)) as con:
        tasks = all_tasks(con, ["test"], TaskConfig())
        assert {t.name for t in tasks} >= {
            "thread",
            "response_message",
            "response_window",
            "summary_extractive",
            "thread@slack",
        }
        assert training_conversations_in(con, tasks) == 0
        test = {c for (c,) in con.execute("SELECT conversation_id FROM conversations WHERE split = 'test'").fetchall()}
    for task in tasks:
        assert set(task.conversations) <= test
        if task.candidates:  # the true next message among up to 10 of the channel's next messages
            assert all(1 < len(c) <= 10 and c[0] == r for c, r in zip(task.candidates, task.relevant, strict=True))
            assert sum(len(c) == 10 for c in task.candidates) > len(task.candidates) / 2
        doc_conversations = {d.split("@")[0] for d in task.doc_ids} if task.name.startswith("response_w") else set()
        assert doc_conversations <= test


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
    rows = json.loads(out.read_text())
    assert {r["task"] for r in rows} == {"thread", "response_message"}
    assert {r["retriever"] for r in rows} == {"dense", "dense_windows", "hybrid", "time_aware"}
    assert {r["dim"] for r in rows if r["retriever"] == "dense"} == {384, 256, 128, 64}
    assert all(0.0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1.0 for r in rows)
    assert "| model | retriever |" in capsys.readouterr().out
    assert benchmark_cli(["--model", "bm25", "--data", str(data), "--json", str(out)]) == 0
    assert {r["model"] for r in json.loads(out.read_text())} == {"bm25"}
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
    assert Counting.calls == 3 and first[1].tolist() == [2.0, 1.0] and again[2].tolist() == [3.0, 1.0]
