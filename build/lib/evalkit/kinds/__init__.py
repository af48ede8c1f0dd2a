"""The suite kinds: one module each, declaring its schema, its item metrics and what is tested.

`KINDS` maps a kind's name to its `Kind`, in the order reports show them.
"""

from __future__ import annotations

from evalkit.kinds import consistency, continuation, novel_axis, tension
from evalkit.kinds.base import Choice, Kind, Metric, SuiteSpec

KINDS: dict[str, Kind] = {k.name: k for k in (continuation.KIND, novel_axis.KIND, tension.KIND, consistency.KIND)}
# Report order of the compare heatmap's columns (kind, metric).
HEATMAP_ORDER = ("tension", "novel_axis", "consistency", "continuation")

__all__ = ["KINDS", "HEATMAP_ORDER", "Choice", "Kind", "Metric", "SuiteSpec"]
