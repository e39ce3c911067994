"""The one rendering of chat used by pairs, summaries and benchmark: `author: text`, oldest first."""

from collections.abc import Iterable

# The same rendering in SQL, over columns `author` and `text` (see render_message).
RENDER_MESSAGE_SQL = "CASE WHEN author IS NULL OR author = '' THEN text ELSE author || ': ' || text END"


def render_message(author: str | None, text: str) -> str:
    """A message as `author: text` (just the text when the author is unknown)."""
    return f"{author}: {text}" if author else text  # keep in step with RENDER_MESSAGE_SQL


def render_window(messages: Iterable[tuple[str | None, str]]) -> str:
    """(author, text) pairs, oldest first, one rendered message a line."""
    return "\n".join(render_message(author, text) for author, text in messages)
