"""Score sentence-transformers models and the chat baselines on a chat file, with tasks built from that file alone.

python -m threadembed_assets.benchmark --model models/hard_negative_model/latest --data irc_dev.jsonl
python -m threadembed_assets.benchmark --model bm25 --data irc_dev.jsonl --json bm25.json
python -m threadembed_assets.benchmark --model recency --data elmlang-general-2019.xml

BM25 and recency are scored on every run: they are the baselines each model's verdict is paired against.
"""

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from threadembed_assets.benchmark.score import BASELINES, results_markdown, score_all, score_rows, verdict_rows
from threadembed_assets.chat.retrievers import EmbeddingCache, default_cache_path
from threadembed_assets.chat.task import TASK_KINDS, Task, task_kind
from threadembed_assets.evaluation.tasks import TaskConfig, all_tasks
from threadembed_assets.sources.chat_jsonl import chat_jsonl_part
from threadembed_assets.sources.config import RawSourceConfig
from threadembed_assets.sources.raw_cache import write_raw_cache
from threadembed_assets.sources.registry import SOURCES
from threadembed_assets.warehouse.conversations import build_conversations
from threadembed_assets.warehouse.load import LoadOptions, load_messages

ALL_SPLITS = ["train", "dev", "test"]


@contextmanager
def file_warehouse(data: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A temporary warehouse holding a chat file (chat JSONL, or an XML file of the disentangled Slack corpus) as
    source `file`, loaded through the same code as the pipeline."""
    if data.suffix == ".xml":
        pieces = SOURCES["slack_disentangled"].load(RawSourceConfig(path=str(data)))
    else:
        pieces = [chat_jsonl_part(data, "file", None)]
    with tempfile.TemporaryDirectory() as work:
        write_raw_cache(pieces, Path(work) / "raw")
        with duckdb.connect(str(Path(work) / "warehouse.duckdb")) as con:
            load_messages(con, "file", Path(work) / "raw", LoadOptions())
            build_conversations(con, "file")
            yield con


def tasks_from_file(data: Path, config: TaskConfig) -> list[Task]:
    """Every task of a chat file (see `file_warehouse`); queries come from every conversation of the file."""
    with file_warehouse(data) as con:
        return all_tasks(con, ALL_SPLITS, config)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    parser = argparse.ArgumentParser(prog="python -m threadembed_assets.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="sentence-transformers name or path, or a baseline ('bm25', 'recency'); repeat for several",
    )
    parser.add_argument("--data", required=True, type=Path, help="chat JSONL file, or a disentangled Slack XML file")
    parser.add_argument("--tasks", default=",".join(TASK_KINDS), help=f"comma list of {', '.join(TASK_KINDS)}")
    parser.add_argument(
        "--ranker", type=Path, help="a chat_ranker folder (e.g. models/chat_ranker/latest) to score too"
    )
    parser.add_argument("--json", type=Path, help="write every score row and paired verdict here")
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
    models = {name: name for name in args.model if name not in BASELINES}
    cache = EmbeddingCache(default_cache_path())
    try:
        results, _ = score_all(
            tasks,
            models,
            cache,
            device=args.device,
            batch_size=args.batch_size,
            ranker_dir=str(args.ranker) if args.ranker else None,
            log=lambda m: print(m, file=sys.stderr),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cache.close()
    for task in tasks:
        print(f"{task.name}: {len(task.queries)} queries, {len(task.docs)} documents", file=sys.stderr)
    print(results_markdown(results))
    if args.json:
        args.json.write_text(json.dumps({"scores": score_rows(results), "verdicts": verdict_rows(results)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
