"""The discovery report, and the same section inside a run's report: each direction's label,
strength, replication and null margin in words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.decide.discovery import MATCH_COSINE, REPLICATION_ALPHA, SPLITS
from evalkit.record import DiscoveredDirection, DiscoveryRecord
from evalkit.report.render import write_page


def _tokens(tokens: list[str]) -> str:
    return ", ".join(repr(t) for t in tokens) or "none"


def _summary(record: DiscoveryRecord) -> str:
    found = [d for d in record.directions if d.found]
    # The first SVD direction of uncentred shifts is often the consistent shift again: one change, named twice.
    found = [d for k, d in enumerate(found) if not any(_same(d, e) for e in found[:k])]
    if not record.directions:
        return "Nothing changed at the prompts' ends: the subject equals what it is compared with."
    if not found:
        return ("No direction of change stands out: none both replicates on held-out prompts and stands "
                f"{record.null_ratio_required:g}x beyond what the control adapters change.")
    new = [d for d in found if d.matches is None]
    parts = [f"{len(found)} distinct direction(s) found"]
    if new:
        parts.append(f"{len(new)} new (aligned with no declared axis; strongest label: {_tokens(new[0].promoted[:4])})")
    matched = sorted({d.matches for d in found if d.matches})
    if matched:
        parts.append(f"matching declared axes: {', '.join(matched)}")
    return "; ".join(parts) + "."


def _same(a: DiscoveredDirection, b: DiscoveredDirection) -> bool:
    return a.promoted[:4] == b.promoted[:4] and a.matches == b.matches


def discovery_view(record: DiscoveryRecord) -> dict[str, Any]:
    rows = []
    for d in record.directions:
        rows.append({
            "name": d.name, "reading": d.reading, "share": f"{d.share:.0%}",
            "strength": f"{d.strength:.3f} ({d.relative_strength:.1%} of a hidden state)",
            "promoted": _tokens(d.promoted), "suppressed": _tokens(d.suppressed),
            "lens_promoted": _tokens(d.lens_promoted), "lens_suppressed": _tokens(d.lens_suppressed),
            "replication": ", ".join(f"{p:.2g}" for p in d.held_out_p),
            "null": ("no null (fewer than two controls)" if d.null_strength is None
                     else f"{d.null_ratio:.1f}x the controls' strongest" if d.null_ratio is not None
                     else "the controls show no change"),
            "cosines": ", ".join(f"{a} {c:.2f}" for a, c in sorted(d.cosines.items(), key=lambda x: -x[1])),
            "examples": [{"prompt": p, "reference": r, "subject": s} for p, r, s in
                         zip(d.strongest_prompts, d.reference_continuations, d.subject_continuations)],
            "new": d.matches is None, "matches": d.matches or "", "found": d.found,
        })
    return {"subject": record.subject.name, "reference": record.reference.name, "prompts": record.prompts,
            "bank": record.prompt_bank, "controls": len(record.controls), "against": record.against,
            "ratio": f"{record.null_ratio_required:g}", "rows": rows, "summary": _summary(record),
            "splits": SPLITS, "alpha": f"{REPLICATION_ALPHA:g}", "match": f"{MATCH_COSINE:g}"}


def write_discovery_report(record: DiscoveryRecord, out: Path) -> Path:
    view = {"title": f"evalkit discover — {record.subject.name} vs {record.reference.name}",
            "disc": discovery_view(record)}
    return write_page("discovery.html.j2", view, out)
