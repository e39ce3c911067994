"""Results files the manual includes: what a bench script or `make run` found, headed by the date, the command, the
commit and the machine that produced it."""

import os
import platform
import shlex
import subprocess
from datetime import date
from pathlib import Path


def _shown(argument: str) -> str:
    """A command-line argument as a results file shows it: an absolute path by its last two parts only."""
    return f".../{Path(argument).parent.name}/{Path(argument).name}" if argument.startswith("/") else argument


def provenance(command: list[str]) -> str:
    """One line: when, by which command (absolute paths shortened), at which commit, on what machine."""
    shown = shlex.join(_shown(argument) for argument in command)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:  # no git on this machine (a container image)
        commit = ""
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    return f"*{date.today().isoformat()}, `{shown}`, commit {commit or 'unknown'}, {machine}.*"


def write_results(path: Path, text: str, command: list[str]) -> None:
    """`text` under its provenance line, in the results file `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{provenance(command)}\n\n{text}\n")
