"""Code versions of assets: what the Dagster UI compares to show which materializations a code change made stale."""

import hashlib
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


@cache
def code_version(stage: str, *also: str) -> str:
    """A short digest of the Python source of a stage folder (`sources`, `warehouse`, `pairs`, ...) and of the
    library folders in `also` whose code the stage's assets run (`chat`, `evaluation`): it changes when that code
    does, and only then."""
    digest = hashlib.sha256()
    for folder in (stage, *also):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            digest.update(path.relative_to(PACKAGE).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
