"""The one rendering of chat used by pairs, training, summaries and benchmark: `author: text`, oldest first, with
mentions written one way on every platform (`@name`), so a model does not learn one platform's markup."""

import re
from collections.abc import Iterable

# (pattern, replacement, platforms it applies to (None: all)), in order; RE2 (DuckDB) and Python `re` read these
# patterns alike. Slack and Discord markup: `<@name>`, `<@!id>`, `<@name|label>` -> `@name`; `<#C1|general>` ->
# `#general`; `<https://x|label>` -> `https://x`. IRC addressing at the start of a line: `nick: text` -> `@nick text`.
MENTION_RULES: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    (r"<@!?([^>|\s]+)(?:\|[^>]*)?>", r"@\1", None),
    (r"<#[^>|\s]*\|([^>\s]+)>", r"#\1", None),
    (r"<((?:https?|mailto):[^>|\s]+)(?:\|[^>]*)?>", r"\1", None),
    (r"^([A-Za-z_\[\]\\^{}|`][A-Za-z0-9_\-\[\]\\^{}|`]{0,31}): ", r"@\1 ", ("irc",)),
)


def normalize_mentions(text: str, platform: str | None) -> str:
    """`text` with mentions, channel references and links written as MENTION_RULES say (see `mentions_sql`)."""
    for pattern, replacement, platforms in MENTION_RULES:
        if platforms is None or platform in platforms:
            text = re.sub(pattern, replacement, text)
    return text


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def mentions_sql(text: str, platform: str) -> str:
    """`normalize_mentions` as a SQL expression over the columns (or expressions) `text` and `platform`."""
    expression = text
    for pattern, replacement, platforms in MENTION_RULES:
        flags = "" if pattern[0] == "^" else ", 'g'"
        replaced = f"regexp_replace({expression}, {_sql_string(pattern)}, {_sql_string(replacement)}{flags})"
        if platforms is None:
            expression = replaced
        else:
            listed = ", ".join(_sql_string(p) for p in platforms)
            expression = f"CASE WHEN {platform} IN ({listed}) THEN {replaced} ELSE {expression} END"
    return expression


# The same rendering in SQL, over the columns `m.author`, `m.text` and `m.platform` (see render_message).
RENDER_MESSAGE_SQL = (
    f"CASE WHEN m.author IS NULL OR m.author = '' THEN '' ELSE m.author || ': ' END || "
    f"{mentions_sql('m.text', 'm.platform')}"
)


def render_message(author: str | None, text: str, platform: str | None = None) -> str:
    """A message as `author: text` (just the text when the author is unknown), mentions normalised."""
    text = normalize_mentions(text, platform)
    return f"{author}: {text}" if author else text  # keep in step with RENDER_MESSAGE_SQL


def render_window(messages: Iterable[tuple[str | None, str]], platform: str | None = None) -> str:
    """(author, text) pairs, oldest first, one rendered message a line."""
    return "\n".join(render_message(author, text, platform) for author, text in messages)
