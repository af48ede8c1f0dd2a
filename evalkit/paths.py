"""Where evalkit keeps what it builds once and reuses: the demo base and the reference cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$EVALKIT_CACHE`, else `~/.cache/evalkit`. Everything in it is keyed by content."""
    env = os.environ.get("EVALKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evalkit"


def project_root() -> Path:
    """The checkout this package lives in (for the bundled scenes/ and probes/)."""
    return Path(__file__).resolve().parent.parent
