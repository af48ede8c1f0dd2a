"""The harness proves itself: simulated null data sets give false-positive rates near alpha.

Pure numpy/scipy. Model-based checks (null subjects, a planted scene) live in workflow.calibrate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats as sps

from evalkit.decide import stats
from evalkit.settings import StatsSettings

CLUSTER_SIZE = 5


@dataclass
class Rate:
    """False positives out of `trials` null data sets, with a Clopper-Pearson 95% CI."""

    procedure: str
    design: str
    n: int
    positives: int
    trials: int
    default: bool
    """A procedure evalkit uses by default (the others are shown for contrast)."""

    @property
    def rate(self) -> float:
        return self.positives / self.trials

    @property
    def ci(self) -> tuple[float, float]:
        ci = sps.binomtest(self.positives, self.trials).proportion_ci(0.95, method="exact")
        return float(ci.low), float(ci.high)

    def passes(self, alpha: float) -> bool:
        """The CI covers alpha or lies below it: the procedure does not cry wolf."""
        return self.ci[0] <= alpha

    def line(self, alpha: float) -> str:
        lo, hi = self.ci
        mark = ("ok " if self.passes(alpha) else "FAIL") if self.default else "    "
        return (f"{mark} {self.design:22s} n={self.n:<4d} {self.procedure:44s} "
                f"{self.rate:6.3f}  95% CI [{lo:.3f}, {hi:.3f}]")


def _continuous(rng: np.random.Generator, n: int, clustered: bool) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Reference scores and a subject with zero true shift: heavy-tailed, or a random effect per cluster."""
    ref = rng.normal(size=n)
    if not clustered:
        return ref, ref + rng.standard_t(df=3, size=n), None
    labels = np.arange(n) // CLUSTER_SIZE
    shift = rng.normal(size=labels.max() + 1)[labels] + rng.normal(size=n)
    return ref, ref + shift, [str(c) for c in labels]


def _binary(rng: np.random.Generator, n: int, clustered: bool) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Yes/no outcomes whose rate is the same for reference and subject; clusters share their rates."""
    labels = np.arange(n) // CLUSTER_SIZE if clustered else np.arange(n)
    k = labels.max() + 1
    rate = rng.uniform(0.1, 0.9, size=k)[labels] if clustered else np.full(n, 0.5)
    redraw = rng.uniform(0.0, 0.6, size=k)[labels] if clustered else np.full(n, 0.3)
    ref = rng.random(n) < rate
    sub = np.where(rng.random(n) < redraw, rng.random(n) < rate, ref)
    return ref.astype(float), sub.astype(float), [str(c) for c in labels] if clustered else None


def _rejects(p: float | None, alpha: float) -> bool:
    return p is not None and p < alpha


def _excludes_zero(r: stats.PairedResult) -> bool:
    return r.ci_low is not None and r.ci_high is not None and not r.ci_low <= 0 <= r.ci_high


def _naive_t(ref: np.ndarray, sub: np.ndarray) -> float:
    return stats.paired_t(sub - ref)


def null_rates(datasets: int = 2000, sizes: tuple[int, ...] = (20, 100), alpha: float = 0.05, seed: int = 0,
               settings: StatsSettings | None = None) -> list[Rate]:
    """False-positive rates of evalkit's default procedures on data with no true effect."""
    settings = settings or StatsSettings(alpha=alpha, seed=seed)
    rng = np.random.default_rng(seed)
    rates = []
    for n in sizes:
        for clustered in (False, True):
            design = "clustered (ICC 0.5)" if clustered else "independent"
            counts: dict[tuple[str, bool], int] = {}

            def count(name: str, default: bool, positive: bool) -> None:
                counts[(name, default)] = counts.get((name, default), 0) + int(positive)

            for _ in range(datasets):
                ref, sub, clusters = _continuous(rng, n, clustered)
                r = stats.compare_continuous(ref, sub, clusters, settings)
                count(f"continuous: {r.test.split(' (')[0]}", True, _rejects(r.p_value, alpha))
                count(f"continuous: {r.ci_method.split(' (')[0]} CI excludes 0", True, _excludes_zero(r))
                lo, hi = stats.bootstrap_ci(sub - ref, clusters, settings.resamples, settings.seed, alpha)
                count("continuous: expanded percentile bootstrap CI", False, not lo <= 0 <= hi)
                if clustered:
                    count("continuous: naive t ignoring clusters", False, _naive_t(ref, sub) < alpha)
                bref, bsub, bclusters = _binary(rng, n, clustered)
                b = stats.compare_binary(bref, bsub, bclusters, settings)
                count(f"binary: {b.test.split(' (')[0]}", True, _rejects(b.p_value, alpha))
                if clustered:
                    p, _, _ = stats.mcnemar_exact(bref.astype(bool), bsub.astype(bool))
                    count("binary: mcnemar ignoring clusters", False, p < alpha)
            rates += [Rate(name, design, n, k, datasets, default) for (name, default), k in counts.items()]
    return rates


def print_rates(rates: list[Rate], alpha: float, say: Callable[[str], None]) -> bool:
    say(f"     {'design':22s} {'n':6s} {'procedure':44s} {'FPR':>6s}  (alpha {alpha})")
    for r in rates:
        say(r.line(alpha))
    return all(r.passes(alpha) for r in rates if r.default)
