"""ThreadEmbed: a Dagster code location that builds sentence-embedding models for chat."""
