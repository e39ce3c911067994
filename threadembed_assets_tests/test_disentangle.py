"""Disentanglement: the paper's metrics by hand and calibrated on the corpus's dev split, the baselines, an online
linker that reads nothing after a message, the corpus's format, and bad input."""

import json
import math
from collections import Counter

import duckdb
import numpy as np
import pytest

from threadembed_assets.chat.corpus import FormatError, log_from_messages, parse_annotation, parse_lines, read_split
from threadembed_assets.chat.link_baselines import previous_parents, silence_parents
from threadembed_assets.chat.link_metrics import score, score_logs
from threadembed_assets.chat.linker import LinkerParams, conversation_roots, fit, load_published
from threadembed_assets.disentangle.__main__ import main as disentangle_cli
from threadembed_assets.disentangle.assets import linked_logs
from threadembed_assets.resources import ModelStore
from threadembed_assets_tests.conftest import materialize_source, need_shared, query

IRC = [
    "=== alice [~a@host] has joined #ubuntu",
    "[10:00] <alice> my wifi drops every few minutes on 24.04",
    "[10:01] <bob> anyone used btrfs snapshots with grub?",
    "[10:01] <carol> alice: which card? lspci -nn | grep -i net",
    "[10:02] <alice> carol: an intel ax200",
    "[10:02] <dave> bob: yes, grub-btrfs does it",
    "[10:03]  * bob reads the grub-btrfs readme",
    "[10:04] <carol> alice: try disabling power saving in iwlwifi",
]


def test_links_and_conversations_scored_by_hand():
    gold = {"a": {0: {0}, 1: {0}, 2: {2}, 3: {1}}}  # conversations {0, 1, 3} and {2}
    system = {"a": {0: {0}, 1: {0}, 2: {1}, 3: {3}}}  # {0, 1, 2} and {3}
    got = score(gold, system, {"a": range(4)})
    assert (got["link_precision"], got["link_recall"], got["link_f"]) == (50.0, 50.0, 50.0)
    # Joint shares 1/2, 1/4, 1/4 with both marginals 3/4, 1/4: H(G|S) = H(S|G) = 0.689 bits; log2(4) = 2.
    conditional = -(0.5 * math.log2(0.5 / 0.75) + 0.25 * math.log2(0.25 / 0.75))
    assert got["vi"] == pytest.approx(100 * (1 - 2 * conditional / 2))
    assert got["one_to_one"] == 50.0  # {0,1,3}~{0,1,2} covers 2 lines, and {2}~{3} none
    assert got["conversation_f"] == 0.0  # the one gold conversation of 2+ lines is not found
    same = score(gold, gold, {"a": range(4)})
    assert all(value == pytest.approx(100.0) for value in same.values())


def test_context_lines_join_conversations_and_links_to_them_count():
    gold = {"a": {2: {0}, 3: {0}, 4: {4}}}  # 2 and 3 reply to context line 0: one conversation
    system = {"a": {2: {2}, 3: {2}, 4: {4}}}
    got = score(gold, system, {"a": range(2, 5)})
    assert got["link_precision"] == pytest.approx(100 / 3)
    assert (got["vi"], got["one_to_one"], got["conversation_f"]) == (100.0, 100.0, 100.0)


def test_previous_baseline_agrees_with_the_published_dev_figures():
    dev = read_split(need_shared("dev", "irc-disentanglement"))
    got = score_logs(dev, {log.name: previous_parents(log) for log in dev})
    expected = {"link_precision": 30.8, "link_recall": 29.6, "link_f": 30.2, "vi": 66.2, "one_to_one": 23.9}
    for metric, value in expected.items():
        assert abs(got[metric] - value) <= 0.2, (metric, got[metric])
    assert got["conversation_f"] <= 0.2


def test_corpus_lines_parse_into_speakers_times_and_system_lines():
    log = parse_lines("x", IRC)
    assert log.speakers == ["alice", "alice", "bob", "carol", "alice", "dave", "bob", "carol"]
    assert log.system.tolist() == [True] + [False] * 7
    assert log.texts[6] == "* bob reads the grub-btrfs readme"
    assert np.isnan(log.minutes[0]) and log.minutes[1:].tolist() == [0, 1, 1, 2, 2, 3, 4]  # no time before 10:00
    assert previous_parents(log).tolist() == [0, 1, 1, 2, 3, 4, 5, 6]
    over_midnight = parse_lines("y", ["[23:59] <a> late", "[00:01] <b> early"])
    assert over_midnight.minutes.tolist() == [0, 2]
    assert silence_parents(parse_lines("z", ["[10:00] <a> x", "[10:01] <b> y", "[10:40] <a> z"]), 30).tolist() == [
        0,
        0,
        2,
    ]


def test_annotation_lines_give_parents_either_way_round():
    assert parse_annotation("1000 1000 -\n998 1001 -\n1002 1001 -\n", 1003) == {
        1000: {1000},
        1001: {998},
        1002: {1001},
    }
    with pytest.raises(FormatError, match="past the log"):
        parse_annotation("5 9 -\n", 6)
    with pytest.raises(FormatError, match="expected"):
        parse_annotation('{"a": 1}\n', 6)


@pytest.fixture(scope="module")
def small_linker():
    """A linker fitted for seconds on two train logs: enough to test what it reads, not how well it links."""
    train = read_split(need_shared("train", "irc-disentanglement"))[:2]
    return fit(train, params=LinkerParams(n_estimators=20))


def test_a_link_depends_on_nothing_after_its_message(small_linker):
    log = read_split(need_shared("dev", "irc-disentanglement"))[0].slice(0, 700)
    cut = 400
    changed = [
        f"[23:{k % 60:02d}] <x{k}> {IRC[1 + k % 7].split('> ', 1)[-1]} carol alice bob {k}"
        for k in range(len(log) - cut - 1)
    ]
    rewritten = parse_lines(log.name, log.lines[: cut + 1] + changed)
    before, after = small_linker.scores(log)[1], small_linker.scores(rewritten)[1]
    assert np.array_equal(before[: cut + 1], after[: cut + 1])  # every candidate's score, not only the best
    assert not np.array_equal(before, after)  # the later lines did change something: the test can see a leak
    assert np.array_equal(small_linker.link(log)[: cut + 1], small_linker.link(rewritten)[: cut + 1])
    chunked = small_linker.scores(log, chunk=128)[1]  # chunks with their window before them: the same scores
    assert np.allclose(chunked, before)


def test_bad_input_gets_a_link_for_every_line(small_linker):
    untimed = parse_lines("untimed", ["<a> hi all", "<b> a: hello", "<a> b: how are you"])
    assert np.isnan(untimed.minutes).all()
    one_speaker = parse_lines("alone", [f"[10:{k:02d}] <a> note {k}" for k in range(50)])
    system = parse_lines("joins", [f"=== u{k} [~u@h] has joined #c" for k in range(10_000)] + IRC[1:])
    for log in (untimed, one_speaker, system):
        parents = small_linker.link(log)
        assert len(parents) == len(log) and (parents <= np.arange(len(log))).all()
    assert (small_linker.link(system)[:10_000] == np.arange(10_000)).all()  # joins start nothing they can join


def test_disentangler_asset_fits_holds_out_channels_publishes_and_the_cli_links_with_it(workdir, warehouse_db, capsys):
    assert materialize_source("sample", warehouse_db, {"n_messages": 1500}).success
    run_config = {"disentangler": {"config": {"dense": False, "n_estimators": 20}}}
    result = materialize_source("sample", warehouse_db, only=["disentangler"], run_config=run_config)
    assert result.success
    meta = result.asset_materializations_for_node("disentangler")[0].metadata
    systems = {row.data["system"]: row.data for row in meta["dev"].value.records}
    assert set(systems) == {"disentangler", "previous", "silence_2min", "silence_30min"}
    channels = meta["channels"].data
    assert channels["dev"] >= 1 and channels["fit"] >= 1
    assert meta["dev_link_f"].value == systems["disentangler"]["link_f"]
    verdicts = meta["link_accuracy_verdicts"].data  # paired, per line, against each baseline
    assert set(verdicts) == {"vs_previous", "vs_silence_2min", "vs_silence_30min"}
    assert verdicts["vs_previous"]["verdict"] == "win" and verdicts["vs_previous"]["delta"] > 0.1
    folder = ModelStore(root=str(workdir / "models")).latest("disentangler")
    card = json.loads((folder / "disentangler.json").read_text())
    assert set(card["channels"]["dev"]).isdisjoint(card["channels"]["fit"])

    log = workdir / "2019-05-04.raw.txt"
    log.write_text("\n".join(IRC) + "\n")
    assert disentangle_cli([str(log), "--from-line", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.rsplit(" ", 2)[0] for line in printed] == [f"2019-05-04:{k}" for k in range(2, len(IRC))]
    assert all(int(line.split()[1]) <= int(line.split()[0].split(":")[1]) for line in printed)

    chat = workdir / "chat.jsonl"
    log_rows = parse_lines("x", IRC)
    chat.write_text(
        "".join(
            json.dumps({"channel": "#u", "message_id": f"m{k}", "author": a, "text": t, "conversation_id": "old"})
            + "\n"
            for k, (a, t) in enumerate(zip(log_rows.speakers[1:], log_rows.texts[1:], strict=True))
        )
    )
    assert disentangle_cli([str(chat), "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(IRC) - 1 and rows[0]["reply_to"] is None and rows[0]["conversation_id"] == "m0"
    ids = [row["message_id"] for row in rows]
    assert all(r["reply_to"] is None or ids.index(r["reply_to"]) < k for k, r in enumerate(rows))
    assert all(r["conversation_id"] in ids for r in rows)

    assert disentangle_cli([str(chat)]) == 2  # JSON read as an IRC log: a clear refusal, no traceback
    assert "no line looks like an IRC message" in capsys.readouterr().err

    # A plain IRC log imported through chat_export: its conversations come from the published disentangler.
    channel = workdir / "data" / "imports" / "libera" / "#ubuntu"
    channel.mkdir(parents=True)
    (channel / "2019-05-04.log").write_text(
        "\n".join(IRC[1:] + [f"[10:{k:02d}] <erin> still here {k}" for k in range(5, 40)]) + "\n"
    )
    imported = materialize_source("chat_export", warehouse_db)
    meta = imported.asset_materializations_for_node("messages")[0].metadata
    assert meta["conversation_derivation"].value == f"disentangler {folder.name}"
    stored = query(
        warehouse_db,
        "SELECT message_id, author, epoch(ts), text, conversation_id, conversation_method FROM messages "
        "WHERE source = 'chat_export' ORDER BY ts, message_id",
    )
    assert {row[5] for row in stored} == {"disentangled"}
    linker, _, encode = load_published(folder)
    alone = log_from_messages("#ubuntu", [(i, None, a, t, x) for i, a, t, x, *_ in stored])
    roots = conversation_roots(linker.link(alone, encode))
    assert [row[4] for row in stored] == [f"dis:{alone.ids[root]}" for root in roots]  # the linker's own cut
    assert len(set(roots)) > 1  # not one silence-bounded session

    silence = materialize_source("chat_export", warehouse_db, load_config={"derivation": "silence"})
    meta = silence.asset_materializations_for_node("messages")[0].metadata
    assert meta["conversation_derivation"].value == "silence cuts of 30 min"
    assert query(warehouse_db, "SELECT DISTINCT conversation_method FROM messages WHERE source = 'chat_export'") == [
        ("time_gap",)
    ]


def test_the_corpus_format_loads_through_irc_disentangle_with_its_links_and_context(workdir, warehouse_db):
    dev = need_shared("dev", "irc-disentanglement")
    assert materialize_source("irc_disentangle", warehouse_db, {"path": str(dev)}).success
    with duckdb.connect(str(warehouse_db), read_only=True) as con:
        loaded = {log.name: log for _, log in linked_logs(con)}
    corpus = read_split(dev)
    assert set(loaded) == {f"irc_disentangle/{log.name}" for log in corpus}
    not_system = "SELECT origin FROM quarantine WHERE source = 'irc_disentangle' AND reason <> 'system_message'"
    quarantined = Counter(origin for (origin,) in query(warehouse_db, not_system))
    assert 0 < quarantined.total() < 20  # empty messages, a nick with a space: kept with a reason, not lost
    for log in corpus:
        mine = loaded[f"irc_disentangle/{log.name}"]
        line_of = [int(message_id.rsplit(":", 1)[1]) for message_id in mine.ids]
        said = [line for line in range(len(log)) if not log.system[line]]  # system lines are quarantined
        assert line_of == sorted(line_of) and set(line_of) <= set(said)
        assert len(said) - len(line_of) == quarantined[f"{log.name}.raw.txt"]
        assert line_of[mine.first_annotated] >= log.first_annotated > line_of[mine.first_annotated - 1]
        for k, (parent,) in mine.parents.items():
            gold = max((p for p in log.parents.get(line_of[k], ()) if p < line_of[k]), default=line_of[k])
            assert line_of[parent] == (line_of[k] if log.system[gold] else gold), (log.name, line_of[k])
