"""Search the warehouse from the command line.

    python -m threadembed_assets.search "grub broke after a kernel update" [--source S] [--k 10] [--json]
    python -m threadembed_assets.search --thread messages.jsonl [--source S] [--k 10] [--json]

The first finds conversations about a text; the second reads chat JSONL (one message a line) and prints the
conversations each message may belong to. Both read `ChatIndex.from_warehouse` (the stored `conversation_index`).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from threadembed_assets import settings
from threadembed_assets.search.index import ChatIndex, Hit
from threadembed_assets.sources.chat_jsonl import read_messages


def format_hits(hits: list[Hit]) -> str:
    lines = []
    for rank, hit in enumerate(hits, start=1):
        when = f"{hit.start} .. {hit.end}" if hit.start else "time unknown"
        lines.append(f"{rank:>2}. {hit.score:.4f}  {hit.conversation_id}  #{hit.channel}  {when}")
        lines += [f"      {text}" for text in hit.snippet.splitlines()[:3]]
    return "\n".join(lines) or "   (no conversation found)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m threadembed_assets.search", description=__doc__.split("\n")[0])
    parser.add_argument("query", nargs="?", help="text to search for")
    parser.add_argument("--thread", type=Path, help="chat JSONL file: find each message's conversation")
    parser.add_argument("--source", default="chat_export", help="warehouse source partition (default chat_export)")
    parser.add_argument("--k", type=int, default=10, help="hits per query (default 10)")
    parser.add_argument("--channel", help="search: only conversations of this channel")
    parser.add_argument("--since", help="search: only conversations with a message at or after this time")
    parser.add_argument("--until", help="search: only conversations with a message at or before this time")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    if (args.query is None) == (args.thread is None):
        parser.error("give a query or --thread FILE.jsonl (one of them)")
    if not 1 <= args.k <= 1000:
        parser.error("--k must be between 1 and 1000")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        messages = read_messages(args.thread) if args.thread else None
        index = ChatIndex.from_warehouse(args.source)
        if messages is None:
            hits = index.search(args.query, k=args.k, channel=args.channel, since=args.since, until=args.until)
            answers = [{"query": args.query, "hits": hits}]
        else:
            answers = []
            for message in messages:
                found = index.thread_of(message, k=args.k)
                answers.append({"message_id": message.get("message_id"), "is_new": found.is_new, "hits": found})
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for answer in answers:
            print(json.dumps({"model": index.model, **answer, "hits": [h.to_dict() for h in answer["hits"]]}))
        return 0
    print(f"model: {index.model}")
    for answer in answers:
        title = answer.get("query") or f"message {answer['message_id']} (new conversation: {answer['is_new']})"
        print(f"\n{title}\n{format_hits(answer['hits'])}")
    return 0


if __name__ == "__main__":
    settings.exit_quietly(main())
