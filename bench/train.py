"""Training throughput of the stage code (what the training assets run) against a bare
`SentenceTransformerTrainer` on the same triplets, in the same run.

    python bench/train.py [--steps 40] [--batch-size 32] [--messages 5000] [--warehouse data/warehouse.duckdb]

Both train MultipleNegativesRankingLoss inside MatryoshkaLoss from the same base model on the same `thread_pairs`
triplets (anchor, positive, interleaved negative; generated sample chat, or with `--warehouse` the train triplets of
a warehouse `make run` built, real chat with its real spread of lengths; max_seq_length 128): the bare trainer with
sentence-transformers' no-duplicates batches, the stage with its own sampler (no duplicates, no shared conversation,
length-grouped batches). Each runs twice, alternating. On both sides pairs/s is
steps x batch / training seconds, timed by the same callback (`StageProgress`) from the first step's start to the
end of training with checkpoint writes left out: the stage's figure is its `pairs_per_second` (the metadata
value), the bare trainer's is the same measure of a `trainer.train()` with no checkpoints and no stage code around
it. Model loading, trainer set-up, the dev evaluation (none here: empty evaluation set) and the final save are
outside the timed span on both sides; the stage's whole time (`wall_seconds`, with its final save) is printed
beside it.
"""

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
from datasets import DatasetDict
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.training_args import BatchSamplers

from threadembed_assets.pairs.build import PairConfig, build_pairs
from threadembed_assets.resources import ModelStore
from threadembed_assets.sources.raw_cache import write_raw_cache
from threadembed_assets.sources.sample import generate_sample
from threadembed_assets.sources.schema import batched
from threadembed_assets.training.data import GROUP_COLUMNS, load_training_sets
from threadembed_assets.training.presets import Recipe
from threadembed_assets.training.train import StageProgress, build_loss, train_stage
from threadembed_assets.warehouse.conversations import build_conversations
from threadembed_assets.warehouse.load import LoadOptions, load_messages


def warehouse_pairs(path: Path, n_pairs: int):
    """The train triplets of `thread_pairs` in the warehouse at `path` (every source)."""
    with duckdb.connect(str(path), read_only=True) as con:
        return load_training_sets(con, ["thread_pairs"], n_pairs, seed=1)["thread_pairs"]


def generated_warehouse(work: Path, n_messages: int) -> Path:
    """A warehouse in `work` with the `thread_pairs` of `n_messages` of generated sample chat."""
    path = work / "warehouse.duckdb"
    write_raw_cache(batched(generate_sample(n_messages, seed=5)), work / "raw")
    with duckdb.connect(str(path)) as con:
        load_messages(con, "sample", work / "raw", LoadOptions())
        build_conversations(con, "sample")
        build_pairs(con, "A", "sample", PairConfig())
    return path


def bare(dataset, base: str, recipe: Recipe, work: Path) -> tuple[float, float]:
    """(pairs/s, wall seconds of `trainer.train()`) of a plain trainer, timed as the stage times itself."""
    model = SentenceTransformer(base, device="cpu")
    model.max_seq_length = recipe.max_seq_length
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "bare"),
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        warmup_steps=recipe.warmup_ratio,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    timer = StageProgress(lambda message: None, recipe.batch_size, max_seconds=float("inf"))
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset.remove_columns(list(GROUP_COLUMNS)),
        loss=build_loss(model, recipe),
        callbacks=[timer],
    )
    start = time.perf_counter()
    trainer.train()
    return timer.pairs_per_second(), time.perf_counter() - start


def ours(dataset, base: str, recipe: Recipe, work: Path, attempt: int) -> tuple[float, float]:
    """(pairs/s as the stage reports it, the stage's wall seconds with its final save)."""
    result = train_stage(
        stage="bench",
        start_from=base,
        train_sets=DatasetDict({"thread_pairs": dataset}),
        eval_sets={},
        recipe=recipe,
        device="cpu",
        precision="fp32",
        eval_batch_size=64,
        work_dir=work / f"work{attempt}",
        run_dir=work / f"run{attempt}",
        seed=13,
        log=lambda message: None,
    )
    return result.pairs_per_second, result.wall_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--warehouse", type=Path, help="train on this warehouse's thread triplets instead")
    args = parser.parse_args()
    recipe = Recipe(
        epochs=100,
        max_steps=args.steps,
        max_minutes=60,
        learning_rate=3e-5,
        batch_size=args.batch_size,
        max_seq_length=128,
        max_pairs=args.steps * args.batch_size,
        save_steps=10_000,
        eval_queries=0,
    )
    base = ModelStore().base_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        warehouse = args.warehouse or generated_warehouse(work, args.messages)
        dataset = warehouse_pairs(warehouse, recipe.max_pairs)
        runs = {"bare trainer": [], "threadembed stage": []}
        for attempt in range(2):
            runs["bare trainer"].append(bare(dataset, base, recipe, work))
            runs["threadembed stage"].append(ours(dataset, base, recipe, work, attempt))
        best = {name: max(rate for rate, _ in values) for name, values in runs.items()}
        origin = f"of {args.warehouse}" if args.warehouse else "of generated chat"
        shape = f"{args.steps} steps x batch {args.batch_size}, max_seq_length 128, CPU"
        print(f"{len(dataset)} thread triplets {origin}, {shape}")
        print("training pairs/s (first step to end of training, checkpoint writes excluded); wall s of the call")
        for name, values in runs.items():
            rates = " ".join(f"{rate:6.1f}" for rate, _ in values)
            walls = " ".join(f"{wall:5.1f}" for _, wall in values)
            print(f"{name:<20} {rates} pairs/s  (best {best[name]:.1f})   wall {walls} s")
        print(f"ratio (best of each): {best['threadembed stage'] / best['bare trainer']:.2f}x")


if __name__ == "__main__":
    main()
