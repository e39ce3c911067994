"""Warehouse load rate and peak memory, next to DuckDB's own `read_json` of the same file in the same run.

    python bench/ingest.py [--messages 1000000] [--irc ../shared/data/irc/irc_train.jsonl] [--repeat 3]

Each measurement runs in a fresh child process so that its peak RSS is its own. "ours" is the whole path a
`chat_export` materialization takes: chat JSONL -> raw Parquet cache -> `messages` + `quarantine` in DuckDB
(conversations, positions, splits, bad-row checks). "duckdb read_json" is DuckDB parsing the file into a table.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import duckdb
from threadembed_assets.sources.chat_jsonl import chat_jsonl_part
from threadembed_assets.sources.raw_cache import write_raw_cache
from threadembed_assets.warehouse.load import LoadOptions, load_messages

mode, path, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
start = time.perf_counter()
if mode == "duckdb":
    con = duckdb.connect(str(work / "raw.duckdb"))
    columns = {name: "VARCHAR" for name in
               ["source", "channel", "message_id", "conversation_id", "reply_to", "timestamp", "author", "text"]}
    con.execute("CREATE TABLE t AS SELECT * FROM read_json($p, format='newline_delimited', columns=$c)",
                {"p": str(path), "c": columns})
    rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    stages = {}
else:
    write_raw_cache([chat_jsonl_part(path, "chat_export", None)], work / "raw")
    raw_done = time.perf_counter()
    con = duckdb.connect(str(work / "warehouse.duckdb"))
    counts = load_messages(con, "chat_export", work / "raw", LoadOptions())
    rows = counts["messages"] + counts["quarantined"]
    stages = {"raw_s": raw_done - start, "warehouse_s": time.perf_counter() - raw_done}
con.close()
seconds = time.perf_counter() - start
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mb": rss_mb, **stages}))
"""


def generate_chat_jsonl(path: Path, n_messages: int) -> None:
    """A chat JSONL file of about `n_messages` generated messages (the sample generator at scale)."""
    from threadembed_assets.sources.sample import generate_sample

    fields = ["source", "channel", "message_id", "conversation_id", "reply_to", "timestamp", "author", "text"]
    with path.open("w") as handle:
        for row in generate_sample(n_messages, seed=7, source="generated"):
            handle.write(json.dumps({name: row[name] for name in fields}) + "\n")


def measure(mode: str, path: Path, repeat: int) -> dict:
    """The run with the median time among `repeat` fresh-process runs."""
    runs = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as work:
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, mode, str(path), work], check=True, capture_output=True, text=True
            )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument(
        "--irc", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/irc/irc_train.jsonl"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        if args.irc.exists():
            files.append((args.irc.name, args.irc))
        generated = Path(tmp) / "generated.jsonl"
        generate_chat_jsonl(generated, args.messages)
        files.append((f"generated {args.messages:,} messages", generated))
        print(
            f"{'file':<32} {'MB':>6} {'rows':>9} {'ours msg/s':>11} {'duckdb msg/s':>13} {'ratio':>6} "
            f"{'raw s':>6} {'warehouse s':>12} {'ours RSS MB':>12} {'duckdb RSS MB':>14}"
        )
        for name, path in files:
            duck = measure("duckdb", path, args.repeat)
            ours = measure("ours", path, args.repeat)
            ours_rate, duck_rate = ours["rows"] / ours["seconds"], duck["rows"] / duck["seconds"]
            print(
                f"{name:<32} {path.stat().st_size / 1e6:>6.1f} {ours['rows']:>9,} {ours_rate:>11,.0f} "
                f"{duck_rate:>13,.0f} {ours_rate / duck_rate:>6.2f} {ours['raw_s']:>6.2f} "
                f"{ours['warehouse_s']:>12.2f} {ours['peak_rss_mb']:>12.0f} {duck['peak_rss_mb']:>14.0f}"
            )


if __name__ == "__main__":
    main()
