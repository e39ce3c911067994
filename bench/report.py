"""What a bench script found, printed and, with `--write PATH`, kept as a results file the manual includes, headed
by the date, the command, the commit and the machine that produced it."""

import argparse
import os
import platform
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np

from threadembed_assets.chat.metrics import paired_test, verdict


def add_write_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--write", type=Path, help="also write the results to this file (e.g. docs/results/x.md)")


def _shown(argument: str) -> str:
    """A command-line argument as the results file shows it: an absolute path by its last two parts only."""
    return f".../{Path(argument).parent.name}/{Path(argument).name}" if argument.startswith("/") else argument


def provenance() -> str:
    """One line: when, by which command (absolute paths shortened), at which commit, on what machine."""
    command = shlex.join(["python", *(_shown(argument) for argument in sys.argv)])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    return f"*{date.today().isoformat()}, `{command}`, commit {commit or 'unknown'}, {machine}.*"


def emit(lines: list[str], write: Path | None) -> None:
    """Print `lines`; with `write`, also write them under their provenance line."""
    text = "\n".join(lines)
    print(text)
    if write is not None:
        write.parent.mkdir(parents=True, exist_ok=True)
        write.write_text(f"{provenance()}\n\n{text}\n")


def paired_row(cells: list[str], reference: np.ndarray, candidate: np.ndarray) -> str:
    """A table row: `cells`, the queries, both MRR@10s, and the paired verdict of `candidate` against `reference` on
    the same queries."""
    delta, p_value = paired_test(candidate, reference)
    values = [str(len(reference)), f"{reference.mean():.4f}", f"{candidate.mean():.4f}"]
    return "| " + " | ".join([*cells, *values, f"{verdict(delta, p_value)} {delta:+.4f} p={p_value:.3f}"]) + " |"
