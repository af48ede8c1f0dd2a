"""evalkit's statistics against scipy / statsmodels reference values on fixed vectors."""

import warnings

import numpy as np
import pytest
from scipy import stats as sps

from evalkit.decide import stats

REF = np.array([0.1, -0.3, 0.5, 0.2, 0.0, 1.1, -0.7, 0.4, 0.9, -0.2, 0.3, 0.6])
SUB = np.array([0.4, -0.1, 0.5, 0.9, 0.2, 1.5, -0.2, 0.4, 1.6, 0.1, 0.2, 1.4])
TIES = (np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), np.array([2.0, 3.0, 4.0, 4.0, 6.0, 5.0]))


def test_wilcoxon_matches_scipy_including_zeros_and_ties():
    for ref, sub in [(REF, SUB), TIES]:
        d = sub - ref
        p, _ = stats.wilcoxon(d)
        expected = sps.wilcoxon(d[d != 0]).pvalue
        assert p == pytest.approx(expected, rel=1e-12)


def test_rank_biserial_is_the_signed_rank_sum_share():
    d = np.array([1.0, 2.0, -3.0, 4.0])
    _, r = stats.wilcoxon(d)
    ranks = sps.rankdata(np.abs(d))
    assert r == pytest.approx((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def test_all_zero_differences_give_p_one_without_warnings():
    same = np.arange(10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for test in ("wilcoxon", "t", "permutation"):
            r = stats.compare_continuous(same, same, None, stats.StatsSettings(test=test))
            assert r.p_value == 1.0 and r.mean_diff == 0.0
        clustered = stats.compare_continuous(same, same, list("aabbccddee"), stats.StatsSettings())
        assert clustered.p_value == 1.0
        assert stats.compare_binary([1, 0, 1], [1, 0, 1], None, stats.StatsSettings()).p_value == 1.0


def test_one_unit_is_untestable_not_p_one():
    """One item (or one cluster) has no spread: no p, no interval, and the reason is given."""
    for r in (stats.compare_continuous(REF[:1], SUB[:1], None, stats.StatsSettings()),
              stats.compare_continuous(REF[:3], SUB[:3], ["a", "a", "a"], stats.StatsSettings())):
        assert r.p_value is None and r.ci_low is None and r.ci_high is None and r.mde is None and r.se is None
        assert r.untestable and r.untestable.startswith("1 ") and r.units == 1
        assert r.mean_diff == pytest.approx(float(np.mean(SUB[:len(REF[:r.n])] - REF[:r.n])))


def test_two_items_do_not_crash():
    r = stats.compare_continuous(REF[:2], SUB[:2], None, stats.StatsSettings())
    assert r.p_value is not None and 0.0 <= r.p_value <= 1.0
    assert r.ci_low is not None and r.ci_high is not None and r.ci_low <= r.mean_diff <= r.ci_high


def test_nan_scores_are_an_error_never_dropped():
    with pytest.raises(ValueError, match="position 2 is NaN"):
        stats.compare_continuous([1.0, 2.0, float("nan")], [1.0, 2.0, 3.0], None, stats.StatsSettings())


def test_paired_t_and_sign_flip_match_scipy():
    d = SUB - REF
    assert stats.paired_t(d) == pytest.approx(sps.ttest_rel(SUB, REF).pvalue, rel=1e-12)
    # n = 12: the sign-flip test enumerates all 2^12 sign patterns, so it is exact.
    exact = sps.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue
    assert stats.sign_flip(d, 999, 0) == pytest.approx(exact)


def test_mcnemar_matches_statsmodels():
    from statsmodels.stats.contingency_tables import mcnemar

    ref = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)
    sub = np.array([1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0], dtype=bool)
    table = [[(ref & sub).sum(), (ref & ~sub).sum()], [(~ref & sub).sum(), (~ref & ~sub).sum()]]
    p, b, c = stats.mcnemar_exact(ref, sub)
    assert (b, c) == (2, 5)
    assert p == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)


def test_clustered_se_matches_statsmodels_cluster_robust_ols():
    import statsmodels.api as sm

    d = SUB - REF
    clusters = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    se, kind = stats.standard_error(d, [str(c) for c in clusters])
    fit = sm.OLS(d, np.ones((len(d), 1))).fit(cov_type="cluster", cov_kwds={"groups": clusters, "use_correction": False})
    assert kind == "clustered"
    # statsmodels without small-sample correction: exactly (1/n^2) sum_c (sum_i e_i)^2
    assert se == pytest.approx(float(fit.bse[0]), rel=1e-10)


def test_naive_se_and_cohens_dz():
    d = SUB - REF
    se, kind = stats.standard_error(d)
    assert kind == "naive" and se == pytest.approx(sps.sem(d))
    assert stats.cohens_dz(d) == pytest.approx(d.mean() / d.std(ddof=1))


def test_bh_and_holm_match_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = [0.001, 0.04, 0.03, 0.5, 0.02, 0.9, 0.011]
    assert stats.bh_qvalues(p) == pytest.approx(list(multipletests(p, method="fdr_bh")[1]))
    assert stats.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert stats.bh_qvalues([]) == []


def test_bootstrap_is_seeded_and_resamples_clusters():
    d = SUB - REF
    a = stats.bootstrap_ci(d, None, 2000, seed=3, alpha=0.05)
    assert a == stats.bootstrap_ci(d, None, 2000, seed=3, alpha=0.05)
    assert a != stats.bootstrap_ci(d, None, 2000, seed=4, alpha=0.05)
    # A cluster with a constant shift: cluster resampling gives a wider interval than items.
    clusters = [str(i // 3) for i in range(12)]
    lo_c, hi_c = stats.bootstrap_ci(d, clusters, 4000, seed=0, alpha=0.05)
    assert lo_c < d.mean() < hi_c


def test_mde_and_items_needed():
    t = sps.t.ppf(0.975, 9) + sps.t.ppf(0.8, 9)
    spread = stats.Spread(se=0.1, kind="naive", units=10)
    assert stats.minimum_detectable_effect(spread, 0.05, 0.8) == pytest.approx(t * 0.1)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    assert stats.items_needed(var_d=1.0, delta=0.5) == int(np.ceil(z**2 / 0.25))


@pytest.mark.parametrize("n, clusters", [(4, None), (9, [str(i // 3) for i in range(9)]),
                                         (12, [str(i // 4) for i in range(12)]), (30, None)])
def test_mde_sits_on_the_interval_it_is_shown_beside(n, clusters):
    """'No change larger than MDE' must never claim more than the CI allows: on the same SE and
    degrees of freedom, MDE / half-width = (t_{1-a/2,df} + t_{power,df}) / t_{1-a/2,df}. (A 3-cluster
    effect used to show an MDE of 2.98 beside a CI half-width of 5.6.)"""
    rng = np.random.default_rng(n)
    ref, sub = rng.normal(size=n), rng.normal(size=n)
    settings = stats.StatsSettings()
    r = stats.compare_continuous(ref, sub, clusters, settings)
    df = (len(set(clusters)) if clusters else n) - 1
    ratio = (sps.t.ppf(0.975, df) + sps.t.ppf(0.8, df)) / sps.t.ppf(0.975, df)
    half = (r.ci_high - r.ci_low) / 2
    assert r.mde == pytest.approx(half * ratio, rel=1e-9)
    assert r.mde >= half


@pytest.mark.parametrize("n", [3, 6, 9, 13])
def test_exact_signed_rank_with_ties_matches_scipy_permutation(n):
    rng = np.random.default_rng(n)
    for _ in range(10):
        d = np.round(rng.normal(size=n), 1)
        d = d[d != 0]
        if len(d):
            assert stats.wilcoxon(d)[0] == pytest.approx(sps.wilcoxon(d).pvalue, abs=1e-12)


def test_exact_signed_rank_without_ties_matches_scipy_exact_up_to_50():
    d = np.random.default_rng(1).normal(size=50)
    assert stats.wilcoxon(d)[0] == pytest.approx(sps.wilcoxon(d, method="exact").pvalue, abs=1e-12)
    big = np.random.default_rng(2).normal(size=80)
    assert stats.wilcoxon(big)[0] == pytest.approx(sps.wilcoxon(big, method="asymptotic").pvalue, abs=1e-12)


def test_t_interval_matches_scipy():
    d = SUB - REF
    expected = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    lo, hi, _ = stats.mean_ci(d, None, stats.StatsSettings())
    assert (lo, hi) == pytest.approx(expected)


def test_clustered_ci_uses_cr1_se_with_clusters_minus_one_df():
    import statsmodels.api as sm

    d = SUB - REF
    clusters = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5, 5, 6, 6])[: len(d)]
    fit = sm.OLS(d, np.ones((len(d), 1))).fit(cov_type="cluster", cov_kwds={"groups": clusters})
    k = len(set(clusters))
    half = sps.t.ppf(0.975, k - 1) * float(fit.bse[0])  # statsmodels' correction: G/(G-1) with one regressor
    lo, hi, method = stats.mean_ci(d, [str(c) for c in clusters], stats.StatsSettings())
    assert (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half))
    assert "cluster-robust" in method


def test_clustered_scores_are_tested_on_cluster_means():
    ref = np.zeros(12)
    sub = np.array([1.0, 1.1, 0.9, -0.2, -0.1, -0.3, 0.5, 0.6, 0.4, 0.2, 0.1, 0.3])
    clusters = [str(i // 3) for i in range(12)]
    r = stats.compare_continuous(ref, sub, clusters, stats.StatsSettings())
    means = np.array([1.0, -0.2, 0.5, 0.2])
    assert r.p_value == pytest.approx(sps.ttest_1samp(means, 0).pvalue)  # 4 clusters: t, not Wilcoxon
    assert "4 cluster means" in r.test and r.se_kind == "clustered (CR1)"


def test_binary_with_clusters_is_not_mcnemar():
    ref = [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    sub = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    clusters = [str(i // 3) for i in range(12)]
    assert "mcnemar" in stats.compare_binary(ref, sub, None, stats.StatsSettings()).test
    assert "cluster means" in stats.compare_binary(ref, sub, clusters, stats.StatsSettings()).test
