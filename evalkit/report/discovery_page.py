"""The discovery report: each direction's label, strength, replication and null margin in words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.record import DiscoveryRecord
from evalkit.report.render import write_page


def discovery_view(record: DiscoveryRecord) -> dict[str, Any]:
    rows = []
    for d in record.directions:
        rows.append({
            "name": d.name, "reading": d.reading, "share": f"{d.share:.0%}", "strength": f"{d.strength:+.3f}",
            "promoted": ", ".join(repr(t) for t in d.promoted), "suppressed": ", ".join(repr(t) for t in d.suppressed),
            "replication": ", ".join(f"p {p:.2g}" for p in d.held_out_p),
            "null": ("not measured" if d.beyond_null is None
                     else f"{d.beyond_null:+.1f} t beyond the largest of {len(d.null_t)} control adapters"),
            "cosines": ", ".join(f"{a} {c:.2f}" for a, c in sorted(d.cosines.items(), key=lambda x: -x[1])),
            "examples": [{"prompt": p, "reference": r, "subject": s} for p, r, s in
                         zip(d.strongest_prompts, d.reference_continuations, d.subject_continuations)],
            "new": d.matches is None, "replicates": d.replicates,
        })
    return {"title": f"evalkit discover — {record.subject.name} vs {record.reference.name}",
            "subject": record.subject.name, "reference": record.reference.name, "prompts": record.prompts,
            "bank": record.prompt_bank, "controls": len(record.controls), "rows": rows,
            "promoted": ", ".join(repr(t) for t in record.next_token_promoted),
            "suppressed": ", ".join(repr(t) for t in record.next_token_suppressed)}


def write_discovery_report(record: DiscoveryRecord, out: Path) -> Path:
    return write_page("discovery.html.j2", discovery_view(record), out)
