"""The CI gate through the real CLI: exit codes, one-line errors, JUnit XML, Markdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from evalkit.decide.gate import load_policy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def evalkit(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalkit", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama) -> dict[str, Path]:
    """The honesty scene trained with seeds 0 and 1 on the tiny model, run on every suite."""
    work = tmp_path_factory.mktemp("gate")
    for seed in (0, 1):
        done = evalkit("train", ROOT / "scenes" / "01-honesty.yaml", "--base", tiny_llama, "--out",
                       work / f"honesty-s{seed}", "--steps", "30", "--seed", seed)
        assert done.returncode == 0, done.stderr
    done = evalkit("run", "--adapter", work / "honesty-s0", "--adapter", work / "honesty-s1", "--base", tiny_llama,
                   "--out", work / "reports")
    assert done.returncode == 0, done.stderr
    return {"work": work, "s0": work / "reports" / "honesty-s0" / "results.json",
            "s1": work / "reports" / "honesty-s1" / "results.json", "tiny": tiny_llama}


def planted_consistency_drop(source: Path, out: Path) -> Path:
    """The same run, except that in every paraphrase group only one paraphrase still agrees."""
    record = json.loads(source.read_text())
    first_of_group: set[str] = set()
    for item in record["items"]:
        if item["kind"] == "consistency":
            keep = item["cluster"] not in first_of_group
            first_of_group.add(item["cluster"])
            item["subject"]["agrees"] = 1 if keep else 0
    out.write_text(json.dumps(record))
    return out


def test_identical_runs_pass(runs, tmp_path):
    done = evalkit("gate", "--baseline", runs["s0"], "--candidate", runs["s0"], "--junit", tmp_path / "j.xml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gate: passed (4 checks)" in done.stdout


def test_another_training_seed_is_not_a_regression(runs):
    done = evalkit("gate", "--baseline", runs["s0"], "--candidate", runs["s1"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("pass  ") == 4


def test_a_real_drop_in_consistency_fails_and_names_the_check(runs, tmp_path):
    dropped = planted_consistency_drop(runs["s0"], tmp_path / "dropped.json")
    summary = tmp_path / "summary.md"
    done = evalkit("gate", "--baseline", runs["s0"], "--candidate", dropped, "--junit", tmp_path / "j.xml",
                   env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  consistency/agreement" in done.stdout
    assert "gate: FAILED: consistency/agreement" in done.stdout
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.tag == "testsuite" and root.get("tests") == "4" and root.get("failures") == "1"
    cases = root.findall("testcase")
    assert len(cases) == 4
    failing = [c for c in cases if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failing] == [("evalkit.gate.consistency", "agreement")]
    message = failing[0].find("failure").get("message")
    assert "worse by" in message and "margin 0.05" in message and "at least" in message
    text = summary.read_text()
    assert "**FAIL**" in text and "consistency/agreement" in text


def test_inline_gate_on_run(runs, tmp_path):
    done = evalkit("run", "--adapter", runs["work"] / "honesty-s1", "--base", runs["tiny"], "--out", tmp_path,
                   "--gate", ROOT / "evalkit" / "decide" / "policies" / "default.yaml", "--baseline", runs["s0"],
                   "--junit", tmp_path / "j.xml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gate honesty-s1: passed" in done.stdout and (tmp_path / "j.xml").is_file()


def _mismatched(source: Path, out: Path) -> Path:
    record = json.loads(source.read_text())
    record["items"] = [i for i in record["items"] if i["item_id"] not in ("found-coin-market", "door-mill-closed")]
    out.write_text(json.dumps(record))
    return out


def _edited(source: Path, out: Path, edit) -> Path:
    record = json.loads(source.read_text())
    edit(record)
    out.write_text(json.dumps(record))
    return out


def _recluster(record: dict) -> None:
    next(i for i in record["items"] if i["kind"] == "tension")["cluster"] = "elsewhere"


def _p_above_one(record: dict) -> None:
    next(e for e in record["effects"] if e["p_value"] is not None)["p_value"] = 7


def _suite_twice(record: dict) -> None:
    record["manifest"]["suites"].insert(1, record["manifest"]["suites"][0])


def _ghost_effect(record: dict) -> None:
    record["effects"][0]["suite"] = "ghost"


def _dtype_list(record: dict) -> None:
    record["manifest"]["decoding"]["dtype"] = ["float32"]


def test_a_margin_in_exponent_notation_is_a_number(tmp_path):
    """YAML 1.1 reads 5e-2 as text (it wants 5.0e-2); evalkit reads it as YAML 1.2 does."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("alpha: 1e-2\nchecks: [{suite: tension, metric: entropy, worse: higher, margin: 5e-2}]\n")
    loaded = load_policy(policy)
    assert (loaded.alpha, loaded.checks[0].margin) == (0.01, 0.05)


@pytest.mark.parametrize("case, expected", [
    ("unknown key", "policy.yaml: unknown field 'checks.0.tolerance'"),
    ("bad direction", "policy.yaml: field 'checks.0.worse'"),
    ("not yaml", "policy.yaml: not valid YAML"),
    ("missing file", "nope.json: no such results file"),
    ("mismatched items", "baseline and candidate differ in 2 items: tension/door-mill-closed (baseline only)"),
    ("another cluster", "has another cluster ('elsewhere'; "),
    ("metric of another kind", "policy.yaml: field 'checks.0.metric': 'nll' is not a tested metric of tension"),
    ("p above 1", "p_value"),
    ("dtype not a name", "is not a dtype's name"),
    ("suite listed twice", "field 'manifest.suites.1': suite 'consistency' is listed twice"),
    ("effect of no suite", "field 'effects.0.suite': 'ghost' is not one of the record's suites"),
])
def test_bad_gate_input_is_one_line_exit_2(runs, tmp_path, case, expected):
    policy = tmp_path / "policy.yaml"
    policy.write_text({
        "unknown key": "checks: [{suite: tension, metric: entropy, worse: higher, margin: 0.1, tolerance: 2}]\n",
        "bad direction": "checks: [{suite: tension, metric: entropy, worse: sideways, margin: 0.1}]\n",
        "not yaml": "checks: [{suite: tension\n",
        "metric of another kind": "checks: [{suite: tension, metric: nll, worse: higher, margin: 0.1}]\n",
    }.get(case, "checks: [{suite: tension, metric: entropy, worse: higher, margin: 0.1}]\n"))
    candidate = {"missing file": lambda: tmp_path / "nope.json",
                 "mismatched items": lambda: _mismatched(runs["s0"], tmp_path / "fewer.json"),
                 "another cluster": lambda: _edited(runs["s1"], tmp_path / "c.json", _recluster),
                 "p above 1": lambda: _edited(runs["s1"], tmp_path / "p.json", _p_above_one),
                 "dtype not a name": lambda: _edited(runs["s1"], tmp_path / "d.json", _dtype_list),
                 "suite listed twice": lambda: _edited(runs["s1"], tmp_path / "s.json", _suite_twice),
                 "effect of no suite": lambda: _edited(runs["s1"], tmp_path / "e.json", _ghost_effect),
                 }.get(case, lambda: runs["s1"])()
    done = evalkit("gate", "--baseline", runs["s0"], "--candidate", candidate, "--policy", policy,
                   "--junit", tmp_path / "j.xml")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "j.xml").exists()


def _in_dtype(source: Path, out: Path, dtype: str) -> Path:
    record = json.loads(source.read_text())
    record["manifest"]["decoding"]["dtype"] = dtype
    out.write_text(json.dumps(record))
    return out


def test_a_baseline_in_another_dtype_is_refused_before_any_model_work(runs, tmp_path):
    """bf16 moves every score: across dtypes the gate would judge the precision, not the change."""
    policy = ROOT / "evalkit" / "decide" / "policies" / "default.yaml"
    candidate = _in_dtype(runs["s1"], tmp_path / "bf16.json", "bfloat16")
    done = evalkit("gate", "--baseline", runs["s0"], "--candidate", candidate, "--policy", policy)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the baseline's scores were computed in float32 but the candidate's in bfloat16" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # run --gate: refused from the baseline alone, before the model is loaded or anything is written
    done = evalkit("run", "--adapter", runs["work"] / "honesty-s1", "--base", runs["tiny"], "--out", tmp_path / "out",
                   "--gate", policy, "--baseline", candidate)
    assert done.returncode == 2 and "but this run's in float32" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "out").exists()
