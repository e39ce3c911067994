"""Seconds and peak memory to build every pair strategy, on the IRC train set and on generated chat.

    python bench/pairs.py [--messages 1000000] [--irc ../shared/data/irc/irc_train.jsonl]

Each source is loaded into a fresh warehouse first (not timed); then each strategy is built in a fresh process so
its peak RSS is its own.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ingest import generate_chat_jsonl

_LOAD = r"""
import sys
from pathlib import Path
import duckdb
from threadembed_assets.sources.chat_jsonl import chat_jsonl_part
from threadembed_assets.sources.raw_cache import write_raw_cache
from threadembed_assets.warehouse.conversations import build_conversations
from threadembed_assets.warehouse.load import LoadOptions, load_messages
path, work = Path(sys.argv[1]), Path(sys.argv[2])
write_raw_cache([chat_jsonl_part(path, "chat_export", None)], work / "raw")
with duckdb.connect(str(work / "warehouse.duckdb")) as con:
    load_messages(con, "chat_export", work / "raw", LoadOptions())
    build_conversations(con, "chat_export")
"""

_BUILD = r"""
import json, resource, sys, time
import duckdb
from threadembed_assets.pairs.build import PairConfig, build_pairs
strategy, warehouse = sys.argv[1], sys.argv[2]
with duckdb.connect(warehouse) as con:
    start = time.perf_counter()
    rows = build_pairs(con, strategy, "chat_export", PairConfig())
    seconds = time.perf_counter() - start
print(json.dumps({"rows": rows, "seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(code: str, *args: str) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    default_irc = Path(__file__).resolve().parents[2] / "shared/data/irc/irc_train.jsonl"
    parser.add_argument("--irc", type=Path, default=default_irc)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = [(args.irc.name, args.irc)] if args.irc.exists() else []
        generated = Path(tmp) / "generated.jsonl"
        generate_chat_jsonl(generated, args.messages)
        files.append((f"generated {args.messages:,} messages", generated))
        print(f"{'data':<30} {'strategy':<22} {'pairs':>9} {'seconds':>8} {'peak RSS MB':>12}")
        for name, path in files:
            work = Path(tmp) / name.split()[0]
            work.mkdir()
            run_child(_LOAD, str(path), str(work))
            total = 0.0
            for strategy, table in [("A", "thread_pairs"), ("B", "query_response_pairs"), ("C", "temporal_pairs")]:
                result = json.loads(run_child(_BUILD, strategy, str(work / "warehouse.duckdb")).splitlines()[-1])
                total += result["seconds"]
                print(
                    f"{name:<30} {table:<22} {result['rows']:>9,} {result['seconds']:>8.2f} "
                    f"{result['peak_rss_mb']:>12.0f}"
                )
            print(f"{name:<30} {'all strategies':<22} {'':>9} {total:>8.2f}")


if __name__ == "__main__":
    main()
