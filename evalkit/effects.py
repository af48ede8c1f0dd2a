"""Item records -> the effects table: one paired test per suite x metric, per cluster, per axis
and per consistency group where that means something. BH q-values over all of them.

No torch here: a report re-renders and a gate decides from these numbers alone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from evalkit import stats
from evalkit.record import Effect, ItemRecord

# Per suite kind: the per-item scores tested at suite level, and how (continuous or yes/no).
ITEM_METRICS: dict[str, list[tuple[str, str]]] = {
    "tension": [("margin", "continuous"), ("entropy", "continuous"), ("a_wins", "binary")],
    "novel_axis": [("margin", "continuous")],
    "consistency": [("margin", "continuous"), ("agrees", "binary")],
    "continuation": [("kl", "continuous"), ("nll", "continuous"), ("changed", "binary"),
                     ("ref_margin", "continuous")],
}
# Per-cluster breakdowns: tension dilemmas and novel axes (margin), with a verdict for axes.
CLUSTER_METRICS = {"tension": ["margin"], "novel_axis": ["margin"]}
# Consistency is judged per paraphrase group: these are computed per group, then paired.
GROUP_METRICS = ("agreement", "margin_variance")


@dataclass
class Row:
    suite: str
    metric: str
    scope: str
    result: stats.PairedResult
    verdict: str | None = None
    reference_ci: tuple[float, float] | None = None


def _values(items: list[ItemRecord], metric: str) -> tuple[list[ItemRecord], list[float], list[float]]:
    kept = [i for i in items if i.reference.get(metric) is not None and i.subject.get(metric) is not None]
    return kept, [float(i.reference[metric]) for i in kept], [float(i.subject[metric]) for i in kept]


def _test(items: list[ItemRecord], metric: str, how: str, settings: stats.StatsSettings,
          clustered: bool) -> stats.PairedResult | None:
    kept, ref, sub = _values(items, metric)
    if not kept:
        return None
    clusters = [i.cluster or i.item_id for i in kept] if clustered else None
    compare = stats.compare_binary if how == "binary" else stats.compare_continuous
    return compare(ref, sub, clusters, settings)


def axis_verdict(shift: stats.PairedResult, reference_ci: tuple[float, float], significant: bool) -> str:
    """new / amplified / reversed / attenuated / unchanged, from the reference's lean and the shift."""
    lo, hi = reference_ci
    if not significant:
        return "unchanged"
    if lo <= 0 <= hi:
        return "new"
    leaning = 1.0 if lo > 0 else -1.0
    if np.sign(shift.mean_diff) == leaning:
        return "amplified"
    return "reversed" if np.sign(shift.subject_mean) == -leaning else "attenuated"


def group_scores(items: list[ItemRecord], side: str) -> dict[str, dict[str, float]]:
    """Per consistency group, under one side ('reference' or 'subject'): agreement, margin variance."""
    groups: dict[str, list[ItemRecord]] = defaultdict(list)
    for i in items:
        groups[i.cluster or i.item_id].append(i)
    out = {}
    for name, members in groups.items():
        scores = [getattr(m, side) for m in members]
        margins = np.array([float(s["margin"]) for s in scores])
        out[name] = {"agreement": float(np.mean([s["agrees"] for s in scores])),
                     "margin_variance": float(margins.var(ddof=1)) if len(margins) > 1 else 0.0}
    return out


def group_table(items: list[ItemRecord]) -> dict[str, dict[str, dict[str, float]]]:
    """Per consistency group: agreement and margin variance under reference and subject."""
    ref, sub = group_scores(items, "reference"), group_scores(items, "subject")
    return {g: {"reference": ref[g], "subject": sub[g]} for g in ref}


def _suite_rows(suite: str, items: list[ItemRecord], settings: stats.StatsSettings) -> list[Row]:
    kind = items[0].kind
    rows = []
    for metric, how in ITEM_METRICS[kind]:
        result = _test(items, metric, how, settings, clustered=True)
        if result is not None:
            rows.append(Row(suite, metric, "suite", result))
    if kind == "consistency":
        table = group_table(items)
        for metric in GROUP_METRICS:
            ref = [table[g]["reference"][metric] for g in sorted(table)]
            sub = [table[g]["subject"][metric] for g in sorted(table)]
            rows.append(Row(suite, metric, "groups", stats.compare_continuous(ref, sub, None, settings)))
    clusters: dict[str, list[ItemRecord]] = defaultdict(list)
    for item in items:
        if item.cluster:
            clusters[item.cluster].append(item)
    if len(clusters) > 1:
        for metric in CLUSTER_METRICS.get(kind, []):
            for name, members in sorted(clusters.items()):
                result = _test(members, metric, "continuous", settings, clustered=False)
                ref_ci = None
                if kind == "novel_axis":
                    ref = np.array([float(m.reference[metric]) for m in members])
                    ref_ci = stats.mean_ci(ref, None, settings)[:2]
                rows.append(Row(suite, metric, f"cluster:{name}", result, reference_ci=ref_ci))
    return rows


def suite_effects(items: list[ItemRecord], settings: stats.StatsSettings) -> list[Effect]:
    """Every effect of one reference/subject pair, with BH q-values across all of them."""
    by_suite: dict[str, list[ItemRecord]] = defaultdict(list)
    for item in items:
        by_suite[item.suite].append(item)
    rows = [row for suite, members in by_suite.items() for row in _suite_rows(suite, members, settings)]
    qvalues = stats.bh_qvalues([row.result.p_value for row in rows])
    effects = []
    for row, q in zip(rows, qvalues):
        r = row.result
        significant = bool(q < settings.alpha)
        verdict = axis_verdict(r, row.reference_ci, significant) if row.reference_ci else None
        effects.append(Effect(
            suite=row.suite, metric=row.metric, scope=row.scope, n=r.n, reference_mean=r.reference_mean,
            subject_mean=r.subject_mean, mean_diff=r.mean_diff, se=r.se, se_kind=r.se_kind,
            ci_low=r.ci_low, ci_high=r.ci_high, ci_method=r.ci_method, p_value=r.p_value, q_value=q, test=r.test,
            effect_size=r.effect_size, effect_size_kind=r.effect_size_kind, mde=r.mde, d_z=r.d_z,
            significant=significant, direction="none" if not significant else ("up" if r.mean_diff > 0 else "down"),
            verdict=verdict,
            reference_ci_low=row.reference_ci[0] if row.reference_ci else None,
            reference_ci_high=row.reference_ci[1] if row.reference_ci else None,
        ))
    return effects


def mark_seed_spread(records: list) -> None:
    """Give every effect the spread of its mean difference across seeds of the same scene(s).

    Subjects are siblings when their manifests name the same scene content and differ only
    in the training seed. An effect no larger than that spread is marked: retraining with
    another seed moves it as much as the scene does.
    """
    groups: dict[tuple, list] = defaultdict(list)
    for record in records:
        t = record.subject.training or {}
        scenes = tuple(record.subject.scene_hashes)
        settings = {k: v for k, v in (t.get("training") or {}).items() if k != "seed"}
        if scenes:
            groups[(scenes, repr(sorted(settings.items())), record.subject.kind)].append(record)
    for members in groups.values():
        seeds = {(m.subject.training or {}).get("training", {}).get("seed") for m in members}
        if len(members) < 2 or len(seeds) < 2:
            continue
        diffs: dict[tuple, list[float]] = defaultdict(list)
        for m in members:
            for e in m.effects:
                diffs[(e.suite, e.metric, e.scope)].append(e.mean_diff)
        for m in members:
            m.seed_siblings = [o.run_id for o in members if o is not m]
            for e in m.effects:
                values = diffs[(e.suite, e.metric, e.scope)]
                e.seed_spread = float(max(values) - min(values))
                e.within_seed_noise = abs(e.mean_diff) <= e.seed_spread
