"""Two trained checkpoints on the same dev queries: the per-query reciprocal ranks each recorded when its stage
finished, compared pair by pair (paired randomization test), per dev task.

    python bench/dev_paired.py MODEL_A MODEL_B [--write docs/results/NAME.md]

Both must come from runs over the same warehouse, so that their dev sets are the same (the recorded digest says so;
otherwise the script refuses). Use it to compare two recipes: `make run` once with each, and each run's
`models/<stage>/<run id>` here. No model is loaded and nothing is encoded.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from report import add_write_option, emit, paired_row

from threadembed_assets.settings import exit_quietly
from threadembed_assets.training.train import DEV_SCORES_FILE


def recorded(folder: Path) -> dict:
    path = folder / DEV_SCORES_FILE
    if not path.exists():
        raise SystemExit(f"{folder}: no {DEV_SCORES_FILE} (not a finished training stage)")
    return json.loads(path.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_a", type=Path)
    parser.add_argument("model_b", type=Path)
    add_write_option(parser)
    args = parser.parse_args()
    a, b = recorded(args.model_a), recorded(args.model_b)
    if a.get("dev_sets") != b.get("dev_sets"):
        raise SystemExit("the two checkpoints were measured on different dev sets: nothing to pair")
    named = [f"`{folder.resolve().parent.name}/{folder.resolve().name}`" for folder in (args.model_a, args.model_b)]
    lines = [f"A: {named[0]}; B: {named[1]}.", ""]
    lines += ["| dev task | queries | A MRR@10 | B MRR@10 | B vs A |", "|---|---|---|---|---|"]
    for task in sorted(set(a.get("per_query") or {}) & set(b.get("per_query") or {})):
        rr_a, rr_b = (np.asarray(found["per_query"][task], dtype=float) for found in (a, b))
        lines.append(paired_row([task], rr_a, rr_b))
    emit(lines, args.write)
    return 0


if __name__ == "__main__":
    exit_quietly(main())
