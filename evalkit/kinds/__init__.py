"""The suite kinds: one module each, declaring its schema, its item metrics and what is tested.

`KINDS` maps a kind's name to its `Kind`, in the order reports show them.
"""

from __future__ import annotations

from evalkit.errors import EvalkitError
from evalkit.kinds import consistency, continuation, novel_axis, tension
from evalkit.kinds.base import Choice, Kind, Metric, SuiteSpec
from evalkit.record import RunRecord

KINDS: dict[str, Kind] = {k.name: k for k in (continuation.KIND, novel_axis.KIND, tension.KIND, consistency.KIND)}
# Report order of the compare heatmap's columns (kind, metric).
HEATMAP_ORDER = ("tension", "novel_axis", "consistency", "continuation")



def check_record(record: RunRecord, where: str) -> None:
    """A record read from a file holds what its kinds promise (the schema alone cannot say it)."""
    for k, suite in enumerate(record.manifest.suites):
        if suite.kind not in KINDS:
            raise EvalkitError(f"field 'manifest.suites.{k}.kind': '{suite.kind}' is not one of {', '.join(KINDS)}",
                               where=f"{where} [{suite.name}]")
    for item in record.items:
        kind = KINDS.get(item.kind)
        at = f"{where} [{item.suite}/{item.item_id}]"
        if kind is None:
            raise EvalkitError(f"field 'kind': '{item.kind}' is not one of {', '.join(KINDS)}", where=at)
        for side in ("reference", "subject"):
            problem = kind.problem(getattr(item, side), item.options)
            if problem:
                raise EvalkitError(f"{side}: {problem}", where=at)


__all__ = ["KINDS", "HEATMAP_ORDER", "Choice", "Kind", "Metric", "SuiteSpec", "check_record"]
