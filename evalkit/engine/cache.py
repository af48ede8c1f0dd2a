"""The score cache: one model's raw outputs per request, keyed by content, so nothing is scored twice.

Folder = the model's weight fingerprint + decoding settings + evalkit version; entry = the
request's content hash. lm-eval's own caches key by request or task name and not by model or
data, so they are never used (adapter B was served adapter A's results from a shared lm-eval
cache: lm-eval issues #2715, #4063). Next-token distributions (for KL) are
kept as .npy files beside the entries.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.files import stable_hash, write_json_atomic
from evalkit.paths import cache_root
from evalkit.versions import __version__

# Bump when what an entry holds changes, so old entries are never read as new ones.
CACHE_VERSION = 3


class ScoreCache:
    def __init__(self, fingerprint: str, decoding: dict[str, Any], root: Path | None = None):
        key = stable_hash({"model": fingerprint, "decoding": decoding, "evalkit": __version__,
                           "entries": CACHE_VERSION})[:24]
        self.dir = (root or cache_root() / "scores") / key
        try:
            self.entries: dict[str, Any] = json.loads((self.dir / "entries.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}
        self._dirty = False

    def get(self, key: str) -> Any | None:
        return self.entries.get(key)

    def put(self, key: str, value: Any) -> None:
        self.entries[key] = value
        self._dirty = True

    def get_array(self, key: str) -> np.ndarray | None:
        path = self.dir / "arrays" / f"{key}.npy"
        return np.load(path) if path.is_file() else None

    def put_array(self, key: str, array: np.ndarray) -> None:
        folder = self.dir / "arrays"
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, folder / f"{key}.npy")

    def save(self) -> None:
        """Write this process's new entries, merged with what others (Ray workers scoring other
        suites of the same model, a second evalkit run) saved meanwhile, under a file lock."""
        if not self._dirty:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                on_disk = json.loads((self.dir / "entries.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                on_disk = {}
            self.entries = {**on_disk, **self.entries}
            write_json_atomic(self.dir / "entries.json", self.entries)
        self._dirty = False
