"""`evalkit experiment`: plans validated whole, content-addressed reuse, increments and removals."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def evalkit(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalkit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200"}, timeout=900)


def plan_text(base: Path, extra: str = "") -> str:
    return (f"name: tiny\nbase: {base}\nscenes: [scenes]\nsuites: [{ROOT / 'probes' / 'tension.yaml'}]\n"
            "training: {steps: 4}\nscratch:\n  - {name: s3, steps: 2}\n" + extra)


@pytest.fixture()
def workspace(tmp_path, tiny_llama) -> Path:
    (tmp_path / "adapters").mkdir()
    (tmp_path / "scenes").mkdir()
    for name in ("01-honesty.yaml", "02-courage.yaml", "04-curiosity.yaml"):
        shutil.copy(ROOT / "scenes" / name, tmp_path / "scenes" / name)
    (tmp_path / "plan.yaml").write_text(plan_text(tiny_llama))
    return tmp_path


def trained_labels(stdout: str) -> list[str]:
    return sorted(re.findall(r"^trained \w+\s+(\S+)", stdout, flags=re.M))


def test_plan_trains_evaluates_and_reuses(workspace):
    done = evalkit("experiment", "plan.yaml", "--out", "reports/tiny", cwd=workspace)
    assert done.returncode == 0, done.stdout + done.stderr
    assert trained_labels(done.stdout) == sorted(
        ["honesty", "courage", "curiosity", "stack-02", "stack-03", "without-honesty", "without-courage",
         "without-curiosity", "scratch-s3"])
    index = (workspace / "reports" / "tiny" / "index.html").read_text()
    assert 'id="increments"' in index and 'id="removals"' in index and 'id="heatmap"' in index
    for k in (2, 3):
        increment = json.loads((workspace / "reports" / "tiny" / "increments" / f"stack-{k:02d}-over-{k - 1:02d}"
                                / "results.json").read_text())
        assert increment["reference"]["scene_ids"] == increment["subject"]["scene_ids"][:-1]
        margin = next(e for e in increment["effects"] if e["metric"] == "margin" and e["scope"] == "suite")
        assert margin["ci_low"] <= margin["mean_diff"] <= margin["ci_high"]
        assert f"stack {k} over {k - 1}" in index
    scratch = json.loads((workspace / "reports" / "tiny" / "scratch" / "scratch-s3" / "results.json").read_text())
    assert scratch["subject"]["kind"] == "checkpoint"

    again = evalkit("experiment", "plan.yaml", "--out", "reports/tiny", cwd=workspace)
    assert again.returncode == 0, again.stderr
    assert "0 to train, 9 reused" in again.stdout and trained_labels(again.stdout) == []

    scene = workspace / "scenes" / "02-courage.yaml"
    scene.write_text(scene.read_text().replace("He took a", "He took a small"))
    changed = evalkit("experiment", "plan.yaml", "--out", "reports/tiny", cwd=workspace)
    assert changed.returncode == 0, changed.stderr
    # exactly the models whose scenes include 'courage'
    assert trained_labels(changed.stdout) == sorted(
        ["courage", "stack-02", "stack-03", "without-honesty", "without-curiosity", "scratch-s3"])


@pytest.mark.parametrize("extra, expected", [
    ("stacks:\n  named:\n    a: [honesty, b]\n    b: [courage, a]\n", "field 'stacks.named.a': cycle a -> b -> a"),
    ("stacks:\n  named:\n    a: [honesty, honesty]\n", "field 'stacks.named.a': scene 'honesty' appears twice"),
    ("stacks:\n  named:\n    a: [honesty, bravery]\n", "field 'stacks.named.a': unknown scene or stack 'bravery'"),
    ("colour: red\n", "unknown field 'colour'"),
    ("reference: nobody\n", "field 'reference': 'nobody' is neither 'base' nor a scene id"),
    ("discover: {control: calm}\n", "field 'discover.control': 'calm' is not a scene id"),
    ("discover: {control: courage, seeds: [1, 1]}\n", "field 'discover.seeds': a seed is given twice"),
    ("discover: {control: courage, seeds: [1]}\n", "field 'discover.seeds'"),
    ("discover: {control: courage, prompts: nope.txt}\n", "field 'discover.prompts': no such file 'nope.txt'"),
])
def test_bad_plan_is_one_line_exit_2_and_trains_nothing(workspace, tiny_llama, extra, expected):
    (workspace / "plan.yaml").write_text(plan_text(tiny_llama, extra))
    done = evalkit("experiment", "plan.yaml", cwd=workspace)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "plan.yaml" in lines[0] and expected in lines[0], done.stderr
    assert not list((workspace / "adapters").iterdir())


def test_dry_run_trains_nothing(workspace):
    done = evalkit("experiment", "plan.yaml", "--dry-run", cwd=workspace)
    assert done.returncode == 0, done.stderr
    assert "9 to train, 0 reused" in done.stdout
    assert not list((workspace / "adapters").iterdir()) and not (workspace / "reports").exists()


def test_discover_block_adds_a_section_to_each_scene_report(workspace, tiny_llama):
    """`discover:` in a plan: each single scene's report gets its discovered directions, against
    the control scene trained with the plan's seeds."""
    (workspace / "plan.yaml").write_text(
        f"name: tiny\nbase: {tiny_llama}\nscenes: [scenes]\nsuites: [{ROOT / 'probes' / 'novel_axis.yaml'}]\n"
        "training: {steps: 4}\nstacks: {cumulative: false, leave_one_out: false}\n"
        "discover: {control: curiosity, seeds: [1, 2]}\n")
    done = evalkit("experiment", "plan.yaml", "--out", "reports/tiny", cwd=workspace)
    assert done.returncode == 0, done.stdout + done.stderr
    for scene in ("honesty", "courage", "curiosity"):
        record = json.loads((workspace / "reports" / "tiny" / "scenes" / scene / "results.json").read_text())
        assert len(record["discovery"]["directions"]) == 4 and len(record["discovery"]["controls"]) == 2
        assert 'id="discovery"' in (workspace / "reports" / "tiny" / "scenes" / scene / "report.html").read_text()

