"""`make run`'s entry point: the whole pipeline for a source, checks included, and its summary."""

import json
import re

from threadembed_assets import run
from threadembed_assets.definitions import defs
from threadembed_assets.resources import ModelStore
from threadembed_assets.training.assets import STAGES


def test_run_materializes_sample_end_to_end_and_prints_the_summary(workdir, capsys):
    results = workdir / "make_run.md"
    assert run.main(["--source", "sample", "--preset", "smoke", "--write", str(results)]) == 0
    out = capsys.readouterr().out
    written = results.read_text()  # the summary as a results file: its provenance, then the summary as printed
    command = "`python -m threadembed_assets.run --source sample --preset smoke --write "
    assert re.match(r"\*\d{4}-\d\d-\d\d, " + re.escape(command), written)
    assert written.split("\n```\n")[1] == run.local_folders_shortened(out.strip())
    assert str(workdir) not in written and "(models/thread_model/" in written
    assert "source sample: 50" in out and "quarantine: none" in out
    for table in ["thread_pairs", "query_response_pairs", "temporal_pairs", "summary_pairs", "hard_negative_pairs"]:
        assert f"check {table}.pair_quality: passed" in out
    for stage in ["thread_model", "retrieval_model", "hard_negative_model"]:
        line = next(line for line in out.splitlines() if line.startswith(f"{stage}: "))
        assert "dev MRR@10 (thread / next message)" in line
        # the paired dev verdicts against the start model, per task
        assert re.search(r"\(thread (win|loss|tie) [+-]\d\.\d{3} p=\d\.\d{3}, next_message (win|loss|tie) ", line), line
    assert "onnx_model: int8 export " in out and "dev MRR@10 thread " in out and "response_message " in out
    assert "conversation_index: " in out and "ANN recall@10 " in out and "ranker chat_ranker" in out
    assert "chat_ranker: thread " in out and "response_message " in out and "dev MRR@10" in out
    assert re.search(r"fit on \d+ train-split queries, chosen on \d+ other dev queries", out)
    assert re.search(r"disentangler: \d+ held-out channels, link F / VI / one-to-one / conversation F [\d.]+ / ", out)
    # The disentangler ran after onnx_model and encoded with the export it published (else with PyTorch).
    models = ModelStore(root=str(workdir / "models"))
    card = json.loads((models.latest("disentangler") / "disentangler.json").read_text())
    export = models.latest("onnx_model")
    assert card["onnx"] == (str(export) if export else None) and card["encoder"]
    assert "is_new balanced accuracy " in out and " on test messages (tuned on dev: " in out
    timings = next(line for line in out.splitlines() if line.startswith("seconds per step ("))
    assert re.search(r"raw_messages \d+, messages \d+", timings) and "thread_model " in timings
    assert "benchmark_scores, MRR@10 (full dimension); queries from test-split conversations" in out
    table = out.split("benchmark_scores, MRR@10")[1]  # the run ends with the scores of base, baselines and stages
    for model, retriever in [
        ("base", "dense"),
        ("bm25", "bm25"),
        ("recency", "recency"),
        ("chat_ranker", "chat_ranker"),
        *[(s, "dense") for s in STAGES],
    ]:
        assert f"| {model} | {retriever} |" in table


def test_the_cpu_run_leaves_out_stages_2_and_3_and_their_checks_unless_asked():
    graph = defs.resolve_asset_graph()
    skipped = {"retrieval_model", "hard_negative_pairs", "hard_negative_model"}
    for preset, all_stages, expect_skipped in [("cpu", False, True), ("cpu", True, False), ("smoke", False, False)]:
        selection = run.run_selection(preset, all_stages)
        assets = {key.to_user_string() for key in selection.resolve(graph)}
        checks = {key.asset_key.to_user_string() for key in selection.resolve_checks(graph)}
        assert {"thread_model", "chat_ranker", "conversation_index"} <= assets
        assert (skipped.isdisjoint(assets) and "hard_negative_pairs" not in checks) == expect_skipped
        assert (skipped <= assets) == (not expect_skipped)
        assert set(run.op_config(preset, all_stages)) <= assets  # config for an asset not run is a config error
