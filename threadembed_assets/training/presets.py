"""Training presets: how long and how hard each stage trains, on a laptop CPU or a GPU."""

from dataclasses import dataclass, replace

import dagster as dg
from pydantic import Field


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters and budgets of one stage."""

    epochs: float
    max_steps: int
    max_minutes: float
    learning_rate: float
    batch_size: int
    max_seq_length: int
    max_pairs: int
    save_steps: int
    eval_queries: int
    warmup_ratio: float = 0.1
    cached_loss_mini_batch: int | None = None  # CachedMultipleNegativesRankingLoss for batches beyond memory


PRESETS: dict[str, dict[str, Recipe]] = {
    "smoke": {
        "thread_model": Recipe(1, 4, 2, 5e-5, 8, 64, 64, 2, 40),
        "retrieval_model": Recipe(1, 3, 2, 2e-5, 8, 64, 48, 2, 40),
        "hard_negative_model": Recipe(1, 3, 2, 2e-5, 8, 64, 48, 2, 40),
    },
    "cpu": {
        "thread_model": Recipe(1, 150, 3.0, 3e-5, 32, 128, 12_000, 25, 300),
        "retrieval_model": Recipe(1, 90, 1.5, 1.5e-5, 32, 128, 8_000, 25, 300),
        "hard_negative_model": Recipe(1, 70, 1.5, 1e-5, 32, 128, 6_000, 25, 300),
    },
    "gpu": {
        "thread_model": Recipe(3, 100_000, 240, 2e-5, 512, 256, 5_000_000, 500, 2000, 0.05, 64),
        "retrieval_model": Recipe(2, 100_000, 120, 5e-6, 512, 256, 5_000_000, 500, 2000, 0.05, 64),
        "hard_negative_model": Recipe(1, 100_000, 120, 5e-6, 256, 256, 5_000_000, 500, 2000, 0.05, 64),
    },
}


# Train pairs per source that `hard_negative_pairs` mines for, by preset (encoding dominates its time).
MINING_ANCHORS = {"smoke": 64, "cpu": 3000, "gpu": 200_000}

# Benchmark queries per task and split that `make run` asks for, by preset: encoding the candidates of every model
# dominates the benchmark's time, and queries are taken channel by channel, so the budget bounds the corpus too.
# `make eval` measures with more.
BENCHMARK_QUERIES = {"smoke": 20, "cpu": 30, "gpu": 500}

# Train- and dev-split queries per task that `chat_ranker` fits and chooses its learners on, by preset.
RANKER_QUERIES = {"smoke": 20, "cpu": 300, "gpu": 2000}


class TrainConfig(dg.Config):
    """Run config of a training asset: a preset, and optional overrides of its budgets."""

    preset: str = Field(default="cpu", description="smoke (seconds, tests) | cpu (minutes) | gpu (full recipe).")
    max_steps: int | None = Field(default=None, description="Overrides the preset's step budget.")
    max_minutes: float | None = Field(default=None, description="Overrides the preset's wall-clock budget.")
    learning_rate: float | None = Field(default=None, description="Overrides the preset's learning rate.")
    save_steps: int | None = Field(default=None, description="Overrides how often a checkpoint is written.")
    max_pairs: int | None = Field(default=None, description="Overrides how many train pairs the stage reads.")
    seed: int = Field(default=13, description="Shuffling and initialisation seed.")
    exclude_platforms: list[str] = Field(
        default=[],
        description="Platforms (irc, discord, slack, ...) whose conversations the stage never sees: left out of its "
        "train pairs and its dev evaluation, and recorded in the checkpoint's provenance.",
    )


def recipe_for(stage: str, config: TrainConfig, batch_size: int | None = None) -> Recipe:
    """The stage's recipe under `config` (and a batch size forced by the compute resource)."""
    if config.preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, not {config.preset!r}")
    overrides = {
        name: value
        for name, value in [
            ("max_steps", config.max_steps),
            ("max_minutes", config.max_minutes),
            ("learning_rate", config.learning_rate),
            ("save_steps", config.save_steps),
            ("max_pairs", config.max_pairs),
            ("batch_size", batch_size),
        ]
        if value is not None
    }
    return replace(PRESETS[config.preset][stage], **overrides)
