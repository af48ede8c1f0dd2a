"""The gate's decision and the bound it prints agree: a check fails exactly when its printed
one-sided bound lies above the margin, with one check and with several (Holm)."""

from __future__ import annotations

import numpy as np

from evalkit.decide.gate import Check, Policy, decide
from evalkit.record import ItemRecord, Manifest, ModelRef, RunRecord, StatsRef, SuiteRef


def _record(entropy: np.ndarray, margin: np.ndarray) -> RunRecord:
    items = [ItemRecord(suite="t", kind="tension", item_id=f"i{k}", cluster=f"c{k // 3}", prompt="p",
                        options=["a", "b"], reference={"margin": 0.0, "entropy": 0.5, "a_wins": 1, "winner": 0},
                        subject={"margin": float(m), "entropy": float(e), "a_wins": int(m > 0), "winner": int(m <= 0)})
             for k, (e, m) in enumerate(zip(entropy, margin))]
    model = ModelRef(kind="base", name="b", path="b", fingerprint="f")
    manifest = Manifest(evalkit_version="x", git_commit=None, created="t", packages={}, seeds={}, decoding={},
                        scoring="", suites=[SuiteRef(name="t", kind="tension", path="t", hash="h", n_items=len(items),
                                                     normalization="sum")])
    return RunRecord(run_id="r", manifest=manifest, reference=model, subject=model,
                     stats=StatsRef(alpha=0.05, test="wilcoxon", resamples=100, seed=0, power=0.8), items=items,
                     effects=[])


def test_a_check_fails_exactly_when_its_printed_bound_is_beyond_the_margin():
    policy = Policy(checks=[Check(suite="t", metric="entropy", worse="higher", margin=0.1),
                            Check(suite="t", metric="margin", worse="lower", margin=0.5)])
    rng = np.random.default_rng(0)
    seen = {True: 0, False: 0}
    for _ in range(200):
        n = 24
        base = _record(rng.uniform(0, 1, n), rng.normal(0, 1, n))
        shift = rng.uniform(-0.1, 0.6)
        cand = _record(np.array([i.subject["entropy"] for i in base.items]) + shift + rng.normal(0, 0.3, n),
                       np.array([i.subject["margin"] for i in base.items]) - 2 * shift + rng.normal(0, 1, n))
        for outcome in decide(base, cand, policy):
            assert outcome.failed == (outcome.bound > outcome.check.margin), outcome.line()
            seen[outcome.failed] += 1
    assert seen[True] > 20 and seen[False] > 20  # both sides of the line were exercised
