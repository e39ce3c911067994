"""Training presets: how long and how hard each stage trains, on a laptop CPU or a GPU."""

from dataclasses import dataclass, replace

import dagster as dg
from pydantic import Field


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Hyperparameters and budgets of one stage.

    The step budget plans the schedule (warmup, then linear decay to zero at `max_steps`); `max_minutes` is only a
    safety stop for a machine much slower than the preset expects, so a stage's result does not depend on how fast
    the machine is.
    """

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
    negatives: bool = True  # rows with a negative train as triplets (a dataset of their own)
    separate_conversations: bool = True  # no two rows of one conversation (own or negative's) in a batch
    group_by_length: bool = True  # batches of similar lengths: less padding on CPU
    # `latest` moves only when the stage beats the model it started from on dev (smoke: always, it checks plumbing)
    publish_only_if_better: bool = True


_SMOKE = dict(
    epochs=1,
    max_minutes=5,
    batch_size=8,
    max_seq_length=64,
    save_steps=2,
    eval_queries=40,
    publish_only_if_better=False,
)
_CPU = dict(epochs=1, batch_size=32, max_seq_length=128, save_steps=25, eval_queries=300)
_GPU = dict(max_steps=1_000_000, batch_size=512, max_seq_length=256, max_pairs=5_000_000, save_steps=500)
_GPU_EVAL = dict(eval_queries=2000, warmup_ratio=0.05, cached_loss_mini_batch=64)

PRESETS: dict[str, dict[str, Recipe]] = {
    "smoke": {
        "thread_model": Recipe(**_SMOKE, max_steps=4, learning_rate=5e-5, max_pairs=64),
        "retrieval_model": Recipe(**_SMOKE, max_steps=3, learning_rate=2e-5, max_pairs=48),
        "hard_negative_model": Recipe(**_SMOKE, max_steps=3, learning_rate=2e-5, max_pairs=48),
    },
    # Step budgets planned from the throughput measured on 2 CPU cores (stage 2's pairs about 9 pairs/s and stage 3's
    # triplets about 6 at 128 tokens) and a dev evaluation of about 50 s per model. Stage 1 reads 96 tokens (72 steps
    # of it cost what 56 at 128 do, and score as well or better on held-out chat) and its rows as pairs: the
    # interleaved negative as a third text costs 2.3x the time per pair and tied (docs/pipeline/training.md).
    "cpu": {
        "thread_model": Recipe(
            **{**_CPU, "max_seq_length": 96},
            max_steps=72,
            max_minutes=8,
            learning_rate=3e-5,
            max_pairs=12_000,
            negatives=False,
        ),
        "retrieval_model": Recipe(**_CPU, max_steps=28, max_minutes=4, learning_rate=1.5e-5, max_pairs=8_000),
        "hard_negative_model": Recipe(**_CPU, max_steps=16, max_minutes=4, learning_rate=1e-5, max_pairs=6_000),
    },
    # The full recipe: every pair, several epochs, large cached batches; minutes are a safety stop only.
    "gpu": {
        "thread_model": Recipe(**_GPU, **_GPU_EVAL, epochs=3, max_minutes=600, learning_rate=2e-5),
        "retrieval_model": Recipe(**_GPU, **_GPU_EVAL, epochs=2, max_minutes=300, learning_rate=5e-6),
        "hard_negative_model": Recipe(
            **{**_GPU, "batch_size": 256}, **_GPU_EVAL, epochs=1, max_minutes=300, learning_rate=5e-6
        ),
    },
}


# Assets `make run` leaves out under a preset (`--all-stages` runs them). On 2 CPU cores, stages 2 and 3 at the
# budget that fits the run tie stage 1 on dev (about +-0.01 MRR@10, never significant: docs/pipeline/training.md), so
# they are never published and change nothing downstream; they and the mining between them took 10 of the run's 36
# minutes.
RUN_LEAVES_OUT = {"cpu": ("retrieval_model", "hard_negative_pairs", "hard_negative_model")}

# Train pairs per source that `hard_negative_pairs` mines for, by preset (encoding dominates its time).
MINING_ANCHORS = {"smoke": 64, "cpu": 3000, "gpu": 200_000}

# Benchmark queries per task and split that `make run` asks for, by preset: encoding the candidates of every model
# dominates the benchmark's time, and queries are taken channel by channel, so the budget bounds the corpus too.
# `make eval` measures with more.
BENCHMARK_QUERIES = {"smoke": 20, "cpu": 30, "gpu": 500}

# Dev-split messages that `conversation_index` tunes `is_new` on, by preset (each is one `thread_of`).
INDEX_TUNE_MESSAGES = {"smoke": 40, "cpu": 100, "gpu": 1000}

# Boosting rounds of the `disentangler`'s ranking model, by preset.
DISENTANGLER_ROUNDS = {"smoke": 20, "cpu": 300, "gpu": 300}

# Dev-split queries per task that `onnx_model` compares its int8 export with PyTorch on, by preset.
ONNX_DEV_QUERIES = {"smoke": 20, "cpu": 200, "gpu": 500}

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
    publish_only_if_better: bool | None = Field(
        default=None,
        description="Overrides the preset's rule (cpu, gpu: true; smoke: false) that `latest` moves only when the "
        "stage beats the model it started from on dev.",
    )
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
            ("publish_only_if_better", config.publish_only_if_better),
            ("batch_size", batch_size),
        ]
        if value is not None
    }
    return replace(PRESETS[config.preset][stage], **overrides)
