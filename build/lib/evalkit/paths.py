"""Where evalkit keeps what it builds once and reuses, and where its bundled inputs live."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$EVALKIT_CACHE`, else `~/.cache/evalkit`. Everything in it is keyed by content."""
    env = os.environ.get("EVALKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evalkit"


def bundled(name: str) -> Path:
    """The probes/ or scenes/ shipped inside the package (package data, so a wheel has them)."""
    return Path(__file__).resolve().parent / "bundled" / name


def default_folder(name: str) -> Path:
    """`./<name>` when it exists, else the bundled one."""
    here = Path.cwd() / name
    return here if here.is_dir() else bundled(name)


def adapters_folder() -> Path:
    """Where trained adapters go by default: ./adapters (made when first needed)."""
    return Path.cwd() / "adapters"
