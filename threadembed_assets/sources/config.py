"""Run config of the raw assets: one class for every source; each loader reads the fields it needs."""

import dagster as dg
from pydantic import Field

HUB_ROW_BUDGET = 200_000  # messages a hub source keeps unless its run config says otherwise


class SourceConfigError(ValueError):
    """A source configured in a way it cannot load (no files where it reads them, a path it does not take, files
    of mixed formats): the user fixes it in run config, so it is shown as a message, not a traceback."""


class RawSourceConfig(dg.Config):
    """Where a raw dataset comes from and how much of it to keep."""

    path: str | None = Field(
        default=None,
        description="Local file or folder in the upstream schema, used instead of the hub "
        "(required for slack_disentangled and clojurians).",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    split: str | None = Field(default=None, description="Upstream split; the source's default when unset.")
    max_rows: int | None = Field(
        default=None,
        description=f"Row budget: stop after this many messages. Unset: hub sources keep {HUB_ROW_BUDGET:,} (the "
        "Discord archive alone is 100+ GB), local sources everything; 0: no budget.",
    )
    sample_rate: float = Field(default=0.01, description="discord_unveiled: fraction of the stream kept.")
    seed: int = Field(default=0, description="Seed of the sample generator and of sampled sources.")
    n_messages: int = Field(default=5000, description="sample: about how many messages to generate.")
    global_conversation_ids: bool = Field(
        default=False,
        description="chat_export: message, reply and conversation ids of chat JSONL files are unique across "
        "files (else each file's ids are its own, prefixed with the file's path).",
    )
    irc_log_date: str | None = Field(
        default=None,
        description="chat_export: day (YYYY-MM-DD) an IRC log starts on when its file name holds no date; its "
        "date markers still set the day. Unset: such a log's lines before any marker are quarantined as no_date.",
    )
    max_archive_bytes: int = Field(
        default=2 * 1024**3, description="chat_export: refuse a zip that expands past this many bytes."
    )
