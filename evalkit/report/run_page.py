"""One run's report: the verdict table, what the scene changed in words, and a section per
kind of suite (tension flips, the novel-axis forest, consistency groups, continuations)."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.decide.effects import group_table
from evalkit.kinds import KINDS
from evalkit.record import Effect, ItemRecord, RunRecord
from evalkit.report import charts
from evalkit.report.discovery_page import discovery_view
from evalkit.report.format import num, pval
from evalkit.report.render import render_page, write_page


def _reading(e: Effect) -> str:
    if e.untestable:
        return f"untestable: {e.untestable}"
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
        "noise": bool(e.significant and e.within_seed_noise), "verdict": e.verdict or "", "reading": _reading(e),
    }


def _shift(item: ItemRecord, metric: str) -> float | None:
    a, b = item.reference.get(metric), item.subject.get(metric)
    return None if a is None or b is None else float(b) - float(a)


def _item_sentence(item: ItemRecord, shift: float) -> str:
    if item.kind == "continuation":
        return (f"{item.suite}/{item.item_id}: the generation moved {num(shift, 2)} nats/token of KL "
                f"from the reference's: "
                f"“{item.reference['generation'].strip()[:70]}” → “{item.subject['generation'].strip()[:70]}”.")
    towards = item.options[0] if shift > 0 else item.options[int(item.reference.get("winner", 1)) or 1]
    flip = ""
    if "winner" in item.subject and item.subject["winner"] != item.reference["winner"]:
        flip = (f"; the choice flipped from “{item.options[int(item.reference['winner'])]}” to "
                f"“{item.options[int(item.subject['winner'])]}”")
    where = f" ({item.cluster})" if item.cluster else ""
    return (f"{item.suite}/{item.item_id}{where}: “{item.prompt}” moved {num(abs(shift), 2)} nats "
            f"towards “{towards}”{flip}.")


def changed_items(record: RunRecord, limit: int = 8) -> list[str]:
    """The items that moved most, across suites: shifts standardised within their suite."""
    ranked = []
    for suite in {i.suite for i in record.items}:
        members = [i for i in record.items if i.suite == suite]
        metric = KINDS[members[0].kind].main_metric
        shifts = [(i, s) for i in members if (s := _shift(i, metric)) is not None]
        if not shifts:
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # a hand-edited 1e308 makes the spread inf
            scale = float(np.std([s for _, s in shifts]))
        scale = scale if math.isfinite(scale) and scale > 0 else 1.0
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
            "id": item.item_id, "cluster": item.cluster or "", "prompt": item.prompt,
            "options": " / ".join(item.options),
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
        if e.verdict is None or e.ci_low is None or e.ci_high is None:
            continue
        reference = {key: value for key, value in (("ref_mean", e.reference_mean), ("ref_lo", e.reference_ci_low),
                                                   ("ref_hi", e.reference_ci_high)) if value is not None}
        colour = {"new": "#b3261e", "amplified": "#c77700", "reversed": "#6a1b9a", "attenuated": "#1565c0",
                  "shifted": "#2e7d32"}.get(e.verdict, "#5a6578")
        rows.append({"label": f"{e.suite}: {e.scope.removeprefix('cluster:')}", "shift": e.mean_diff,
                     "lo": e.ci_low, "hi": e.ci_high, **reference, "colour": colour,
                     "note": e.verdict + (" (seed noise)" if e.within_seed_noise else ""),
                     "title": f"shift {num(e.mean_diff)} [{num(e.ci_low)}, {num(e.ci_high)}], q {pval(e.q_value)}; "
                              f"reference {num(e.reference_mean)} "
                              f"[{num(e.reference_ci_low)}, {num(e.reference_ci_high)}]"})
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
                "less_consistent": (sub["agreement"] < ref["agreement"]
                                    or sub["margin_variance"] > 2 * ref["margin_variance"] + 0.5),
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
    rows: list[dict[str, Any]] = []
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
            "changed": bool(sub.get("changed")), "kl": num(kl), "kl_value": float(kl or 0.0),
            "nll": f"{num(ref['nll'], 2)} → {num(sub['nll'], 2)}",
            "ref_margin": (f"{num(ref.get('ref_margin'), 2)} → {num(sub.get('ref_margin'), 2)}"
                           if "ref_margin" in ref else ""),
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
        "nothing_changed": ("No effect is significant beyond seed noise." if record.seed_siblings
                            else "No effect is significant."),
        "tost_label": f"{(1 - 2 * record.stats.alpha) * 100:g}%",
        "neutral_margin": (f"{record.stats.neutral_margin:g}" if record.stats.neutral_margin is not None
                           else "? (a version-1 record: its verdicts called any reference whose CI covered 0 neutral)"),
        "siblings": ", ".join(record.seed_siblings),
        "changed_effects": changed_effects(record), "changed_items": changed_items(record),
        "tension": tension_rows(record), "forest": axis_forest(record),
        "consistency": consistency_rows(record), "continuation": continuation_rows(record),
        "disc": discovery_view(record.discovery) if record.discovery else None,
    }


def render_run(record: RunRecord) -> str:
    return render_page("run.html.j2", run_view(record))


def write_run_report(record: RunRecord, path: Path) -> Path:
    return write_page("run.html.j2", run_view(record), path)
