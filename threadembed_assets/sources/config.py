"""Run config of the raw assets: one class for every source; each loader reads the fields it needs."""

import dagster as dg
from pydantic import Field


class RawSourceConfig(dg.Config):
    """Where a raw dataset comes from and how much of it to keep."""

    path: str | None = Field(
        default=None,
        description="Local file or folder in the upstream schema, used instead of the hub "
        "(required for slack_disentangled and clojurians).",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    split: str | None = Field(default=None, description="Upstream split; the source's default when unset.")
    max_rows: int | None = Field(default=None, description="Row budget: stop after this many messages.")
    sample_rate: float = Field(default=0.01, description="discord_unveiled: fraction of the stream kept.")
    seed: int = Field(default=0, description="Seed of the sample generator and of sampled sources.")
    n_messages: int = Field(default=5000, description="sample: about how many messages to generate.")
    max_archive_bytes: int = Field(
        default=2 * 1024**3, description="chat_export: refuse a zip that expands past this many bytes."
    )
