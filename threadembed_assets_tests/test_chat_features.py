"""Chat features: each one on a hand-built case, missing values marked missing, and a thread query's own message kept
out of every candidate's side."""

import json

import numpy as np
import pytest

from threadembed_assets.benchmark.__main__ import tasks_from_file
from threadembed_assets.chat.features import FEATURES, candidate_pairs, mentioned_names, pair_features
from threadembed_assets.chat.task import Task
from threadembed_assets.evaluation.tasks import TaskConfig


def test_mentions_in_slack_discord_and_irc_syntax_resolve_to_known_authors():
    known = {"ann", "bob", "carol", "dave", "al", "1234"}
    assert mentioned_names("<@Ann> and <@!1234> see @bob", known) == ["1234", "ann", "bob"]
    assert mentioned_names("carol: try a live usb", known) == ["carol"]
    assert mentioned_names("al, did it boot?", known) == ["al"]  # addressing counts whatever the name's length
    assert mentioned_names("al said it boots, thanks dave", known) == ["dave"]  # a bare short word does not
    assert mentioned_names("<@U999> unknown, @nobody too", known) == []
    assert mentioned_names("bob: ping me, bob", known, author="Bob") == []  # never one's own mention
    assert mentioned_names("Dave_: hi", known) == ["dave"]  # IRC decorations


def hand_task(replies_known: bool = True, query_author: str = "ann") -> Task:
    """One query at 10:00 (channel order 10) by `query_author`, who mentions bob, over five candidates."""
    hour = 3600.0
    docs = [
        # channel, times, orders, authors, mentions, ids, reply_to
        ("#a", [9 * hour, 11 * hour], [5, 15], ["bob", "ann"], [], ["m5", "m15"], []),  # spans the query
        ("#a", [8 * hour], [2], ["carol"], ["ann"], ["m2"], []),  # ended before; mentions the query's author
        ("#a", [10 * hour + 60], [11], ["dave"], [], ["m11"], ["q1"]),  # replies to the query; 1 minute after
        ("#b", [10 * hour], [10], ["ann"], [], ["b1"], []),  # another channel
        ("#a", [], [30, 31], ["", ""], [], ["m30", "m31"], []),  # no times, no authors
    ]
    return Task(
        name="thread",
        source="s",
        queries=["ann: bob, grub fails after the kernel update"],
        docs=["bob: grub\nann: still failing", "carol: ann?", "dave: try this", "ann: hi", "x\ny"],
        doc_ids=[f"d{i}" for i in range(len(docs))],
        relevant=[0],
        query_channel=["#a"],
        query_ts=[10 * hour],
        query_order=[10],
        query_orders=[[10]],
        query_authors=[[query_author] if query_author else [""]],
        query_mentions=[["bob"]],
        query_message_ids=[["q1"]],
        query_reply_to=[[]],
        query_platform=["slack" if replies_known else "irc"],  # IRC has no native reply links
        doc_channel=[d[0] for d in docs],
        doc_times=[d[1] for d in docs],
        doc_orders=[d[2] for d in docs],
        doc_authors=[d[3] for d in docs],
        doc_mentions=[d[4] for d in docs],
        doc_message_ids=[d[5] for d in docs],
        doc_reply_to=[d[6] for d in docs],
    )


def features_of(task: Task, dense=None, bm25=None) -> dict[str, np.ndarray]:
    n = len(task.docs)
    dense = np.array([[0.8, 0.2, 0.5, 0.1, 0.0]]) if dense is None else dense
    bm25 = np.array([[4.0, 0.0, 2.0, 1.0, 0.0]]) if bm25 is None else bm25
    qi, di = candidate_pairs(1, n, None)
    values = pair_features(task, qi, di, dense, dense * 0.5, bm25)
    return {name: values[:, i] for i, name in enumerate(FEATURES)}


def test_each_feature_on_a_hand_built_case():
    f = features_of(hand_task())
    assert f["dense"].tolist() == [0.8, 0.2, 0.5, 0.1, 0.0] and f["dense_window"][0] == pytest.approx(0.4)
    assert f["dense_gap"] == pytest.approx([0.0, -0.6, -0.3, -0.7, -0.8])
    assert f["bm25_rel"].tolist() == [1.0, 0.0, 0.5, 0.25, 0.0] and f["bm25"][0] == pytest.approx(np.log(5))
    assert f["log_gap_minutes"][:3] == pytest.approx([np.log1p(60), np.log1p(120), np.log1p(1)])
    assert np.isnan(f["log_gap_minutes"][3:]).all()  # another channel; no times
    assert f["log_gap_messages"][[0, 1, 2, 4]] == pytest.approx(np.log1p([5, 8, 1, 20]))
    assert f["gap_rank"] == pytest.approx(np.log1p([1, 2, 0, 4, 3]))  # the one a minute away is nearest
    assert f["inside_span"][:3].tolist() == [1.0, 0.0, 0.0] and np.isnan(f["inside_span"][3])
    assert f["inside_span"][4] == 0.0  # by channel order where times are unknown: 30-31 is after 10
    assert f["ended_before"][:3].tolist() == [0.0, 1.0, 0.0] and f["ended_before"][4] == 0.0
    assert f["author_participates"][:4].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert f["same_speaker"][:4].tolist() == [0.0, 0.0, 0.0, 0.0]  # bob spoke last in d0 before the query
    assert f["query_mentions_candidate"][:4].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert f["candidate_mentions_query"][:4].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert f["reply_link"].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert f["same_channel"].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert f["log_messages"] == pytest.approx(np.log1p([2, 1, 1, 1, 2]))
    assert f["log_chars"][1] == pytest.approx(np.log1p(len("carol: ann?")))
    assert np.isnan([f[name][4] for name in ("author_participates", "same_speaker", "query_mentions_candidate")]).all()


def test_interleaving_of_the_query_and_density_of_the_candidate():
    f = features_of(hand_task())
    assert np.isnan(f["query_interleave"]).all()  # one message: nothing between
    assert f["candidate_density"][[0, 4]].tolist() == [0.1, 1.0] and np.isnan(f["candidate_density"][1:4]).all()
    prefix = hand_task()
    prefix.query_orders = [[3, 5, 10]]  # 1 and 4 other messages between its three
    assert features_of(prefix)["query_interleave"] == pytest.approx(np.log1p(2.5))


def test_the_speaker_before_the_query_is_the_last_earlier_message_of_the_candidate():
    task = hand_task(query_author="bob")  # bob wrote d0's message at order 5, ann the one at 15 (after the query)
    assert features_of(task)["same_speaker"][0] == 1.0


def test_missing_signals_are_missing_not_zero():
    f = features_of(hand_task(replies_known=False, query_author=""))
    for name in ("reply_link", "author_participates", "query_mentions_candidate", "candidate_mentions_query"):
        assert np.isnan(f[name]).all(), name
    task = Task(name="summary_x", source="s", queries=["q"], docs=["a", "b"], doc_ids=["a", "b"], relevant=[0])
    text_only = features_of(task, dense=np.array([[0.3, 0.1]]), bm25=np.array([[1.0, 0.0]]))
    assert text_only["dense"].tolist() == [0.3, 0.1]
    for name in FEATURES[5:17]:  # the time and people signals
        assert np.isnan(text_only[name]).all(), name


def write_conversations(path, query_text: str, query_time: str, query_author: str) -> None:
    """Two interleaved conversations in one channel; the middle message of c0 (the thread query) varies."""
    rows = []
    for c, (topic, people) in enumerate([("grub", ["ann", "bob"]), ("wifi", ["carol", "dave"])]):
        for i in range(5):
            when = f"2020-01-01T10:{10 * i + c:02d}:00"
            text = f"{topic} step {i}, {people[1 - i % 2]}?"
            author = people[i % 2]
            if (c, i) == (0, 2):
                when, text, author = query_time, query_text, query_author
            rows.append(
                {
                    "source": "irc_test",
                    "channel": "#x",
                    "message_id": f"{c}-{i}",
                    "conversation_id": f"c{c}",
                    "reply_to": None,
                    "timestamp": when,
                    "author": author,
                    "text": text,
                }
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_thread_query_never_enters_the_candidates_side(workdir):
    """The query's own text, time, author and mentions never reach any candidate: building the tasks with another
    query message (in the same place of the channel) changes the query, and nothing of the candidates."""
    sides = []
    for n, (text, when, author) in enumerate(
        [("grub step 2, bob?", "2020-01-01T10:20:00", "ann"), ("carol dave wifi wifi", "2020-01-01T10:20:40", "dave")]
    ):
        path = workdir / f"chat{n}.jsonl"
        write_conversations(path, text, when, author)
        task = next(t for t in tasks_from_file(path, TaskConfig(held_out_platform="")) if t.name == "thread")
        query = task.conversations.index("c0")
        own = task.relevant[query]
        assert "0-2" not in task.doc_message_ids[own] and text not in task.docs[own]
        assert task.query_message_ids[query] == ["0-2"]
        candidate_side = {
            name: getattr(task, name)
            for name in ("docs", "doc_times", "doc_orders", "doc_authors", "doc_mentions", "doc_message_ids")
        }
        sides.append((candidate_side, task.queries[query], task.query_mentions[query]))
    assert sides[0][0] == sides[1][0]
    assert sides[0][1] != sides[1][1] and sides[1][2] == ["carol"]  # its author's own name is no mention
