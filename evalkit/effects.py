"""Item records -> the effects table: one paired test per suite x metric (and per cluster).

No torch here: a report re-renders and a gate decides from these numbers alone.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from evalkit import stats
from evalkit.record import Effect, ItemRecord

# Which per-item scores are tested, per suite kind, and how: continuous or yes/no.
METRICS: dict[str, list[tuple[str, str]]] = {
    "tension": [("margin", "continuous"), ("entropy", "continuous"), ("a_wins", "binary")],
}
# Metrics also broken down per cluster (a dilemma, an axis, a paraphrase group).
CLUSTER_METRICS = {"tension": ["margin"]}


def _test(items: list[ItemRecord], metric: str, how: str, settings: stats.StatsSettings,
          clustered: bool) -> stats.PairedResult:
    ref = [float(i.reference[metric]) for i in items]
    sub = [float(i.subject[metric]) for i in items]
    clusters = [i.cluster or i.item_id for i in items] if clustered else None
    if how == "binary":
        return stats.compare_binary(ref, sub, clusters, settings)
    if clusters is not None and len(set(clusters)) < len(items):
        return stats.compare_clustered(ref, sub, clusters, settings)
    return stats.compare_continuous(ref, sub, None, settings)


def suite_effects(items: list[ItemRecord], settings: stats.StatsSettings) -> list[Effect]:
    """Every effect of one reference/subject pair, with BH q-values across all of them."""
    by_suite: dict[str, list[ItemRecord]] = defaultdict(list)
    for item in items:
        by_suite[item.suite].append(item)
    rows: list[tuple[str, str, str, stats.PairedResult]] = []
    for suite, suite_items in by_suite.items():
        kind = suite_items[0].kind
        for metric, how in METRICS[kind]:
            rows.append((suite, metric, "suite", _test(suite_items, metric, how, settings, clustered=True)))
        clusters: dict[str, list[ItemRecord]] = defaultdict(list)
        for item in suite_items:
            if item.cluster:
                clusters[item.cluster].append(item)
        if len(clusters) > 1:
            for metric in CLUSTER_METRICS.get(kind, []):
                for name, members in sorted(clusters.items()):
                    rows.append((suite, metric, f"cluster:{name}",
                                 _test(members, metric, "continuous", settings, clustered=False)))
    qvalues = stats.bh_qvalues([r.p_value for *_, r in rows])
    effects = []
    for (suite, metric, scope, r), q in zip(rows, qvalues):
        significant = bool(q < settings.alpha)
        direction = "none" if not significant else ("up" if r.mean_diff > 0 else "down")
        effects.append(Effect(
            suite=suite, metric=metric, scope=scope, n=r.n, reference_mean=r.reference_mean,
            subject_mean=r.subject_mean, mean_diff=r.mean_diff, se=r.se, se_kind=r.se_kind,
            ci_low=r.ci_low, ci_high=r.ci_high, p_value=r.p_value, q_value=q, test=r.test,
            effect_size=r.effect_size, effect_size_kind=r.effect_size_kind, mde=r.mde,
            significant=significant, direction=direction,
        ))
    return effects


def item_shift(item: ItemRecord, metric: str = "margin") -> float:
    return float(np.float64(item.subject[metric]) - np.float64(item.reference[metric]))
