"""The reference cache: per-item scores of a model, keyed by content, so a base is scored once.

Key = the model's weight fingerprint + decoding settings + evalkit version (the file), then
the item's content hash (the entry). lm-eval's own caches key by request or task name and
not by model or data, so they are never used (see LM_EVAL_NOTES.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evalkit import __version__
from evalkit.files import stable_hash, write_json_atomic
from evalkit.paths import cache_root


class ScoreCache:
    def __init__(self, fingerprint: str, decoding: dict[str, Any], root: Path | None = None):
        key = stable_hash({"model": fingerprint, "decoding": decoding, "evalkit": __version__})[:24]
        self.path = (root or cache_root() / "reference") / f"{key}.json"
        try:
            self.entries: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}

    def get(self, item_hash: str) -> dict[str, Any] | None:
        return self.entries.get(item_hash)

    def put_many(self, scores: dict[str, dict[str, Any]]) -> None:
        if scores:
            self.entries.update(scores)
            write_json_atomic(self.path, self.entries)
