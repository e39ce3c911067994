"""The chat ranker: learns from train tasks to combine the model, BM25 and chat signals better than any of them, keeps
what it learned across a save and load, ranks where chat signals are missing, and is scored by the benchmark with
paired verdicts against the model alone and the hand-tuned combinations."""

import datetime as dt
import json
import random

import numpy as np
import pytest

from threadembed_assets.benchmark.__main__ import tasks_from_file
from threadembed_assets.benchmark.score import score_all, verdict_rows
from threadembed_assets.chat.features import FEATURES
from threadembed_assets.chat.metrics import verdict
from threadembed_assets.chat.ranker import CHAT_RANKER, ChatRanker, fit_ranker, history_gate, model_features
from threadembed_assets.chat.retrievers import EmbeddingCache, model_key, recency_scores
from threadembed_assets.chat.task import Task
from threadembed_assets.evaluation.tasks import TaskConfig
from threadembed_assets.resources import ModelStore
from threadembed_assets.training.train import load_model

TOPICS = ["grub", "wifi", "docker", "nvidia"]
NAMES = [f"user{i}" for i in range(16)]


def write_interleaved_chat(path, seed: int, n_conversations: int = 48, with_context: bool = True) -> None:
    """Conversations of two people each, six messages four minutes apart, a new one every five minutes, so about
    five run at once; four topics share their words, so text alone confuses conversations of one topic, while who
    talks, whom they address and when tell them apart. Without context: no timestamps and no authors."""
    rng = random.Random(seed)
    origin = dt.datetime(2021, 3, 1, 12)
    rows = []
    for c in range(n_conversations):
        people = [NAMES[(2 * c) % len(NAMES)], NAMES[(2 * c + 1) % len(NAMES)]]
        topic = TOPICS[rng.randrange(len(TOPICS))]
        for i in range(6):
            speaker, other = people[i % 2], people[1 - i % 2]
            words = rng.sample(["it", "still", "fails", "after", "update", "try", "again", "works", "now"], 3)
            when = origin + dt.timedelta(minutes=5 * c + 4 * i, seconds=rng.randrange(30))
            rows.append(
                {
                    "source": "irc_test",
                    "channel": "#help",
                    "message_id": f"{c}-{i}",
                    "conversation_id": f"c{c}",
                    "reply_to": None,
                    "timestamp": when.isoformat() if with_context else None,
                    "author": speaker if with_context else None,
                    "text": f"{other}: {topic} {' '.join(words)}" if with_context else f"{topic} {' '.join(words)}",
                }
            )
    rows.sort(key=lambda r: (r["timestamp"] or "", r["message_id"]))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def base():
    path = ModelStore().base_model_path()
    return path, load_model(path, "cpu")


def features_of(path, model_path, model, cache):
    tasks = [t for t in tasks_from_file(path, TaskConfig(held_out_platform="")) if not t.name.startswith("summary")]
    key = model_key(model_path)
    return [model_features(model, key, t, cache, 32) for t in tasks]


def test_the_ranker_beats_every_single_signal_on_chat_it_did_not_fit(workdir, base):
    model_path, model = base
    cache = EmbeddingCache(workdir / "cache.duckdb")
    sets = {}
    for name, seed in [("train", 1), ("dev", 2), ("test", 3)]:
        write_interleaved_chat(workdir / f"{name}.jsonl", seed)
        sets[name] = features_of(workdir / f"{name}.jsonl", model_path, model, cache)
    ranker = fit_ranker(model_path, sets["train"], sets["dev"], log=lambda m: None)
    assert set(ranker.learners) == {"thread", "thread_live", "response_message", "response_window"}
    for kind, card in ranker.card.items():
        assert card["learner"] in ("logistic", "boosted") and set(card["importance"]) == set(FEATURES), kind
        assert card["weights"] is not None and "dense" in card["weights"]
    for features in sets["test"]:
        if not ranker.ranks(features.task.name):
            continue
        ranked = features.mrr(ranker.learners[features.task.name].decision(features.values)).mean()
        singles = {
            "bm25": features.mrr(features.values[:, FEATURES.index("bm25")]).mean(),
            "dense": features.mrr(features.values[:, FEATURES.index("dense")]).mean(),
            "recency": features.mrr(recency_scores(features.task)[features.qi, features.di]).mean(),
        }
        if features.task.name in ("thread", "thread_live"):  # text alone confuses conversations of one topic
            assert all(ranked > value + 0.05 for value in singles.values()), (ranked, singles)
        else:  # the prefix's names already find the answer by text
            assert ranked >= max(singles.values()) - 0.02, (features.task.name, ranked, singles)

    ranker.save(workdir / "ranker")
    loaded = ChatRanker.load(workdir / "ranker")
    thread = next(f for f in sets["test"] if f.task.name == "thread")
    assert np.array_equal(loaded.scores(thread), ranker.scores(thread))
    assert loaded.card["thread"]["learner"] == ranker.card["thread"]["learner"]

    # Without timestamps or authors the chat signals are missing, not zeros: it still ranks, by the text signals.
    write_interleaved_chat(workdir / "bare.jsonl", 4, with_context=False)
    bare = next(f for f in features_of(workdir / "bare.jsonl", model_path, model, cache) if f.task.name == "thread")
    cache.close()
    assert np.isnan(bare.values[:, FEATURES.index("author_participates")]).all()
    scores = loaded.scores(bare)
    assert np.isfinite(scores[bare.qi, bare.di]).all()
    text_only = max(bare.mrr(bare.values[:, FEATURES.index(name)]).mean() for name in ("dense", "bm25"))
    assert bare.mrr(scores[bare.qi, bare.di]).mean() >= text_only - 0.1


def test_the_benchmark_scores_the_ranker_against_its_model_and_the_baselines(workdir, base):
    model_path, model = base
    cache = EmbeddingCache(workdir / "cache.duckdb")
    write_interleaved_chat(workdir / "train.jsonl", 1, n_conversations=24)
    train = features_of(workdir / "train.jsonl", model_path, model, cache)
    fit_ranker(model_path, train, [], learners=("logistic",), log=lambda m: None).save(workdir / "ranker")
    write_interleaved_chat(workdir / "test.jsonl", 3, n_conversations=60)
    tasks = [t for t in tasks_from_file(workdir / "test.jsonl", TaskConfig(held_out_platform="")) if t.name == "thread"]
    results, _ = score_all(
        tasks, {"base": model_path}, cache, device="cpu", batch_size=32, ranker_dir=str(workdir / "ranker")
    )
    cache.close()
    row = next(r for r in verdict_rows(results, 100) if r["model"] == CHAT_RANKER)
    assert row["task"] == "thread" and row["queries"] == len(tasks[0].queries)
    # Each verdict is the paired comparison of the same queries' MRR@10, recomputed here from the raw results.
    mrr = {(r.model, r.retriever): r.mrr() for r in results if r.full_dim}
    ranker = mrr[(CHAT_RANKER, CHAT_RANKER)]
    compared = {"bm25": ("bm25", "bm25"), "recency": ("recency", "recency"), "base": ("base", "dense")}
    compared |= {name: ("base", name) for name in ("dense", "time_aware", "hybrid")}
    for versus, key in compared.items():
        delta = float((ranker - mrr[key]).mean())
        assert row[f"vs_{versus}_delta"] == pytest.approx(delta), versus
        assert row[f"vs_{versus}"] == verdict(delta, row[f"vs_{versus}_p"]), versus
    # Interleaved conversations of one topic: neither words alone nor time alone find the thread; the ranker does.
    assert row["vs_bm25"] == "win" and row["vs_recency"] == "win" and row["vs_base"] == "win", row


def write_two_platforms(path, seed: int) -> None:
    """IRC conversations told apart by their words while time tells nothing (their messages are spread at random
    over the day), and Slack conversations told apart by time alone (one after another) while words mislead (a
    thread query, the middle message, speaks the words of the next conversation)."""
    rng = random.Random(seed)
    origin = dt.datetime(2021, 3, 1, 8)
    rows = []
    for c in range(30):
        for i in range(5):
            irc_when = origin + dt.timedelta(minutes=rng.randrange(600))
            slack_when = origin + dt.timedelta(minutes=12 * c + 2 * i)
            words = " ".join(rng.sample(["it", "still", "fails", "after", "update", "try", "again", "works"], 3))
            for source, channel, when, text in [
                ("irc_test", "#irc", irc_when, f"zork{c} quux{c} {words}"),
                ("slack_test", "#slack", slack_when, f"zork{c + (i == 2)} {words}"),
            ]:
                rows.append(
                    {
                        "source": source,
                        "channel": channel,
                        "message_id": f"{source}-{c}-{i}",
                        "conversation_id": f"{source}-c{c}",
                        "reply_to": None,
                        "timestamp": when.isoformat(),
                        "author": f"{source}-user{rng.randrange(40)}",
                        "text": text,
                    }
                )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_platform_with_its_own_train_split_gets_its_own_learner_where_dev_says_it_pays(workdir, base):
    model_path, model = base
    cache = EmbeddingCache(workdir / "cache.duckdb")
    sets = {}
    for name, seed in [("train", 1), ("dev", 2)]:
        write_two_platforms(workdir / f"{name}.jsonl", seed)
        sets[name] = [
            f for f in features_of(workdir / f"{name}.jsonl", model_path, model, cache) if f.task.name == "thread"
        ]
    cache.close()
    assert set(sets["train"][0].query_platforms()) == {"irc", "slack"}
    ranker = fit_ranker(
        model_path, sets["train"], sets["dev"], learners=("logistic",), min_platform_queries=10, log=lambda m: None
    )
    platforms = ranker.card["thread"]["platforms"]
    assert set(platforms) == {"irc", "slack"}
    for platform, entry in platforms.items():
        assert entry["kept"] == (f"thread@{platform}" in ranker.learners)
        significant = entry["dev_mrr@10"] > entry["dev_mrr@10_of_every_platform_learner"] and entry["paired_p"] < 0.05
        assert entry["kept"] == significant
    assert any(entry["kept"] for entry in platforms.values()), platforms
    dev = sets["dev"][0]
    per_query = dev.mrr(ranker.scores(dev)[dev.qi, dev.di])
    every = dev.mrr(ranker.learners["thread"].decision(dev.values))
    assert per_query.mean() > every.mean()  # each platform ranked by its own learner does better on dev


def test_a_saved_ranker_finds_its_model_after_the_models_folder_moves(tmp_path):
    (tmp_path / "models" / "hard_negative_model" / "run-1").mkdir(parents=True)
    model = tmp_path / "models" / "hard_negative_model" / "run-1"
    ChatRanker(str(model), {}).save(tmp_path / "models" / CHAT_RANKER / "run-2")
    (tmp_path / "models").rename(tmp_path / "mounted")
    loaded = ChatRanker.load(tmp_path / "mounted" / CHAT_RANKER / "run-2")
    assert loaded.model_path == str((tmp_path / "mounted" / "hard_negative_model" / "run-1").resolve())


def gate_task(n: int, recency_right: bool) -> tuple[Task, np.ndarray, np.ndarray]:
    """A channel of `n` next-message queries, one every 10 messages, each with two candidates (its answer and another
    conversation's next message, each a message after it); the ranker's scores and recency's (the rival) rank them.
    Where `recency_right`, the answer comes first in time and recency finds it while the ranker does not; else the
    other way round."""
    docs, orders, relevant = [], [], []
    for q in range(n):
        first, second = 10 * q + 1, 10 * q + 2
        answer, other = (first, second) if recency_right else (second, first)
        docs += [f"answer {q}", f"other {q}"]
        orders += [[answer], [other]]
        relevant.append(2 * q)
    task = Task(
        name="response_message",
        source="s",
        queries=[f"prefix {q}" for q in range(n)],
        docs=docs,
        doc_ids=[str(d) for d in range(len(docs))],
        relevant=relevant,
        candidates=[[2 * q, 2 * q + 1] for q in range(n)],
        query_channel=["c"] * n,
        query_order=[10 * q for q in range(n)],
        doc_orders=orders,
    )
    ranked, rival = np.full((n, 2 * n), -np.inf), np.full((n, 2 * n), -np.inf)
    for q in range(n):
        answer_first = recency_right
        rival[q, 2 * q : 2 * q + 2] = [1.0, 0.0] if answer_first else [0.0, 1.0]
        ranked[q, 2 * q : 2 * q + 2] = [0.0, 1.0] if answer_first else [1.0, 0.0]
    return task, ranked, rival


def test_the_history_gate_follows_what_the_channel_taught_before_each_query_and_nothing_after():
    # A channel that is one conversation at a time: once five answers have arrived, recency takes over.
    calm, ranked, rival = gate_task(12, recency_right=True)
    use = history_gate(calm, ranked, rival, least=5)
    assert use.tolist() == [q >= 5 for q in range(12)]  # query q has seen the answers of queries 0..q-1
    # A busy channel where the ranker finds what recency misses: it never switches.
    busy, ranked_busy, rival_busy = gate_task(12, recency_right=False)
    assert not history_gate(busy, ranked_busy, rival_busy, least=5).any()
    # Answers that arrive after a query's moment never count for it: turning every answer from query 8 on around
    # (recency now misses them) leaves the decisions up to query 8 as they were, and changes later ones.
    flipped_rival = rival.copy()
    flipped_rival[8:] = np.where(np.isfinite(rival[8:]), 1.0 - rival[8:], -np.inf)
    changed = history_gate(calm, ranked, flipped_rival, last=3, least=3)
    before = history_gate(calm, ranked, rival, last=3, least=3)
    assert (changed[:9] == before[:9]).all() and not (changed[9:] == before[9:]).all()
