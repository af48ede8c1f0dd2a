"""Paired inference on per-item scores. numpy and scipy only, every random draw seeded.

The question is always paired: item i scored under a reference and a subject; we work on
d_i = subject_i - reference_i (../shared/STATS.md is the specification).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from scipy import stats as sps

Test = Literal["wilcoxon", "t", "permutation"]
WILCOXON_MIN_N = 6


@dataclass(frozen=True)
class StatsSettings:
    alpha: float = 0.05
    test: Test = "wilcoxon"
    resamples: int = 2000
    """Bootstrap resamples for CIs (and Monte Carlo sign flips when n is large)."""
    seed: int = 0
    power: float = 0.8
    """1 - beta for the minimum detectable effect."""


def paired_differences(reference: Sequence[float], subject: Sequence[float]) -> np.ndarray:
    ref = np.asarray(reference, dtype=float)
    sub = np.asarray(subject, dtype=float)
    if ref.shape != sub.shape or ref.ndim != 1:
        raise ValueError(f"paired scores must be two 1-D arrays of one length, got {ref.shape} and {sub.shape}")
    if not (np.isfinite(ref).all() and np.isfinite(sub).all()):
        bad = int(np.flatnonzero(~(np.isfinite(ref) & np.isfinite(sub)))[0])
        raise ValueError(f"score at position {bad} is NaN or infinite; scores are never silently dropped")
    return sub - ref


def _cluster_index(clusters: Sequence[str] | None, n: int) -> np.ndarray | None:
    if clusters is None:
        return None
    if len(clusters) != n:
        raise ValueError("one cluster label per item is required")
    _, index = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    return index


def standard_error(d: np.ndarray, clusters: Sequence[str] | None = None) -> tuple[float | None, str]:
    """Naive SE sd(d)/sqrt(n), or the cluster-robust SE when items share clusters.

    Clustered: SE^2 = (1/n^2) sum_c (sum_{i in c} (d_i - mean))^2 (Miller 2024, eq. for CRSE).
    """
    n = len(d)
    index = _cluster_index(clusters, n)
    if index is not None and index.max() + 1 < n:
        resid = d - d.mean()
        sums = np.bincount(index, weights=resid)
        if len(sums) < 2:
            return None, "clustered"
        return float(np.sqrt((sums**2).sum()) / n), "clustered"
    if n < 2:
        return None, "naive"
    return float(d.std(ddof=1) / np.sqrt(n)), "naive"


def bootstrap_ci(d: np.ndarray, clusters: Sequence[str] | None, resamples: int, seed: int,
                 alpha: float) -> tuple[float, float]:
    """Percentile CI of the mean difference; resamples whole clusters when items are clustered."""
    rng = np.random.default_rng(seed)
    n = len(d)
    index = _cluster_index(clusters, n)
    if index is None:
        means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    else:
        sums = np.bincount(index, weights=d)
        sizes = np.bincount(index).astype(float)
        picks = rng.integers(0, len(sums), size=(resamples, len(sums)))
        means = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def wilcoxon(d: np.ndarray) -> tuple[float, float]:
    """Wilcoxon signed-rank p (two-sided) and the matched-pairs rank-biserial r.

    Zeros are dropped (Wilcoxon's convention); all-zero differences give p = 1 and r = 0.
    """
    nonzero = d[d != 0]
    if len(nonzero) == 0:
        return 1.0, 0.0
    ranks = sps.rankdata(np.abs(nonzero))
    r = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
    p = float(sps.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided").pvalue)
    return p, r


def paired_t(d: np.ndarray) -> float:
    if len(d) < 2 or np.all(d == d[0]):
        return 1.0 if np.all(d == 0) else (0.0 if len(d) >= 2 else 1.0)
    return float(sps.ttest_1samp(d, 0.0).pvalue)


def sign_flip(d: np.ndarray, resamples: int, seed: int) -> float:
    """Sign-flip permutation test of mean(d) = 0: exact up to n = 16, seeded Monte Carlo above."""
    if np.all(d == 0):
        return 1.0
    res = sps.permutation_test(
        (d,), np.mean, permutation_type="samples", n_resamples=resamples if len(d) > 16 else np.inf,
        alternative="two-sided", rng=np.random.default_rng(seed),
    )
    return float(min(1.0, res.pvalue))


def mcnemar_exact(reference: Sequence[bool], subject: Sequence[bool]) -> tuple[float, int, int]:
    """McNemar's exact test: a binomial test on the discordant pairs b (1->0) and c (0->1)."""
    ref = np.asarray(reference, dtype=bool)
    sub = np.asarray(subject, dtype=bool)
    b = int((ref & ~sub).sum())
    c = int((~ref & sub).sum())
    if b + c == 0:
        return 1.0, b, c
    return float(sps.binomtest(c, b + c, 0.5).pvalue), b, c


def cohens_dz(d: np.ndarray) -> float | None:
    if len(d) < 2:
        return None
    sd = d.std(ddof=1)
    if sd == 0:
        return 0.0 if d.mean() == 0 else None
    return float(d.mean() / sd)


def z_sum(alpha: float, power: float) -> float:
    return float(sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power))


def minimum_detectable_effect(se: float | None, alpha: float, power: float) -> float | None:
    """The smallest true difference this test finds with the given power: (z_{1-a/2} + z_{1-b}) SE."""
    return None if se is None else z_sum(alpha, power) * se


def items_needed(var_d: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Items for a paired test to detect a mean difference delta: (z_{1-a/2}+z_{1-b})^2 var(d)/delta^2."""
    return int(np.ceil(z_sum(alpha, power) ** 2 * var_d / delta**2))


def bh_qvalues(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values) over every test of a run."""
    if len(pvalues) == 0:
        return []
    return [float(q) for q in sps.false_discovery_control(np.asarray(pvalues, dtype=float), method="bh")]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, for the family of tests a gate depends on."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [float(x) for x in adjusted]


@dataclass(frozen=True)
class PairedResult:
    n: int
    reference_mean: float
    subject_mean: float
    mean_diff: float
    se: float | None
    se_kind: str
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    effect_size: float | None
    effect_size_kind: str
    mde: float | None


def compare_continuous(reference: Sequence[float], subject: Sequence[float],
                       clusters: Sequence[str] | None, settings: StatsSettings) -> PairedResult:
    d = paired_differences(reference, subject)
    test_name: str = settings.test
    if len(d) == 0:
        raise ValueError("no paired items to compare")
    se, se_kind = standard_error(d, clusters)
    lo, hi = bootstrap_ci(d, clusters, settings.resamples, settings.seed, settings.alpha)
    if settings.test == "wilcoxon" and len(d) >= WILCOXON_MIN_N:
        p, size = wilcoxon(d)
        size_kind = "rank-biserial r"
    elif settings.test == "wilcoxon":
        # Below 6 pairs Wilcoxon's smallest two-sided p is 2/2^n > 0.05: it could never say yes.
        p, size, size_kind = paired_t(d), cohens_dz(d), "Cohen's d_z"
        test_name = f"t (n={len(d)} < {WILCOXON_MIN_N}, too few for Wilcoxon)"
    else:
        p = paired_t(d) if settings.test == "t" else sign_flip(d, settings.resamples, settings.seed)
        size, size_kind = cohens_dz(d), "Cohen's d_z"
    return PairedResult(
        n=len(d), reference_mean=float(np.mean(reference)), subject_mean=float(np.mean(subject)),
        mean_diff=float(d.mean()), se=se, se_kind=se_kind, ci_low=lo, ci_high=hi, p_value=p,
        test=test_name, effect_size=size, effect_size_kind=size_kind,
        mde=minimum_detectable_effect(se, settings.alpha, settings.power),
    )


def compare_binary(reference: Sequence[bool], subject: Sequence[bool],
                   clusters: Sequence[str] | None, settings: StatsSettings) -> PairedResult:
    """Rates of a yes/no outcome (e.g. option a wins): McNemar's exact test on the flips."""
    ref = np.asarray(reference, dtype=float)
    sub = np.asarray(subject, dtype=float)
    d = paired_differences(ref, sub)
    se, se_kind = standard_error(d, clusters)
    lo, hi = bootstrap_ci(d, clusters, settings.resamples, settings.seed, settings.alpha)
    p, b, c = mcnemar_exact(ref.astype(bool), sub.astype(bool))
    return PairedResult(
        n=len(d), reference_mean=float(ref.mean()), subject_mean=float(sub.mean()),
        mean_diff=float(d.mean()), se=se, se_kind=se_kind, ci_low=lo, ci_high=hi, p_value=p,
        test="mcnemar-exact", effect_size=float(d.mean()), effect_size_kind="rate difference",
        mde=minimum_detectable_effect(se, settings.alpha, settings.power),
    )


def compare_clustered(reference: Sequence[float], subject: Sequence[float], clusters: Sequence[str],
                      settings: StatsSettings) -> PairedResult:
    """Items that share clusters are not independent: cluster-robust SE, cluster bootstrap, and
    the test run on cluster means (one observation per cluster), so p is not overstated."""
    d = paired_differences(reference, subject)
    index = _cluster_index(clusters, len(d))
    cluster_means = np.bincount(index, weights=d) / np.bincount(index)
    se, se_kind = standard_error(d, clusters)
    lo, hi = bootstrap_ci(d, clusters, settings.resamples, settings.seed, settings.alpha)
    on_means = compare_continuous(np.zeros_like(cluster_means), cluster_means, None, settings)
    return PairedResult(
        n=len(d), reference_mean=float(np.mean(reference)), subject_mean=float(np.mean(subject)),
        mean_diff=float(d.mean()), se=se, se_kind=se_kind, ci_low=lo, ci_high=hi,
        p_value=on_means.p_value, test=f"{settings.test} on {len(cluster_means)} cluster means",
        effect_size=on_means.effect_size, effect_size_kind=on_means.effect_size_kind + " (cluster means)",
        mde=minimum_detectable_effect(se, settings.alpha, settings.power),
    )
