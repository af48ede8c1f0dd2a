"""Bad input through the real command line, in-process (typer's CliRunner): one line on stderr
naming the file (item, field), exit code 2, no traceback, nothing written. One row per case."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evalkit.cli import app

ROOT = Path(__file__).resolve().parent.parent
TENSION = ROOT / "probes" / "tension.yaml"

# Files the cases refer to, written into the case's temporary folder.
FILES = {
    "no-text.yaml": "id: x\ntitle: T\n",
    "unknown-key.yaml": "id: x\ntitle: T\ntext: hi\nmood: grim\n",
    "not-yaml.yaml": "id: x\ntitle: [T\ntext: : :\n",
    "long.yaml": "suite: long\nkind: tension\nitems:\n  - {id: too-long, prompt: '" + "the bread " * 200
                 + "', options: [a, b]}\n",
    "dupes.yaml": "suite: d\nkind: tension\nitems: [{id: a, prompt: P, options: [x, y]}, "
                  "{id: a, prompt: Q, options: [x, y]}]\n",
    "riddles.yaml": "suite: r\nkind: riddles\nitems: []\n",
}

# (arguments, a fragment of the one error line). Placeholders: {tmp} the case's folder, {out} an
# output folder that must not appear, {adapter} a trained adapter, {base} its base, {other} another
# base, {tension} the shipped tension suite, {bad_weights} / {broken_ckpt} damaged copies.
CASES = [
    ("run --adapter {adapter} --suite {tension} --executor spark --out {out}", "--executor 'spark': expected 'local' or 'ray'"),
    ("run --adapter {adapter} --executor ray --workers 0 --out {out}", "--workers 0: Input should be greater than or equal to 1"),
    ("run --adapter {adapter} --executor ray --ray-address nowhere --out {out}", "--ray-address 'nowhere': is not HOST:PORT"),
    ("run --adapter {adapter} --device tpu --out {out}", "--device 'tpu': is not cpu or cuda"),
    ("run --adapter {adapter} --test wilcox --out {out}", "--test 'wilcox': expected 'wilcoxon', 't' or 'permutation'"),
    ("run --adapter {adapter} --dtype float16 --out {out}", "--dtype 'float16': expected 'float32' or 'bfloat16'"),
    ("run --adapter {adapter} --alpha 2 --out {out}", "--alpha 2.0: Input should be less than 1"),
    ("run --adapter {adapter} --alpha nan --out {out}", "--alpha nan"),
    ("run --adapter {adapter} --batch-size 0 --out {out}", "--batch-size 0"),
    ("run --adapter {adapter} --resamples 0 --out {out}", "--resamples 0"),
    ("run --adapter {adapter} --seed 100000000000000000000000000 --out {out}", "--seed"),
    ("run --checkpoint {broken_ckpt} --base {base} --suite {tension} --out {out}", "broken-ckpt/evalkit.json: not valid JSON"),
    ("run --adapter {adapter} --base {base} --suite {tmp}/long.yaml --out {out}", "long.yaml [too-long]: field 'prompt'"),
    ("validate {tmp}/dupes.yaml", "dupes.yaml [a]: field 'id': duplicate id"),
    ("run --adapter {adapter} --suite {tmp}/riddles.yaml --out {out}", "field 'kind' is 'riddles'"),
    ("export-tasks {tmp}/riddles.yaml --out {out}", "riddles.yaml: field 'kind'"),
    ("train {tmp}/no-text.yaml --base {base} --out {out}", "no-text.yaml: field 'text' is required"),
    ("train {tmp}/unknown-key.yaml --base {base} --out {out}", "unknown field 'mood'"),
    ("train {tmp}/not-yaml.yaml --base {base} --out {out}", "not-yaml.yaml: not valid YAML"),
    ("train {tmp}/missing.yaml --base {base} --out {out}", "missing.yaml: no such file"),
    ("train {tmp}/no-text.yaml --base {base} --out {out} --steps 0", "--steps 0"),
    ("scratch {tmp}/no-text.yaml --out {out} --steps 0", "--steps 0"),
    ("scratch {tmp}/no-text.yaml --out {out} --demo-stories -5", "--demo-stories -5"),
    ("validate {tmp}/unknown-key.yaml", "unknown-key.yaml: unknown field 'mood'"),
    ("run --adapter {tmp}/nope --base {base} --out {out}", "nope: no such adapter folder"),
    ("run --adapter {adapter} --adapter {bad_weights} --base {base} --suite {tension} --out {out}",
     "bad-weights/adapter_model.safetensors: unreadable adapter weights"),
    ("run --adapter {adapter} --base {other} --suite {tension} --out {out}",
     "evalkit.json: field 'base.fingerprint': adapter was trained on base"),
]
if not importlib.util.find_spec("vllm"):
    CASES.append(("run --adapter {adapter} --suite {tension} --backend vllm --out {out}",
                  "--backend vllm needs vllm and a GPU"))


@pytest.fixture(scope="module")
def places(tmp_path_factory, honesty_adapter, tiny_llama, other_tiny_llama) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bad-inputs")
    for name, text in FILES.items():
        (tmp / name).write_text(text)
    bad_weights = tmp / "bad-weights"
    shutil.copytree(honesty_adapter, bad_weights)
    (bad_weights / "adapter_model.safetensors").write_text("not safetensors")
    broken = tmp / "broken-ckpt"
    shutil.copytree(tiny_llama, broken)
    (broken / "evalkit.json").write_text("{not json")
    return {"tmp": tmp, "adapter": honesty_adapter, "base": tiny_llama, "other": other_tiny_llama,
            "tension": TENSION, "bad_weights": bad_weights, "broken_ckpt": broken}


@pytest.mark.parametrize("args, expected", CASES, ids=[c[0].split(" {")[0] + ": " + c[1][:40] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(places, tmp_path, args, expected):
    out = tmp_path / "out"
    argv = args.format(out=out, **places).split()
    result = CliRunner().invoke(app, argv)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (argv, result.stderr, result.exception)
    assert len(lines) == 1 and expected in lines[0], (argv, result.stderr)
    assert "Traceback" not in result.stderr
    assert not out.exists(), argv


def test_no_cache_is_one_flag_that_says_what_it_recomputes():
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert "--no-cache" in result.stdout and "--no-no-cache" not in result.stdout
    assert "reference and subjects" in result.stdout
