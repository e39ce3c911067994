"""What a bench script found, printed and, with `--write PATH`, kept as a results file the manual includes, headed
by the date, the command, the commit and the machine that produced it."""

import argparse
import sys
from pathlib import Path

import numpy as np

from threadembed_assets.chat.metrics import paired_test, verdict
from threadembed_assets.reports import write_results


def add_write_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--write", type=Path, help="also write the results to this file (e.g. docs/results/x.md)")


def emit(lines: list[str], write: Path | None) -> None:
    """Print `lines`; with `write`, also write them under their provenance line."""
    text = "\n".join(lines)
    print(text)
    if write is not None:
        write_results(write, text, ["python", *sys.argv])


def paired_row(cells: list[str], reference: np.ndarray, candidate: np.ndarray) -> str:
    """A table row: `cells`, the queries, both MRR@10s, and the paired verdict of `candidate` against `reference` on
    the same queries."""
    delta, p_value = paired_test(candidate, reference)
    values = [str(len(reference)), f"{reference.mean():.4f}", f"{candidate.mean():.4f}"]
    return "| " + " | ".join([*cells, *values, f"{verdict(delta, p_value)} {delta:+.4f} p={p_value:.3f}"]) + " |"


def encoded_tokens(model, texts: set[str]) -> int:
    """The tokens `model` reads to encode `texts`, each cut at its input length: what encoding them costs."""
    cut = model.tokenizer(sorted(texts), truncation=True, max_length=model.max_seq_length)
    return sum(map(len, cut["input_ids"]))
