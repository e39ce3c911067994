"""Two-party dialogue datasets mapped to chat rows: one conversation per record, turns as replies."""

import re
from collections.abc import Iterable, Iterator

_CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|<\|end_of_text\|>|$)", re.S)


def turns_to_rows(
    turns: list[tuple[str, str]],
    conversation: str,
    channel: str,
    source: str,
    platform: str,
    origin: str,
    seq: int,
) -> list[dict]:
    """(author, text) turns of one conversation as chat rows, each replying to the turn before."""
    rows = []
    for index, (author, text) in enumerate(turns):
        rows.append(
            {
                "source": source,
                "platform": platform,
                "channel": channel,
                "message_id": f"{conversation}:{index}",
                "conversation_id": conversation,
                "reply_to": f"{conversation}:{index - 1}" if index else None,
                "timestamp": None,
                "author": author,
                "text": text,
                "origin": origin,
                "seq": seq,
            }
        )
    return rows


def chatml_turns(text: str) -> list[tuple[str, str]]:
    """(role, content) turns of a ChatML string (`<|im_start|>user\\n...<|im_end|>`)."""
    return [(role, content.strip()) for role, content in _CHATML_TURN.findall(text or "")]


def discord_dialogues_rows(records: Iterable[dict], source: str, origin: str) -> Iterator[dict]:
    """mookiezi/Discord-Dialogues: a `text` column holding a ChatML chain of Discord messages."""
    for seq, record in enumerate(records, start=1):
        turns = [("speaker_a" if role == "user" else "speaker_b", text) for role, text in chatml_turns(record["text"])]
        yield from turns_to_rows(turns, f"dd{seq}", "discord-dialogues", source, "discord", origin, seq)


def ultrachat_rows(records: Iterable[dict], source: str, origin: str) -> Iterator[dict]:
    """HuggingFaceH4/ultrachat_200k: `prompt_id` and `messages` [{role, content}]."""
    for seq, record in enumerate(records, start=1):
        turns = [(m["role"], m["content"]) for m in record.get("messages") or []]
        conversation = record.get("prompt_id") or f"u{seq}"
        yield from turns_to_rows(turns, conversation, "ultrachat", source, "chat", origin, seq)


def topical_chat_rows(records: Iterable[dict], source: str, origin: str) -> Iterator[dict]:
    """Topical-Chat: `content` [{message, agent, sentiment, ...}] per conversation, grouped by `config`."""
    for seq, record in enumerate(records, start=1):
        turns = [(turn["agent"], turn["message"]) for turn in record.get("content") or []]
        conversation = record.get("conversation_id") or f"tc{seq}"
        channel = f"topical-chat-{record.get('config') or 'all'}"
        yield from turns_to_rows(turns, conversation, channel, source, "chat", origin, seq)


def thread_qa_rows(records: Iterable[dict], source: str, origin: str) -> Iterator[dict]:
    """Slack Q&A threads (`input`: `"<USER>: question"`, `output`: the thread's replies) as two messages."""
    for seq, record in enumerate(records, start=1):
        asker, _, question = (record.get("input") or "").partition(":")
        if not question:
            asker, question = "asker", asker
        question = question.strip().strip("`").strip()
        turns = [
            (asker.strip() or "asker", question),
            ("thread_replies", (record.get("output") or "").strip()),
        ]
        yield from turns_to_rows(turns, f"t{seq}", source, source, "slack", origin, seq)
