"""`make run`'s entry point: the whole pipeline for a source, checks included, and its summary."""

from threadembed_assets import run


def test_run_materializes_sample_through_the_pair_checks(workdir, capsys):
    assert run.main(["--source", "sample", "--preset", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "source sample: 50" in out and "quarantine: none" in out
    for table in ["thread_pairs", "query_response_pairs", "temporal_pairs", "summary_pairs"]:
        assert f"{table}: dev" in out
        assert f"check {table}.pair_quality: passed" in out
