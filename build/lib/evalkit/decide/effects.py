"""Paired items -> the effects table: one paired test per suite x metric, per cluster, per axis
and per consistency group where the suite's kind says so (`evalkit.kinds`). BH q-values over
all of them.

No torch here: a report re-renders and a gate decides from these numbers alone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from evalkit.decide import stats
from evalkit.kinds import KINDS
from evalkit.record import Effect, ItemRecord, PairedRun, RunRecord, StatsRef
from evalkit.settings import StatsSettings


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


def _test(items: list[ItemRecord], metric: str, binary: bool, settings: StatsSettings,
          clustered: bool) -> stats.PairedResult | None:
    kept, ref, sub = _values(items, metric)
    if not kept:
        return None
    clusters = [i.cluster or i.item_id for i in kept] if clustered else None
    compare = stats.compare_binary if binary else stats.compare_continuous
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


def group_table(items: list[ItemRecord]) -> dict[str, dict[str, dict[str, float]]]:
    """Per group of a kind that scores groups: its group scores under reference and subject."""
    scores = KINDS[items[0].kind].group_scores
    assert scores is not None, f"{items[0].kind} suites have no group scores"
    ref, sub = scores(items, "reference"), scores(items, "subject")
    return {g: {"reference": ref[g], "subject": sub[g]} for g in ref}


def _suite_rows(suite: str, items: list[ItemRecord], settings: StatsSettings) -> list[Row]:
    kind = KINDS[items[0].kind]
    rows = []
    for tested in kind.tested:
        result = _test(items, tested.name, tested.binary, settings, clustered=True)
        if result is not None:
            rows.append(Row(suite, tested.name, "suite", result))
    if kind.group_scores is not None:
        table = group_table(items)
        for group_metric in kind.group_tested:
            ref = [table[g]["reference"][group_metric.name] for g in sorted(table)]
            sub = [table[g]["subject"][group_metric.name] for g in sorted(table)]
            rows.append(Row(suite, group_metric.name, "groups", stats.compare_continuous(ref, sub, None, settings)))
    clusters: dict[str, list[ItemRecord]] = defaultdict(list)
    for item in items:
        if item.cluster:
            clusters[item.cluster].append(item)
    if len(clusters) > 1:
        for metric in kind.cluster_tested:
            for name, members in sorted(clusters.items()):
                result = _test(members, metric, False, settings, clustered=False)
                if result is None:
                    continue
                ref_ci = None
                if kind.lean_verdicts:
                    lean = np.array([float(m.reference[metric]) for m in members])
                    ref_ci = stats.mean_ci(lean, None, settings)[:2]
                rows.append(Row(suite, metric, f"cluster:{name}", result, reference_ci=ref_ci))
    return rows


def suite_effects(items: list[ItemRecord], settings: StatsSettings) -> list[Effect]:
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


def build_records(runs: list[PairedRun], settings: StatsSettings) -> list[RunRecord]:
    """Test every paired run: its effects table, and the seed spread across runs of one scene."""
    st = settings
    records = [RunRecord(
        run_id=run.run_id, manifest=run.manifest, reference=run.reference, subject=run.subject,
        stats=StatsRef(alpha=st.alpha, test=st.test, resamples=st.resamples, seed=st.seed, power=st.power, ci=st.ci),
        items=run.items, effects=suite_effects(run.items, st),
    ) for run in runs]
    mark_seed_spread(records)
    return records


def mark_seed_spread(records: list[RunRecord]) -> None:
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
