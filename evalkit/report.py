"""RunRecord -> one self-contained HTML file. The template computes nothing; this module
hands it finished numbers and strings. Generated text is untrusted: autoescape is on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from evalkit.effects import item_shift
from evalkit.files import write_text_atomic
from evalkit.record import Effect, RunRecord


def _env() -> Environment:
    return Environment(loader=PackageLoader("evalkit", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.1e}"
    return f"{x:.{digits}f}"


def _p(x: float) -> str:
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _effect_row(e: Effect) -> dict[str, Any]:
    mark = {"up": "▲ up", "down": "▼ down", "none": ""}[e.direction]
    return {
        "suite": e.suite, "metric": e.metric, "scope": e.scope, "n": e.n,
        "reference": _num(e.reference_mean), "subject": _num(e.subject_mean),
        "diff": _num(e.mean_diff), "ci": f"[{_num(e.ci_low)}, {_num(e.ci_high)}]",
        "p": _p(e.p_value), "q": _p(e.q_value), "effect_size": _num(e.effect_size, 2),
        "effect_size_kind": e.effect_size_kind, "mde": _num(e.mde), "se_kind": e.se_kind,
        "test": e.test, "significant": e.significant, "mark": mark,
        "reading": (f"changed ({mark.split()[1]})" if e.significant
                    else f"no change larger than {_num(e.mde)} detected" if e.mde is not None
                    else "no detectable change"),
    }


def _tension_rows(record: RunRecord) -> list[dict[str, Any]]:
    rows = []
    for item in record.items:
        if item.kind != "tension":
            continue
        shift = item_shift(item)
        ref_w, sub_w = item.reference["winner"], item.subject["winner"]
        rows.append({
            "id": item.item_id, "cluster": item.cluster or "", "prompt": item.prompt,
            "options": " / ".join(item.options),
            "ref_margin": _num(item.reference["margin"]), "sub_margin": _num(item.subject["margin"]),
            "shift": _num(shift), "shift_value": shift,
            "ref_choice": item.options[int(ref_w)], "sub_choice": item.options[int(sub_w)],
            "flipped": ref_w != sub_w,
            "ref_entropy": _num(item.reference["entropy"]), "sub_entropy": _num(item.subject["entropy"]),
            "contested": float(item.subject["entropy"]) > float(item.reference["entropy"]) + 0.1,
        })
    rows.sort(key=lambda r: -abs(r["shift_value"]))
    return rows


def _plain_words(rows: list[dict[str, Any]], limit: int = 5) -> list[str]:
    said = []
    for r in rows[:limit]:
        toward = r["options"].split(" / ")[0] if r["shift_value"] > 0 else r["options"].split(" / ")[-1]
        flip = f"; the choice flipped from “{r['ref_choice']}” to “{r['sub_choice']}”" if r["flipped"] else ""
        said.append(f"{r['id']}: the margin moved {r['shift']} nats towards “{toward}”{flip}.")
    return said


def view_model(record: RunRecord) -> dict[str, Any]:
    effects = [_effect_row(e) for e in record.effects]
    tension = _tension_rows(record)
    m = record.manifest
    return {
        "title": f"evalkit — {record.subject.name} vs {record.reference.name}",
        "run_id": record.run_id,
        "subject": record.subject.model_dump(),
        "reference": record.reference.model_dump(),
        "manifest": {
            "evalkit": m.evalkit_version, "git": m.git_commit or "unknown", "created": m.created,
            "packages": ", ".join(f"{k} {v}" for k, v in m.packages.items()),
            "seeds": ", ".join(f"{k}={v}" for k, v in m.seeds.items()),
            "decoding": ", ".join(f"{k}={v}" for k, v in m.decoding.items()),
            "scoring": m.scoring,
            "requests": ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in m.requests.items()),
        },
        "suites": [s.model_dump() for s in m.suites],
        "stats": record.stats.model_dump(),
        "ci_label": f"{(1 - record.stats.alpha) * 100:g}% CI",
        "verdicts": [e for e in effects if e["scope"] == "suite"],
        "breakdown": [e for e in effects if e["scope"] != "suite"],
        "n_significant": sum(e["significant"] for e in effects),
        "n_effects": len(effects),
        "changed": _plain_words(tension),
        "tension": tension,
    }


def render_run(record: RunRecord) -> str:
    return _env().get_template("run.html.j2").render(**view_model(record))


def write_run_report(record: RunRecord, path: Path) -> Path:
    write_text_atomic(path, render_run(record))
    return path


def render_index(entries: list[dict[str, str]]) -> str:
    return _env().get_template("index.html.j2").render(entries=entries)
