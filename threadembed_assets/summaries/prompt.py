"""The versioned summary prompt. Change PROMPT_VERSION with the text: the cache is keyed by it."""

PROMPT_VERSION = "summary-v1"

SYSTEM = (
    "You describe chat conversations so that people can find them again. Write one or two sentences, the way a "
    "person searching for this conversation would phrase it: what the problem or topic was and what came of it, "
    "with the concrete names (software, errors, places) that appear. No preamble, no quotes, no usernames."
)


def summary_messages(conversation: str) -> list[dict]:
    """Chat messages asking for a searchable description of one rendered conversation."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Conversation:\n{conversation}\n\nDescription:"},
    ]
