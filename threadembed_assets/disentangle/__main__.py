"""Untangle chat logs into conversations with the published disentangler.

python -m threadembed_assets.disentangle LOG.raw.txt ... --format irc-annotated [--from-line 1000]
    prints `<stem>:<line> <parent line> -` for every line from --from-line on (the corpus's own output format)
python -m threadembed_assets.disentangle chat.jsonl --format jsonl > linked.jsonl
    writes the messages back with `reply_to` and `conversation_id` set (the ones in the file are ignored)
"""

import argparse
import json
import sys
from pathlib import Path

from threadembed_assets import settings
from threadembed_assets.chat.corpus import FormatError, Log, format_links, log_from_messages, read_raw
from threadembed_assets.chat.linker import DISENTANGLER, conversation_roots, load_published
from threadembed_assets.resources import ModelStore
from threadembed_assets.sources.chat_jsonl import epoch_seconds, read_messages


def channels_of(path: Path) -> list[tuple[str, list[dict]]]:
    """(channel, its messages in file order) of a chat JSONL file."""
    channels: dict[str, list[dict]] = {}
    for number, row in enumerate(read_messages(path), 1):
        if "text" not in row:
            raise FormatError(f"{path}: message {number} has no `text`")
        channels.setdefault(str(row.get("channel") or ""), []).append(row)
    return list(channels.items())


def jsonl_log(path: Path, channel: str, rows: list[dict]) -> Log:
    epoch = [epoch_seconds(row.get("timestamp")) for row in rows]
    ids = [str(row.get("message_id") or f"{path.stem}:{k}") for k, row in enumerate(rows)]
    return log_from_messages(
        f"{path.stem}/{channel}",
        [(i, None, row.get("author"), t, str(row["text"])) for i, row, t in zip(ids, rows, epoch, strict=True)],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--format", choices=["irc-annotated", "jsonl"], default="irc-annotated")
    parser.add_argument("--from-line", type=int, default=0, help="irc-annotated: print links from this line on.")
    parser.add_argument("--model", type=Path, help="A disentangler folder (default: models/disentangler/latest).")
    args = parser.parse_args(argv)
    folder = args.model or ModelStore(root=str(settings.models_dir())).latest(DISENTANGLER)
    if folder is None:
        print(f"no published {DISENTANGLER}: `make run` trains one, or pass --model", file=sys.stderr)
        return 2
    try:
        linker, _, encode = load_published(folder)
        for path in args.files:
            if args.format == "jsonl":
                for channel, rows in channels_of(path):
                    log = jsonl_log(path, channel, rows)
                    parents = linker.link(log, encode)
                    roots = conversation_roots(parents)
                    for k, row in enumerate(rows):
                        row["reply_to"] = None if parents[k] == k else log.ids[parents[k]]
                        row["conversation_id"] = log.ids[roots[k]]
                        print(json.dumps(row, ensure_ascii=False))
                continue
            log = read_raw(path)
            if log.system.all() and len(log):
                raise FormatError(
                    f"{path}: no line looks like an IRC message (`[HH:MM] <nick> text` or `<nick> text`); "
                    "--format jsonl reads chat JSONL"
                )
            print("\n".join(format_links(log, linker.link(log, encode), args.from_line)))
    except (ValueError, OSError) as exc:  # FormatError is a ValueError
        print(f"disentangle: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    settings.exit_quietly(main())
