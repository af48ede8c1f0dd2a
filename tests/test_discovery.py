"""Discovered directions: a planted shift is found, labelled, replicated and called new or matched;
a zero adapter gives exactly nothing; the command writes its record and report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from evalkit.decide.discovery import NULL_RATIO, discover
from evalkit.record import read_record

ROOT = Path(__file__).resolve().parent.parent


def _adapter(reference, rng, shift, scale=0.3):
    """A fine-tune's hidden states: the reference moved by a per-adapter `shift` (what its seed and
    scene did, the same on every prompt) and by per-prompt noise."""
    return reference + shift + rng.normal(scale=scale, size=reference.shape)


def test_a_planted_direction_is_found_labelled_replicated_and_matched():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 32))
    planted = np.zeros(32)
    planted[3] = 1.0
    generic = rng.normal(scale=0.5, size=32)  # what any fine-tuning does: shared by subject and controls
    controls = [_adapter(reference, rng, generic + rng.normal(scale=0.05, size=32)) for _ in range(3)]
    subject = _adapter(reference, rng, generic + 1.5 * planted)  # several times the seed noise
    head = np.eye(32)  # token k's logit is coordinate k
    probability_shift = np.zeros((200, 32))
    probability_shift[:, 3] = 0.2  # the subject makes token 3 likelier
    # Declared choices are contrasts of the head's rows: option a's token against option b's.
    declared, other = head[3] - head[9], head[7] - head[11]
    found = discover(reference, subject, head, {"declared": declared, "unrelated": other}, controls,
                     probability_shift, seed=1)
    shift = found[0]
    assert abs(float(shift.vector @ planted)) > 0.9 and shift.promoted == [3] and shift.lens_promoted[0] == 3
    assert shift.replicates and all(p < 1e-6 for _, p in shift.held_out)
    assert shift.null_ratio > NULL_RATIO and shift.found
    assert shift.match() == ("declared", shift.cosines["declared"])
    new = discover(reference, subject, head, {"unrelated": other}, controls, seed=1)[0]
    assert new.match()[0] is None and new.match()[1] < 0.5


def test_what_any_fine_tuning_does_is_not_a_finding():
    """A subject that is one more control (another seed of the neutral scene) moves as much as the
    controls do: its directions replicate (a seed's shift is real) but do not stand beyond the null."""
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(200, 32))
    generic = rng.normal(scale=0.5, size=32)
    adapters = [_adapter(reference, rng, generic + rng.normal(scale=0.05, size=32)) for _ in range(4)]
    found = discover(reference, adapters[0], np.eye(32), {}, adapters[1:], seed=2)
    assert found and not any(d.found for d in found)
    assert all(d.null_ratio is not None and d.null_ratio < NULL_RATIO for d in found)
    alone = discover(reference, adapters[0], np.eye(32), {}, [], seed=2)
    assert alone[0].replicates and alone[0].null_strength is None and not alone[0].found  # no null, no finding


def test_held_out_p_is_uniform_on_noise():
    """Nothing of the held-out half chooses or signs a direction: on shifts that are pure noise,
    each split's p is uniform, so p < 0.05 in about 5% of data sets for every direction."""
    rng = np.random.default_rng(3)
    below = np.zeros(4)
    trials = 400
    for _ in range(trials):
        found = discover(np.zeros((40, 16)), rng.normal(size=(40, 16)), np.eye(16), {}, seed=int(rng.integers(1000)))
        below += [d.held_out[0][1] < 0.05 for d in found]
    assert np.all(np.abs(below / trials - 0.05) < 0.035), below / trials


def test_identical_controls_are_no_null():
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(60, 8))
    control = reference + 0.3
    found = discover(reference, reference + rng.normal(size=(60, 8)), np.eye(8), {}, [control, control.copy()])
    assert found and all(d.null_ratio is None and not d.found for d in found)


def test_nothing_changed_gives_no_direction():
    reference = np.random.default_rng(0).normal(size=(50, 8))
    assert discover(reference, reference.copy(), np.eye(8), {}) == []


@pytest.fixture(scope="module")
def zero_adapter(tmp_path_factory, honesty_adapter) -> Path:
    """The honesty adapter with LoRA B = 0: base + adapter is the base exactly."""
    from safetensors.torch import load_file, save_file

    zero = tmp_path_factory.mktemp("zero") / "zero-b"
    shutil.copytree(honesty_adapter, zero)
    weights = load_file(zero / "adapter_model.safetensors")
    save_file({k: (v.zero_() if "lora_B" in k else v) for k, v in weights.items()}, zero / "adapter_model.safetensors")
    return zero


@pytest.fixture(scope="module")
def control_adapters(tmp_path_factory, tiny_llama) -> list[Path]:
    """The neutral control scene, two seeds: the discovery null."""
    from evalkit import api
    from evalkit.settings import TrainSettings

    out = tmp_path_factory.mktemp("controls")
    return [api.train(ROOT / "scenes" / "06-control.yaml", base=tiny_llama, out=out / f"control-{seed}",
                      settings=TrainSettings(steps=5, seed=seed))[0] for seed in (1, 2)]


def test_discover_command_on_a_zero_adapter_and_a_trained_one(tmp_path, honesty_adapter, zero_adapter,
                                                                control_adapters, tiny_llama):
    from evalkit.pipelines.discover import run_discovery

    suites = [ROOT / "probes" / "novel_axis.yaml"]
    run_discovery(zero_adapter, tiny_llama, None, [], None, suites, tmp_path / "zero", log=lambda _: None)
    assert json.loads((tmp_path / "zero" / "discovery.json").read_text())["directions"] == []
    report = run_discovery(honesty_adapter, tiny_llama, None, control_adapters, None, suites, tmp_path / "found",
                           log=lambda _: None)
    record = json.loads((tmp_path / "found" / "discovery.json").read_text())
    assert record["prompts"] >= 200 and len(record["directions"]) == 4
    assert record["against"] == "the control adapters' mean"
    first = record["directions"][0]
    assert first["name"] == "consistent shift" and len(first["held_out_p"]) == 5
    assert first["lens_promoted"] and first["null_strength"] is not None and first["reading"]
    assert set(first["cosines"]) >= {"mood", "fear"} and len(first["subject_continuations"]) == 2
    assert "held-out" in report.read_text()


def test_run_discover_adds_a_section_to_the_record_and_the_report(tmp_path, honesty_adapter, control_adapters,
                                                                    tiny_llama, monkeypatch):
    from typer.testing import CliRunner

    from evalkit.cli import app

    monkeypatch.chdir(tmp_path)
    args = ["run", "--adapter", str(honesty_adapter), "--base", str(tiny_llama), "--suite",
            str(ROOT / "probes" / "novel_axis.yaml"), "--out", str(tmp_path / "reports"), "--resamples", "200",
            "--discover", *(a for c in control_adapters for a in ("--control", str(c)))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = read_record(tmp_path / "reports" / "honesty" / "results.json")
    assert record.discovery is not None and len(record.discovery.directions) == 4
    assert record.discovery.controls == [str(c) for c in control_adapters]
    page = (tmp_path / "reports" / "honesty" / "report.html").read_text()
    assert 'id="discovery"' in page and record.discovery.directions[0].reading.split(".")[0] in page
