"""Symlinks switched in one atomic rename: a reader sees the old target or the new one, never neither."""

import os
from pathlib import Path


def switch_link(link: Path, target: Path, within: Path) -> Path:
    """Point `link` at `target`: a relative link when the target lies under `within` (so the folder can move),
    else an absolute one."""
    target = Path(target).resolve()
    inside = target.is_relative_to(Path(within).resolve())
    staging = _staging(link, str(os.getpid()))
    staging.unlink(missing_ok=True)
    staging.symlink_to(os.path.relpath(target, link.parent.resolve()) if inside else str(target), True)
    os.replace(staging, link)
    return link


def clear_staging(link: Path) -> None:
    """Remove the staging links that processes killed inside `switch_link` left beside `link`."""
    for stale in link.parent.glob(_staging(link, "*").name):
        stale.unlink(missing_ok=True)


def _staging(link: Path, pid: str) -> Path:
    return link.with_name(f".{link.name}-{pid}")
