"""RunRecords -> self-contained HTML: one report per run, one compare report across runs.

The templates compute nothing; this module hands them finished numbers, strings and chart
geometry (charts.py). Generated text is untrusted input: autoescape is on, undefined names
fail, and nothing refers to a URL.
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined

from evalkit import charts
from evalkit.effects import group_table
from evalkit.files import write_text_atomic
from evalkit.record import Effect, ItemRecord, RunRecord

MAIN_METRIC = {"tension": "margin", "novel_axis": "margin", "consistency": "margin", "continuation": "kl"}
KEY_METRICS = [("tension", "margin"), ("novel_axis", "margin"), ("consistency", "agreement"), ("continuation", "kl")]


@lru_cache(maxsize=1)
def _env() -> Environment:
    """One environment per process, so each template is compiled once, not once per report."""
    return Environment(loader=PackageLoader("evalkit", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.1e}"
    return f"{x:.{digits}f}"


def pval(x: float) -> str:
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _reading(e: Effect) -> str:
    if e.significant and e.within_seed_noise:
        return f"significant, but within seed noise (spread {num(e.seed_spread)})"
    if e.significant:
        return f"changed ({'up' if e.mean_diff > 0 else 'down'})"
    return f"no change larger than {num(e.mde)} detected" if e.mde is not None else "no detectable change"


def effect_row(e: Effect) -> dict[str, Any]:
    return {
        "suite": e.suite, "metric": e.metric, "scope": e.scope, "n": e.n,
        "reference": num(e.reference_mean), "subject": num(e.subject_mean), "diff": num(e.mean_diff),
        "ci": f"[{num(e.ci_low)}, {num(e.ci_high)}]", "ci_method": e.ci_method, "p": pval(e.p_value),
        "q": pval(e.q_value), "effect_size": num(e.effect_size, 2), "effect_size_kind": e.effect_size_kind,
        "mde": num(e.mde), "se_kind": e.se_kind, "test": e.test, "significant": e.significant,
        "direction": "up" if e.significant and e.mean_diff > 0 else "down" if e.significant else "",
        "arrow": "▲" if e.significant and e.mean_diff > 0 else "▼" if e.significant else "",
        "noise": bool(e.within_seed_noise), "verdict": e.verdict or "", "reading": _reading(e),
    }


def _shift(item: ItemRecord, metric: str) -> float | None:
    a, b = item.reference.get(metric), item.subject.get(metric)
    return None if a is None or b is None else float(b) - float(a)


def _item_sentence(item: ItemRecord, shift: float) -> str:
    if item.kind == "continuation":
        return (f"{item.item_id}: the generation moved {num(shift, 2)} nats/token of KL from the reference's: "
                f"“{item.reference['generation'].strip()[:70]}” → “{item.subject['generation'].strip()[:70]}”.")
    towards = item.options[0] if shift > 0 else item.options[int(item.reference.get("winner", 1)) or 1]
    flip = ""
    if "winner" in item.subject and item.subject["winner"] != item.reference["winner"]:
        flip = (f"; the choice flipped from “{item.options[int(item.reference['winner'])]}” to "
                f"“{item.options[int(item.subject['winner'])]}”")
    where = f" ({item.cluster})" if item.cluster else ""
    return f"{item.item_id}{where}: “{item.prompt}” moved {num(abs(shift), 2)} nats towards “{towards}”{flip}."


def changed_items(record: RunRecord, limit: int = 8) -> list[str]:
    """The items that moved most, across suites: shifts standardised within their suite."""
    ranked = []
    for suite in {i.suite for i in record.items}:
        members = [i for i in record.items if i.suite == suite]
        metric = MAIN_METRIC[members[0].kind]
        shifts = [(i, _shift(i, metric)) for i in members]
        shifts = [(i, s) for i, s in shifts if s is not None]
        if not shifts:
            continue
        scale = float(np.std([s for _, s in shifts])) or 1.0
        ranked += [(abs(s) / scale, i, s) for i, s in shifts]
    ranked.sort(key=lambda t: -t[0])
    return [_item_sentence(i, s) for _, i, s in ranked[:limit]]


def changed_effects(record: RunRecord, limit: int = 8) -> list[str]:
    """Significant effects beyond seed noise, largest standardised first, in plain words."""
    chosen = [e for e in record.effects if e.significant and not e.within_seed_noise]
    chosen.sort(key=lambda e: -abs(e.d_z or 0.0))
    out = []
    for e in chosen[:limit]:
        where = "across the suite" if e.scope == "suite" else "across groups" if e.scope == "groups" \
            else f"on {e.scope.removeprefix('cluster:')}"
        verdict = f" — {e.verdict}" if e.verdict else ""
        out.append(f"{e.suite} {e.metric} {where} went {'up' if e.mean_diff > 0 else 'down'} by "
                   f"{num(abs(e.mean_diff))} (CI [{num(e.ci_low)}, {num(e.ci_high)}], q = {pval(e.q_value)}){verdict}.")
    return out


def tension_rows(record: RunRecord) -> list[dict[str, Any]]:
    rows = []
    for item in (i for i in record.items if i.kind == "tension"):
        shift = _shift(item, "margin") or 0.0
        ref_w, sub_w = int(item.reference["winner"]), int(item.subject["winner"])
        ref_h, sub_h = float(item.reference["entropy"]), float(item.subject["entropy"])
        rows.append({
            "id": item.item_id, "cluster": item.cluster or "", "prompt": item.prompt, "options": " / ".join(item.options),
            "ref_margin": num(item.reference["margin"]), "sub_margin": num(item.subject["margin"]),
            "shift": num(shift), "shift_sign": "up" if shift > 0 else "down",
            "ref_choice": item.options[ref_w], "sub_choice": item.options[sub_w], "flipped": ref_w != sub_w,
            "ref_entropy": num(ref_h), "sub_entropy": num(sub_h), "contested": sub_h > ref_h + 0.1 and sub_h > 0.8,
            "order": -abs(shift),
        })
    rows.sort(key=lambda r: r["order"])
    return rows


def axis_forest(record: RunRecord) -> dict | None:
    rows = []
    for e in record.effects:
        if e.verdict is None:
            continue
        colour = {"new": "#b3261e", "amplified": "#c77700", "reversed": "#6a1b9a", "attenuated": "#1565c0"}.get(
            e.verdict, "#5a6578")
        rows.append({"label": f"{e.suite}: {e.scope.removeprefix('cluster:')}", "shift": e.mean_diff,
                     "lo": e.ci_low, "hi": e.ci_high, "ref_mean": e.reference_mean,
                     "ref_lo": e.reference_ci_low, "ref_hi": e.reference_ci_high, "colour": colour,
                     "note": e.verdict + (" (seed noise)" if e.within_seed_noise else ""),
                     "title": f"shift {num(e.mean_diff)} [{num(e.ci_low)}, {num(e.ci_high)}], q {pval(e.q_value)}; "
                              f"reference {num(e.reference_mean)} [{num(e.reference_ci_low)}, {num(e.reference_ci_high)}]"})
    return charts.forest(rows) if rows else None


def consistency_rows(record: RunRecord) -> list[dict[str, Any]]:
    rows = []
    for suite in sorted({i.suite for i in record.items if i.kind == "consistency"}):
        members = [i for i in record.items if i.suite == suite]
        for group, sides in sorted(group_table(members).items()):
            ref, sub = sides["reference"], sides["subject"]
            paraphrases = [i for i in members if i.cluster == group]
            rows.append({
                "suite": suite, "group": group, "n": len(paraphrases),
                "ref_agreement": num(ref["agreement"], 2), "sub_agreement": num(sub["agreement"], 2),
                "ref_width": round(100 * ref["agreement"]), "sub_width": round(100 * sub["agreement"]),
                "ref_variance": num(ref["margin_variance"], 2), "sub_variance": num(sub["margin_variance"], 2),
                "less_consistent": sub["agreement"] < ref["agreement"] or sub["margin_variance"] > 2 * ref["margin_variance"] + 0.5,
                "choices": "; ".join(f"{p.item_id}: {p.options[int(p.reference['winner'])]} → "
                                     f"{p.options[int(p.subject['winner'])]}" for p in paraphrases),
            })
    return rows


def word_diff(a: str, b: str) -> tuple[list[dict], list[dict]]:
    """Word-level diff of two generations: segments marked same / removed / added."""
    wa, wb = a.split(), b.split()
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes():
        if i2 > i1:
            left.append({"text": " ".join(wa[i1:i2]), "kind": "same" if op == "equal" else "removed"})
        if j2 > j1:
            right.append({"text": " ".join(wb[j1:j2]), "kind": "same" if op == "equal" else "added"})
    return left, right


def continuation_rows(record: RunRecord) -> list[dict[str, Any]]:
    rows = []
    for item in (i for i in record.items if i.kind == "continuation"):
        ref, sub = item.reference, item.subject
        left, right = word_diff(ref["generation"], sub["generation"])
        tokens = []
        for text, a, b in zip(ref.get("tokens") or [], ref["token_logprobs"], sub["token_logprobs"]):
            delta = float(b) - float(a)
            tokens.append({"text": text, "colour": charts.diverging_colour(delta, 3.0),
                           "title": f"log p: reference {a:.2f}, subject {b:.2f} (change {delta:+.2f})"})
        kl = sub.get("kl")
        rows.append({
            "id": item.item_id, "prompt": item.prompt, "left": left, "right": right, "tokens": tokens,
            "changed": bool(sub.get("changed")), "kl": num(kl), "kl_value": kl or 0.0,
            "nll": f"{num(ref['nll'], 2)} → {num(sub['nll'], 2)}",
            "ref_margin": f"{num(ref.get('ref_margin'), 2)} → {num(sub.get('ref_margin'), 2)}" if "ref_margin" in ref else "",
        })
    rows.sort(key=lambda r: -r["kl_value"])
    return rows


def run_view(record: RunRecord) -> dict[str, Any]:
    m = record.manifest
    effects = [effect_row(e) for e in record.effects]
    return {
        "title": f"evalkit — {record.subject.name} vs {record.reference.name}",
        "run_id": record.run_id, "subject": record.subject.model_dump(), "reference": record.reference.model_dump(),
        "manifest": {
            "evalkit": m.evalkit_version, "git": m.git_commit or "unknown", "created": m.created,
            "packages": ", ".join(f"{k} {v}" for k, v in m.packages.items()),
            "seeds": ", ".join(f"{k}={v}" for k, v in m.seeds.items()),
            "decoding": ", ".join(f"{k}={v}" for k, v in m.decoding.items()),
            "scoring": m.scoring, "requests": ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in m.requests.items()),
            "training": ", ".join(f"{k}={v}" for k, v in (record.subject.training or {}).items() if v is not None),
        },
        "suites": [s.model_dump() for s in m.suites], "stats": record.stats.model_dump(),
        "ci_label": f"{(1 - record.stats.alpha) * 100:g}% CI",
        "verdicts": [e for e in effects if e["scope"] in ("suite", "groups")],
        "breakdown": [e for e in effects if e["scope"].startswith("cluster:")],
        "n_significant": sum(e.significant for e in record.effects), "n_effects": len(record.effects),
        "siblings": ", ".join(record.seed_siblings),
        "changed_effects": changed_effects(record), "changed_items": changed_items(record),
        "tension": tension_rows(record), "forest": axis_forest(record),
        "consistency": consistency_rows(record), "continuation": continuation_rows(record),
    }


def render_run(record: RunRecord) -> str:
    return _env().get_template("run.html.j2").render(**run_view(record))


def write_run_report(record: RunRecord, path: Path) -> Path:
    write_text_atomic(path, render_run(record))
    return path


def _row_label(record: RunRecord) -> tuple[str, str]:
    kind = {"adapter": "LoRA", "checkpoint": "scratch", "base": "base"}[record.subject.kind]
    if len(record.subject.scene_ids) > 1:
        if record.subject.kind == "adapter":
            kind = f"stack {len(record.subject.scene_ids)}"
        return kind, " + ".join(record.subject.scene_ids)
    return kind, record.subject.scene_title or record.subject.name


def stack_trajectory(records: list[RunRecord]) -> dict | None:
    """Key metrics against stack depth k, when the runs include adapters for scenes 1..k."""
    chain = sorted((r for r in records if r.subject.kind == "adapter" and len(r.subject.scene_ids) >= 1),
                   key=lambda r: len(r.subject.scene_ids))
    longest = max((r.subject.scene_ids for r in chain), key=len, default=[])
    stacks = {len(r.subject.scene_ids): r for r in chain
              if r.subject.scene_ids == longest[: len(r.subject.scene_ids)] and len(longest) > 1}
    if len(stacks) < 2:
        return None
    colours = ["#1565c0", "#c77700", "#2e7d32", "#6a1b9a"]
    series = []
    for (suite_kind, metric), colour in zip(KEY_METRICS, colours):
        points = []
        for k, r in sorted(stacks.items()):
            e = next((e for e in r.effects if e.metric == metric and e.scope in ("suite", "groups")
                      and any(s.name == e.suite and s.kind == suite_kind for s in r.manifest.suites)), None)
            if e is not None:
                points.append({"k": k, "mean": e.mean_diff, "lo": e.ci_low, "hi": e.ci_high,
                               "title": f"k={k}: {num(e.mean_diff)} [{num(e.ci_low)}, {num(e.ci_high)}]"})
        if points:
            series.append({"name": f"{suite_kind} {metric}", "colour": colour, "points": points})
    return charts.trajectory(series, sorted(stacks)) if series else None


# The suite-level columns of the compare heatmap (all metrics remain in each run report).
HEATMAP_METRICS = [("tension", "margin"), ("tension", "entropy"), ("novel_axis", "margin"),
                   ("consistency", "agreement"), ("consistency", "margin_variance"), ("continuation", "kl"),
                   ("continuation", "nll"), ("continuation", "changed")]


def _cell(e: Effect | None, in_nats: bool = False) -> dict[str, str]:
    """A heatmap cell: d_z (or, for yes/no scores, the rate change; for clusters, nats)."""
    if e is None:
        return {"text": "", "colour": charts.diverging_colour(None, 1.0), "title": ""}
    binary = e.effect_size_kind.startswith("rate difference")
    value, limit = (e.mean_diff, 1.0) if binary else (e.mean_diff, 3.0) if in_nats else (e.d_z, 2.0)
    star = "*" if e.significant and not e.within_seed_noise else ""
    text = (f"{100 * value:+.0f}%" if binary else f"{value:+.2f}" if in_nats else num(value, 2)) + star
    return {"text": text, "colour": charts.diverging_colour(value, limit),
            "title": f"{e.suite} {e.metric} ({e.scope}): difference {num(e.mean_diff)} [{num(e.ci_low)}, "
                     f"{num(e.ci_high)}], q {pval(e.q_value)}, d_z {num(e.d_z, 2)}"
                     + (" - within seed noise" if e.within_seed_noise else "")}


def compare_view(records: list[RunRecord], links: list[str]) -> dict[str, Any]:
    kinds = {s.name: s.kind for r in records for s in r.manifest.suites}
    suite_cols = [(suite, metric) for kind, metric in HEATMAP_METRICS for suite, k in kinds.items() if k == kind]
    cluster_cols = sorted({(e.suite, e.scope) for r in records for e in r.effects if e.scope.startswith("cluster:")},
                          key=lambda c: (kinds.get(c[0], ""), c))
    order = {"LoRA": 0, "scratch": 2}
    rows = []
    for r, link in sorted(zip(records, links), key=lambda t: (order.get(_row_label(t[0])[0], 1), t[0].run_id)):
        kind, title = _row_label(r)
        suite_level = {(e.suite, e.metric): e for e in r.effects if e.scope in ("suite", "groups")}
        clusters = {(e.suite, e.scope): e for e in r.effects if e.scope.startswith("cluster:")}
        rows.append({"kind": kind, "title": title, "name": r.run_id, "href": link, "reference": r.reference.name,
                     "cells": [_cell(suite_level.get(c)) for c in suite_cols],
                     "cluster_cells": [_cell(clusters.get(c), in_nats=True) for c in cluster_cols]})
    return {"columns": [{"suite": s, "metric": m} for s, m in suite_cols],
            "cluster_columns": [{"suite": s, "cluster": c.removeprefix("cluster:")} for s, c in cluster_cols],
            "rows": rows, "trajectory": stack_trajectory(records), "alpha": records[0].stats.alpha if records else 0.05}


def write_compare_report(records: list[RunRecord], reports: list[Path], out: Path) -> Path:
    links = [os.path.relpath(p, out.parent) for p in reports]
    write_text_atomic(out, _env().get_template("compare.html.j2").render(**compare_view(records, links)))
    return out


def _increment_row(label: str, record: RunRecord, link: str) -> dict[str, Any]:
    kinds = {x.name: x.kind for x in record.manifest.suites}
    cells = []
    for kind, metric in KEY_METRICS:
        e = next((e for e in record.effects if e.metric == metric and e.scope in ("suite", "groups")
                  and kinds.get(e.suite) == kind), None)
        cells.append({"text": "" if e is None else f"{e.mean_diff:+.3f} [{e.ci_low:+.3f}, {e.ci_high:+.3f}]"
                      + (" *" if e.significant else ""),
                      "colour": charts.diverging_colour(e.d_z if e else None, 2.0)})
    clusters = sorted((e for e in record.effects if e.scope.startswith("cluster:") and e.significant),
                      key=lambda e: -abs(e.mean_diff))
    return {"label": label, "href": link, "cells": cells, "reference": record.reference.name,
            "clusters": ", ".join(f"{e.scope.removeprefix('cluster:')} {e.mean_diff:+.2f} "
                                  f"[{e.ci_low:+.2f}, {e.ci_high:+.2f}]" for e in clusters[:4])}


def write_experiment_report(name: str, sections: dict[str, list[tuple[str, RunRecord]]], out: Path) -> Path:
    """The experiment's index: effects per scene (LoRA beside scratch), increments, removals."""
    overview = [(r, f"{section}/{run_id}/report.html") for section in ("scenes", "stacks", "named", "scratch")
                for run_id, r in sections.get(section, [])]
    view = compare_view([r for r, _ in overview], [link for _, link in overview])
    stacks = [r for _, r in sections.get("scenes", [])[:1]] + [r for _, r in sections.get("stacks", [])]
    view["trajectory"] = stack_trajectory(stacks)
    increments = [_increment_row(f"+ {r.subject.scene_ids[-1]} (stack {len(r.subject.scene_ids)} over "
                                 f"{len(r.subject.scene_ids) - 1})", r, f"increments/{run_id}/report.html")
                  for run_id, r in sections.get("increments", [])]
    removals = [_increment_row(f"without {run_id.removeprefix('without-')}", r, f"removals/{run_id}/report.html")
                for run_id, r in sections.get("removals", [])]
    html = _env().get_template("experiment.html.j2").render(
        name=name, **view, increments=increments, removals=removals, key_metrics=[f"{k} {m}" for k, m in KEY_METRICS])
    write_text_atomic(out, html)
    return out
