"""The effects table: metrics per kind, per-cluster breakdowns, axis verdicts, seed spread."""

import numpy as np
import pytest
from scipy import stats as sps

from evalkit.decide.effects import axis_verdict, group_table, lean, mark_seed_spread, suite_effects
from evalkit.record import Effect, ItemRecord, ModelRef, RunRecord
from evalkit.settings import StatsSettings

AXIS = {"neutral": [0.05, -0.1, 0.08, -0.02, 0.0, 0.04, -0.06, 0.03],
        "leans_a": [1.2, 0.9, 1.5, 1.1, 1.3, 0.8, 1.0, 1.4],
        "leans_b": [-1.1, -1.3, -0.9, -1.4, -1.2, -1.0, -0.8, -1.5],
        "strongly_b": [-2.1, -2.6, -1.9, -2.8, -2.2, -2.0, -1.6, -3.0],
        "weakly_b": [-0.6, 0.2, -0.5, 0.1, -0.4, -0.3, 0.3, -0.2],
        "control_adapter": [9.37, 3.02, 1.49, 6.19],  # leans one way on all 4, yet its CI covers 0
        "flipped": [-2.0, -1.5, -3.0, 4.0]}


@pytest.mark.parametrize("reference, subject, significant, verdict", [
    ("neutral", "leans_a", True, "new"),
    ("neutral", "weakly_b", True, "shifted"),
    ("leans_a", "leans_a", False, "unchanged"),
    ("neutral", "leans_b", False, "unchanged"),
    ("leans_b", "strongly_b", True, "amplified"),
    ("leans_a", "leans_b", True, "reversed"),
    ("leans_a", "weakly_b", True, "attenuated"),
    ("control_adapter", "flipped", True, "baseline unclear"),
])
def test_axis_verdicts(reference, subject, significant, verdict):
    settings = StatsSettings()
    ref, sub = np.array(AXIS[reference]), np.array(AXIS[subject])
    ref_lean, sub_lean = lean(ref, settings), lean(sub, settings)
    assert axis_verdict(ref_lean, sub_lean, float(sub.mean() - ref.mean()), significant) == verdict


def test_new_needs_the_reference_shown_neutral_within_the_stated_margin():
    settings = StatsSettings()
    control = lean(np.array(AXIS["control_adapter"]), settings)
    assert control.ci is not None and control.ci[0] < 0 < control.ci[1] and not control.neutral
    assert lean(np.array(AXIS["neutral"]), settings).neutral
    assert not lean(np.array(AXIS["neutral"]), StatsSettings(neutral_margin=0.01)).neutral


def test_a_metric_with_one_cluster_is_untestable_and_outside_the_bh_family():
    items = [ItemRecord(suite="t", kind="tension", item_id=f"i{k}", cluster="only" if k < 4 else f"c{k}",
                        prompt="p", options=["a", "b"],
                        reference={"margin": 0.0, "entropy": 1.0, "a_wins": 0},
                        subject={"margin": -3.7 if k < 4 else 0.3 * k, "entropy": 1.0, "a_wins": 0})
             for k in range(12)]
    items[0] = items[0].model_copy(update={"cluster": "lonely"})
    effects = suite_effects(items, StatsSettings())
    lonely = next(e for e in effects if e.scope == "cluster:lonely")
    assert lonely.untestable and lonely.p_value is None and lonely.q_value is None and lonely.ci_low is None
    assert not lonely.significant and lonely.mean_diff == pytest.approx(-3.7)
    tested = [e for e in effects if e.p_value is not None]
    assert [e.q_value for e in tested] == pytest.approx(
        list(sps.false_discovery_control([e.p_value for e in tested], method="bh")))


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
