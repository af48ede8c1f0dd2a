"""The effects table: metrics per kind, per-cluster breakdowns, axis verdicts, seed spread."""

import pytest

from evalkit.decide.effects import axis_verdict, group_table, mark_seed_spread, suite_effects
from evalkit.decide.stats import PairedResult, StatsSettings
from evalkit.record import Effect, ItemRecord, ModelRef, RunRecord


def _shift(mean_diff, subject_mean):
    return PairedResult(n=5, reference_mean=subject_mean - mean_diff, subject_mean=subject_mean, mean_diff=mean_diff,
                        se=0.1, se_kind="naive", ci_low=0, ci_high=0, ci_method="t", p_value=0.01, test="t",
                        effect_size=None, effect_size_kind="", mde=None, d_z=None)


@pytest.mark.parametrize("reference_ci, mean_diff, subject_mean, significant, verdict", [
    ((-0.2, 0.3), -2.0, -1.9, True, "new"),
    ((0.5, 1.0), 1.0, 1.8, True, "amplified"),
    ((0.5, 1.0), -2.0, -1.2, True, "reversed"),
    ((0.5, 1.0), -0.4, 0.3, True, "attenuated"),
    ((-0.2, 0.3), -2.0, -1.9, False, "unchanged"),
])
def test_axis_verdicts(reference_ci, mean_diff, subject_mean, significant, verdict):
    assert axis_verdict(_shift(mean_diff, subject_mean), reference_ci, significant) == verdict


def _consistency_items(flip_group: str) -> list[ItemRecord]:
    items = []
    for g in "abcdefgh":
        for k in range(3):
            ref = {"margin": 1.0 + 0.1 * k, "agrees": 1, "a_wins": 1}
            sub = dict(ref)
            if g == flip_group and k == 0:
                sub = {"margin": -1.0, "agrees": 0, "a_wins": 0}
            items.append(ItemRecord(suite="c", kind="consistency", item_id=f"{g}{k}", cluster=g, prompt="p",
                                    reference=ref, subject=sub))
    return items


def test_consistency_is_judged_per_group():
    items = _consistency_items("c")
    table = group_table(items)
    assert table["c"]["reference"]["agreement"] == 1.0
    assert table["c"]["subject"]["agreement"] == pytest.approx(2 / 3)
    assert table["a"]["subject"] == table["a"]["reference"]
    effects = {(e.metric, e.scope): e for e in suite_effects(items, StatsSettings())}
    assert effects[("agreement", "groups")].n == 8
    assert effects[("agreement", "groups")].mean_diff == pytest.approx(-1 / 24)
    assert effects[("margin_variance", "groups")].mean_diff > 0


def test_effects_skip_scores_a_side_lacks():
    items = [ItemRecord(suite="k", kind="continuation", item_id=f"i{k}", cluster=None, prompt="p",
                        reference={"kl": 0.0, "nll": 1.0, "changed": 0},
                        subject={"kl": None, "nll": 1.5, "changed": 1}) for k in range(8)]
    metrics = {e.metric for e in suite_effects(items, StatsSettings())}
    assert metrics == {"nll", "changed"}


def _record(run_id: str, seed: int, diff: float) -> RunRecord:
    effect = Effect(suite="s", metric="margin", scope="cluster:x", n=5, reference_mean=0, subject_mean=diff,
                    mean_diff=diff, se=0.1, se_kind="naive", ci_low=diff - 0.1, ci_high=diff + 0.1, ci_method="t",
                    p_value=0.001, q_value=0.001, test="t", effect_size=None, effect_size_kind="", mde=0.3,
                    significant=True, direction="up")
    subject = ModelRef(kind="adapter", name=run_id, path=run_id, fingerprint=run_id, scene_ids=["sc"],
                       scene_hashes=["h"], training={"training": {"seed": seed, "steps": 60}})
    base = ModelRef(kind="base", name="base", path="b", fingerprint="b")
    from evalkit.record import Manifest, StatsRef

    manifest = Manifest(evalkit_version="x", git_commit=None, created="t", packages={}, seeds={}, decoding={},
                        scoring="", suites=[])
    stats = StatsRef(alpha=0.05, test="wilcoxon", resamples=10, seed=0, power=0.8)
    return RunRecord(run_id=run_id, manifest=manifest, reference=base, subject=subject, stats=stats, items=[],
                     effects=[effect])


def test_effects_smaller_than_the_seed_spread_are_marked():
    records = [_record("s0", 0, 0.5), _record("s1", 1, -0.4), _record("s2", 2, 0.2)]
    mark_seed_spread(records)
    assert records[0].effects[0].seed_spread == pytest.approx(0.9)
    assert all(r.effects[0].within_seed_noise for r in records)
    assert records[0].seed_siblings == ["s1", "s2"]
    steady = [_record("s0", 0, 2.0), _record("s1", 1, 2.1)]
    mark_seed_spread(steady)
    assert not steady[0].effects[0].within_seed_noise


def test_one_seed_gets_no_spread():
    records = [_record("a", 0, 0.5), _record("b", 0, 0.6)]
    mark_seed_spread(records)
    assert records[0].effects[0].seed_spread is None
