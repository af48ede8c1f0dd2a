"""Versions and provenance stamped into every manifest and run record."""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

__version__ = "0.1.0"

PACKAGES = ("evalkit", "torch", "transformers", "peft", "lm_eval", "scipy", "numpy", "pydantic", "jinja2")


@lru_cache(maxsize=1)  # one lookup per process, however many records a run writes
def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@lru_cache(maxsize=8)
def git_commit(where: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
