"""The score cache: one model's raw outputs per request, keyed by content, so nothing is scored twice.

Folder = the model's weight fingerprint + decoding settings + evalkit version; entry = the
request's content hash. lm-eval's own caches key by request or task name and not by model or
data, so they are never used (adapter B was served adapter A's results from a shared lm-eval
cache: lm-eval issues #2715, #4063). Next-token distributions (for KL) are
kept as .npy files beside the entries.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.files import cannot_write, stable_hash, write_json_atomic
from evalkit.paths import cache_root
from evalkit.versions import __version__

# Bump when what an entry holds changes, so old entries are never read as new ones (7: packs attend
# in rows of their own width, which bf16 rounds otherwise; 6: nothing a
# tokenizer appends to a text is scored or continued; 5: bf16
# keeps the residual stream in fp32, and fp32 scoring folds the adapter into the weights).
CACHE_VERSION = 7

log = logging.getLogger("evalkit")


def _digest(value: Any) -> str:
    return stable_hash(value)[:16]


class ScoreCache:
    """Each entry is stored with a checksum of its value (arrays: of their file's bytes). An entry
    that does not match it - truncated, edited, of the wrong type - is dropped with one warning
    line and computed again, so one damaged file never stops later runs."""

    def __init__(self, fingerprint: str, decoding: dict[str, Any], root: Path | None = None):
        key = stable_hash({"model": fingerprint, "decoding": decoding, "evalkit": __version__,
                           "entries": CACHE_VERSION})[:24]
        self.dir = (root or cache_root() / "scores") / key
        self.entries = self._read()
        self._dropped: set[str] = set()
        self._dirty = False

    def _read(self) -> dict[str, Any]:
        path = self.dir / "entries.json"
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            log.warning("evalkit: damaged score cache %s: computing its scores again", path)
            return {}
        if not isinstance(entries, dict):
            log.warning("evalkit: damaged score cache %s: computing its scores again", path)
            return {}
        return entries

    def _drop(self, key: str, what: str) -> None:
        log.warning("evalkit: damaged score cache entry %s in %s (%s): computing it again", key, self.dir, what)
        self.entries.pop(key, None)
        self._dropped.add(key)
        self._dirty = True

    def get(self, key: str) -> Any | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        whole = isinstance(entry, dict) and set(entry) == {"value", "digest"}
        if not (whole and entry["digest"] == _digest(entry["value"])):
            self._drop(key, "checksum does not match")
            return None
        return entry["value"]

    def put(self, key: str, value: Any) -> None:
        self.entries[key] = {"value": value, "digest": _digest(value)}
        self._dropped.discard(key)
        self._dirty = True

    def get_array(self, key: str) -> np.ndarray | None:
        path = self.dir / "arrays" / f"{key}.npy"
        expected = self.get(f"array:{key}")
        if expected is None or not path.is_file():
            return None
        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != expected:
                raise ValueError("checksum does not match")
            return np.load(io.BytesIO(data))
        except (OSError, ValueError) as exc:
            self._drop(f"array:{key}", str(exc))
            return None

    def put_array(self, key: str, array: np.ndarray) -> None:
        folder = self.dir / "arrays"
        buffer = io.BytesIO()
        np.save(buffer, array)
        data = buffer.getvalue()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npy.tmp")
        except OSError as exc:
            raise cannot_write(folder, exc) from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, folder / f"{key}.npy")
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise cannot_write(folder / f"{key}.npy", exc) from None
        self.put(f"array:{key}", hashlib.sha256(data).hexdigest())

    def save(self) -> None:
        """Write this process's new entries, merged with what others (Ray workers scoring other
        suites of the same model, a second evalkit run) saved meanwhile, under a file lock."""
        if not self._dirty:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock_file = open(self.dir / ".lock", "w")
        except OSError as exc:
            raise cannot_write(self.dir, exc) from None
        with lock_file as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                on_disk = json.loads((self.dir / "entries.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                on_disk = {}
            merged = {**(on_disk if isinstance(on_disk, dict) else {}), **self.entries}
            self.entries = {k: v for k, v in merged.items() if k not in self._dropped}
            write_json_atomic(self.dir / "entries.json", self.entries)
        self._dirty = False
