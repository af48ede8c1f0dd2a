"""The harness does not cry wolf: simulated nulls, and null subjects on a real tiny model."""

from pathlib import Path

import pytest

from evalkit.decide.null_rates import null_rates
from evalkit.engine.base import load_base
from evalkit.inputs.suites import load_suites
from evalkit.pipelines.calibrate import null_subjects
from evalkit.settings import RunSettings, StatsSettings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rates():
    return null_rates(datasets=400, sizes=(20,), seed=11)


def test_default_procedures_keep_the_false_positive_rate_at_alpha(rates):
    defaults = [r for r in rates if r.default]
    assert len(defaults) >= 6
    for r in defaults:
        assert r.passes(0.05), r.line(0.05)


def test_ignoring_clusters_is_shown_to_cry_wolf(rates):
    naive = next(r for r in rates if r.procedure == "continuous: naive t ignoring clusters")
    assert naive.ci[0] > 0.05, naive.line(0.05)


def test_simulation_is_seeded(rates):
    again = null_rates(datasets=400, sizes=(20,), seed=11)
    assert [(r.procedure, r.positives) for r in again] == [(r.procedure, r.positives) for r in rates]


def test_null_subjects_give_p_one_and_nothing_significant(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    figures = null_subjects(base, load_suites([ROOT / "probes"]), tmp_path, RunSettings(stats=StatsSettings()),
                            log=lambda _: None)
    for label, f in figures.items():
        assert f["ok"] and f["significant"] == 0 and f["min_p"] == 1.0 and f["items_identical"], label
