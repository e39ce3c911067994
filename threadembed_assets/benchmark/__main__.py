"""Score any sentence-transformers model (or BM25) on any chat JSONL file, with tasks built from that file alone.

python -m threadembed_assets.benchmark --model models/hard_negative_model/latest --data irc_dev.jsonl
python -m threadembed_assets.benchmark --model bm25 --data irc_dev.jsonl --json bm25.json
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import duckdb

from threadembed_assets.benchmark.retrievers import EmbeddingCache, default_cache_path
from threadembed_assets.benchmark.score import results_markdown, score_all
from threadembed_assets.benchmark.tasks import TASK_KINDS, TaskConfig, all_tasks, task_kind
from threadembed_assets.sources.chat_jsonl import chat_jsonl_part
from threadembed_assets.sources.raw_cache import write_raw_cache
from threadembed_assets.warehouse.conversations import build_conversations
from threadembed_assets.warehouse.load import LoadOptions, load_messages

ALL_SPLITS = ["train", "dev", "test"]


def tasks_from_file(data: Path, config: TaskConfig) -> list:
    """Every task of a chat JSONL file, built through the same warehouse code as the pipeline."""
    with tempfile.TemporaryDirectory() as work:
        write_raw_cache([chat_jsonl_part(data, "file", None)], Path(work) / "raw")
        with duckdb.connect(str(Path(work) / "warehouse.duckdb")) as con:
            load_messages(con, "file", Path(work) / "raw", LoadOptions())
            build_conversations(con, "file")
            return all_tasks(con, ALL_SPLITS, config)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    parser = argparse.ArgumentParser(prog="python -m threadembed_assets.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="sentence-transformers name or path, or 'bm25'")
    parser.add_argument("--data", required=True, type=Path, help="chat JSONL file")
    parser.add_argument("--tasks", default=",".join(TASK_KINDS), help=f"comma list of {', '.join(TASK_KINDS)}")
    parser.add_argument("--json", type=Path, help="write every score row here")
    parser.add_argument("--max-queries", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--held-out-platform", default="", help="also score tasks 1-2 on this platform alone")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"--data {args.data} is not a file")
    wanted = set(args.tasks.split(","))
    unknown = wanted - set(TASK_KINDS)
    if unknown:
        parser.error(f"unknown tasks {sorted(unknown)}; choose from {', '.join(TASK_KINDS)}")
    config = TaskConfig(max_queries=args.max_queries, held_out_platform=args.held_out_platform)
    tasks = [t for t in tasks_from_file(args.data, config) if task_kind(t.name) in wanted]
    if not tasks:
        print(f"no tasks could be built from {args.data} (conversations of 3+ messages are needed)", file=sys.stderr)
        return 1
    cache = EmbeddingCache(default_cache_path())
    try:
        models = {} if args.model == "bm25" else {args.model: args.model}
        rows, _ = score_all(
            tasks,
            models,
            cache,
            device=args.device,
            batch_size=args.batch_size,
            with_bm25=args.model == "bm25",
            log=lambda m: print(m, file=sys.stderr),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cache.close()
    for task in tasks:
        print(f"{task.name}: {len(task.queries)} queries, {len(task.docs)} documents", file=sys.stderr)
    print(results_markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
