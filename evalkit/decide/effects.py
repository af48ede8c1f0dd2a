"""Paired items -> the effects table: one paired test per suite x metric, per cluster, per axis
and per consistency group where the suite's kind says so (`evalkit.kinds`). BH q-values over
all of them.

No torch here: a report re-renders and a gate decides from these numbers alone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np

from evalkit.decide import stats
from evalkit.kinds import KINDS
from evalkit.record import Effect, ItemRecord, PairedRun, RunRecord, StatsRef, Verdict
from evalkit.settings import StatsSettings


@dataclass
class Row:
    suite: str
    metric: str
    scope: str
    result: stats.PairedResult
    leans: tuple[Lean, Lean] | None = None
    """Novel axes: where the reference and the subject lean on the cluster's axis."""


@dataclass(frozen=True)
class Lean:
    """Where one side leans on an axis: its mean margin, that mean's (1 - alpha) CI, and whether it
    is shown to lie within +-neutral_margin (two one-sided tests at alpha: the 1 - 2 alpha CI)."""

    mean: float
    ci: tuple[float, float] | None
    neutral: bool

    @property
    def sign(self) -> int:
        """+1 or -1 when the CI excludes 0, else 0."""
        if self.ci is None or self.ci[0] <= 0 <= self.ci[1]:
            return 0
        return 1 if self.ci[0] > 0 else -1


def lean(margins: np.ndarray, settings: StatsSettings) -> Lean:
    spread = stats.interval_spread(margins, None)
    mean = float(margins.mean())
    if not spread.testable:
        return Lean(mean, None, False)
    low, high = stats.t_interval_from(mean, spread.se, spread.units, 2 * settings.alpha)
    return Lean(mean, stats.t_interval_from(mean, spread.se, spread.units, settings.alpha),
                -settings.neutral_margin < low and high < settings.neutral_margin)


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


def axis_verdict(reference: Lean, subject: Lean, shift: float, significant: bool) -> Verdict:
    """What a significant shift on an axis means, given where the reference leaned.

    - the reference leaned (its CI excludes 0): *amplified* when the shift goes its way;
      *reversed* when the subject now leans significantly the other way; else *attenuated*;
    - the reference is shown not to lean (within +-neutral_margin): *new* when the subject leans
      significantly, else *shifted*;
    - neither shown: *baseline unclear* (a few items that all lean one way can give a CI that
      covers 0 without showing that the reference is neutral).
    """
    if not significant:
        return "unchanged"
    if reference.sign:
        if np.sign(shift) == reference.sign:
            return "amplified"
        return "reversed" if subject.sign == -reference.sign else "attenuated"
    if reference.neutral:
        return "new" if subject.sign else "shifted"
    return "baseline unclear"


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
                leans = None
                if kind.lean_verdicts:
                    leans = (lean(np.array([float(m.reference[metric]) for m in members]), settings),
                             lean(np.array([float(m.subject[metric]) for m in members]), settings))
                rows.append(Row(suite, metric, f"cluster:{name}", result, leans=leans))
    return rows


def suite_effects(items: list[ItemRecord], settings: StatsSettings) -> list[Effect]:
    """Every effect of one reference/subject pair, with BH q-values across the testable ones."""
    by_suite: dict[str, list[ItemRecord]] = defaultdict(list)
    for item in items:
        by_suite[item.suite].append(item)
    rows = [row for suite, members in by_suite.items() for row in _suite_rows(suite, members, settings)]
    family = [(row, row.result.p_value) for row in rows if row.result.p_value is not None]
    qvalues = dict(zip((id(row) for row, _ in family), stats.bh_qvalues([p for _, p in family])))
    effects = []
    for row in rows:
        r = row.result
        q = qvalues.get(id(row))
        significant = q is not None and q < settings.alpha
        reference, subject = row.leans if row.leans else (None, None)
        effects.append(Effect(
            suite=row.suite, metric=row.metric, scope=row.scope, **asdict(r), q_value=q, significant=significant,
            direction="none" if not significant else ("up" if r.mean_diff > 0 else "down"),
            verdict=axis_verdict(reference, subject, r.mean_diff, significant) if reference and subject else None,
            reference_ci_low=reference.ci[0] if reference and reference.ci else None,
            reference_ci_high=reference.ci[1] if reference and reference.ci else None,
            reference_neutral=reference.neutral if reference else None,
        ))
    return effects


def build_records(runs: list[PairedRun], settings: StatsSettings) -> list[RunRecord]:
    """Test every paired run: its effects table, and the seed spread across runs of one scene."""
    st = settings
    records = [RunRecord(
        run_id=run.run_id, manifest=run.manifest, reference=run.reference, subject=run.subject,
        stats=StatsRef(alpha=st.alpha, test=st.test, resamples=st.resamples, seed=st.seed, power=st.power, ci=st.ci,
                       neutral_margin=st.neutral_margin),
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
        # the recipe, without what differs from seed to seed (early stopping ends runs apart)
        settings = {k: v for k, v in (t.get("training") or {}).items() if k not in ("seed", "steps_run", "tokens")}
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
