"""`sample`: a deterministic generator of multi-channel chat with interleaved threads (small and fast, for tests)."""

import random
from collections.abc import Iterator
from datetime import datetime, timedelta

from threadembed_assets.sources.sample_topics import CHANNELS, NICKS, SMALL_TALK, TOPICS

_START = datetime(2024, 3, 4, 8, 0, 0)


def _fill(template: str, slots: dict[str, str]) -> str:
    return template.format(**slots)


def _style(text: str, platform: str, rng: random.Random) -> str:
    """Platform voice: IRC terse lowercase, Slack sentence case, Discord casual."""
    if platform == "slack":
        return text[0].upper() + text[1:]
    if platform == "discord" and rng.random() < 0.15:
        return text + rng.choice([" lol", " :)", " 🙏", " tbh"])
    return text


def _address(text: str, nick: str, platform: str, rng: random.Random) -> str:
    if platform == "irc" and rng.random() < 0.7:
        return f"{nick}: {text}"
    if platform == "discord" and rng.random() < 0.3:
        return f"@{nick} {text}"
    return text


def _conversation(rng: random.Random, platform: str, kinds: list[str]) -> list[tuple[str, str, int | None]]:
    """One conversation as (author, text, index of the message it replies to)."""
    if rng.random() < 0.12:
        return [(rng.choice(NICKS), rng.choice(SMALL_TALK), None)]
    topic = rng.choice([t for t in TOPICS if set(t["kinds"]) & set(kinds)])
    slots = {"a": rng.choice(topic["a"]), "b": rng.choice(topic["b"])}
    asker, *helpers = rng.sample(NICKS, 4)
    helpers = helpers[: rng.randint(1, 3)]
    turns = [(asker, _style(_fill(rng.choice(topic["open"]), slots), platform, rng), None)]
    answers = rng.sample(topic["answer"], k=min(len(topic["answer"]), rng.randint(1, 3)))
    follows = rng.sample(topic["follow"], k=min(len(topic["follow"]), rng.randint(0, 2)))
    for i, answer in enumerate(answers):
        helper = helpers[i % len(helpers)]
        text = _address(_fill(answer, slots), asker, platform, rng)
        turns.append((helper, _style(text, platform, rng), len(turns) - 1))
        if i < len(follows):
            text = _address(_fill(follows[i], slots), helper, platform, rng)
            turns.append((asker, _style(text, platform, rng), len(turns) - 1))
    if rng.random() < 0.7:
        turns.append((asker, _style(_fill(rng.choice(topic["close"]), slots), platform, rng), len(turns) - 1))
    return turns


def generate_sample(n_messages: int = 5000, seed: int = 0, source: str = "sample") -> Iterator[dict]:
    """Yield about `n_messages` chat rows across several platforms' channels, deterministic for `seed`.

    Conversations start at random times in each channel and overlap, so threads interleave as in real chat;
    replies carry `reply_to` (Slack as threads, Discord on most replies, IRC by nick address) and
    `conversation_id` is the gold thread.
    """
    rng = random.Random(seed)
    per_channel = max(1, n_messages // len(CHANNELS))
    for platform, channel, kinds in CHANNELS:
        rows = []
        clock = _START
        conversation_index = 0
        while len(rows) < per_channel:
            clock += timedelta(seconds=rng.expovariate(1 / 240))
            conversation_id = f"{channel}:c{conversation_index}"
            conversation_index += 1
            ts = clock
            ids: list[str] = []
            for author, text, reply_index in _conversation(rng, platform, kinds):
                message_id = f"{platform}:{channel}:{len(rows)}"
                reply_to = ids[reply_index] if reply_index is not None else None
                if platform == "slack" and reply_to is not None:
                    reply_to = ids[0]  # Slack threads reply to the thread's root
                elif platform == "discord" and rng.random() < 0.3:
                    reply_to = None  # many Discord replies don't use the reply button
                rows.append(
                    {
                        "source": source,
                        "platform": platform,
                        "channel": channel,
                        "message_id": message_id,
                        "conversation_id": conversation_id,
                        "reply_to": reply_to,
                        "timestamp": ts.isoformat(),
                        "author": author,
                        "text": text,
                        "origin": f"sample:seed={seed}",
                    }
                )
                ids.append(message_id)
                ts += timedelta(seconds=rng.randint(15, 400))
        rows.sort(key=lambda row: row["timestamp"])
        for seq, row in enumerate(rows, start=1):
            row["seq"] = seq
            yield row
