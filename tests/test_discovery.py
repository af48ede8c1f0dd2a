"""Discovered directions: a planted shift is found, labelled, replicated and called new or matched;
a zero adapter gives exactly nothing; the command writes its record and report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from evalkit.decide.discovery import discover

ROOT = Path(__file__).resolve().parent.parent


def test_a_planted_direction_is_found_replicated_and_matched():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 32))
    planted = np.zeros(32)
    planted[3] = 1.0
    subject = reference + 0.8 * planted + rng.normal(scale=0.3, size=(200, 32))
    head = np.eye(32)  # token k's logit is coordinate k: the label must be token 3
    other = np.zeros(32)
    other[7] = 1.0
    found = discover(reference, subject, head, {"declared": planted, "unrelated": other}, seed=1)
    shift = found[0]
    assert abs(float(shift.vector @ planted)) > 0.9 and shift.promoted[0] == 3
    assert shift.replicates and all(p < 1e-6 for _, p in shift.held_out)
    assert shift.match() == ("declared", shift.cosines["declared"])
    new = discover(reference, subject, head, {"unrelated": other}, seed=1)[0]
    assert new.match()[0] is None and new.match()[1] < 0.5


def test_nothing_changed_gives_no_direction():
    reference = np.random.default_rng(0).normal(size=(50, 8))
    assert discover(reference, reference.copy(), np.eye(8), {}) == []


def test_discover_command_on_a_zero_adapter_and_a_trained_one(tmp_path, honesty_adapter, tiny_llama):
    from safetensors.torch import load_file, save_file

    from evalkit.pipelines.discover import run_discovery

    zero = tmp_path / "zero-b"
    shutil.copytree(honesty_adapter, zero)
    weights = load_file(zero / "adapter_model.safetensors")
    save_file({k: (v.zero_() if "lora_B" in k else v) for k, v in weights.items()}, zero / "adapter_model.safetensors")
    suites = [ROOT / "probes" / "novel_axis.yaml"]
    run_discovery(zero, tiny_llama, None, [], None, suites, tmp_path / "zero", log=lambda _: None)
    assert json.loads((tmp_path / "zero" / "discovery.json").read_text())["directions"] == []
    report = run_discovery(honesty_adapter, tiny_llama, None, [zero], None, suites, tmp_path / "found",
                           log=lambda _: None)
    record = json.loads((tmp_path / "found" / "discovery.json").read_text())
    assert record["prompts"] >= 200 and len(record["directions"]) == 4
    first = record["directions"][0]
    assert first["name"] == "consistent shift" and len(first["held_out_p"]) == 5 and first["promoted"]
    assert set(first["cosines"]) >= {"mood", "fear"} and first["beyond_null"] is not None
    assert "held-out" in report.read_text()
