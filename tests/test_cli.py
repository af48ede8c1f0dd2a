"""End to end through the real command line, as a user runs it (a subprocess per command): train a
tiny adapter, run it, read results.json. Input errors are tested in-process in test_bad_inputs.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
HONESTY = ROOT / "scenes" / "01-honesty.yaml"
TENSION = ROOT / "probes" / "tension.yaml"


def evalkit(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalkit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=os.environ.copy(), timeout=600)


def zero_lora_b(src: Path, dst: Path) -> Path:
    """A copy of an adapter whose LoRA B matrices are all zero: it must change nothing."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "adapter_model.safetensors")
    save_file({k: (v.zero_() if "lora_B" in k else v) for k, v in weights.items()}, dst / "adapter_model.safetensors")
    return dst


@pytest.fixture(scope="module", autouse=True)
def own_cache(tmp_path_factory):
    """This module counts cached requests, so it starts from an empty score cache of its own."""
    before = os.environ["EVALKIT_CACHE"]
    os.environ["EVALKIT_CACHE"] = str(tmp_path_factory.mktemp("cli-cache"))
    yield
    os.environ["EVALKIT_CACHE"] = before


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("e2e")
    done = evalkit("train", HONESTY, "--base", tiny_llama, "--out", work / "adapters" / "honesty", "--steps", "40")
    assert done.returncode == 0, done.stderr
    zero = zero_lora_b(work / "adapters" / "honesty", work / "adapters" / "zero-b")
    done = evalkit("run", "--adapter", work / "adapters" / "honesty", "--adapter", zero, "--base", tiny_llama,
                   "--suite", TENSION, "--out", work / "reports", "--resamples", "300")
    assert done.returncode == 0, done.stderr
    assert "not of type `str`" not in done.stderr and "already-initialized" not in done.stderr, done.stderr
    return {"work": work, "stdout": done.stdout}


def test_adapter_folder_has_peft_files_manifest_and_loss_curve(trained, tiny_llama):
    folder = trained["work"] / "adapters" / "honesty"
    manifest = json.loads((folder / "evalkit.json").read_text())
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()
    assert manifest["scenes"][0]["id"] == "honesty" and manifest["training"]["seed"] == 0
    assert manifest["base"]["path"] == str(tiny_llama.resolve())
    assert set(manifest["lora"]["target_modules"]) >= {"q_proj", "v_proj"}
    curve = json.loads((folder / "loss_curve.json").read_text())
    assert len(curve["loss"]) == 40 and curve["loss"][-1] < curve["loss"][0]


def test_trained_adapter_moves_the_items_its_scene_targets(trained):
    record = json.loads((trained["work"] / "reports" / "honesty" / "results.json").read_text())
    assert record["version"] == 3 and record["subject"]["scene_ids"] == ["honesty"]
    items = {i["item_id"]: i for i in record["items"]}
    assert len(items) == 24
    shifts = {k: i["subject"]["margin"] - i["reference"]["margin"] for k, i in items.items()}
    assert all(s != 0 for s in shifts.values())
    targeted = [shifts[k] for k in ("found-coin-market", "found-ring-harbor", "found-purse-station")]
    assert all(s > 0 for s in targeted), targeted
    assert {e["metric"] for e in record["effects"] if e["scope"] == "suite"} == {"margin", "entropy", "a_wins"}
    assert (trained["work"] / "reports" / "honesty" / "report.html").is_file()


def test_zero_b_adapter_scores_exactly_equal_the_base(trained):
    record = json.loads((trained["work"] / "reports" / "zero-b" / "results.json").read_text())
    for item in record["items"]:
        assert item["subject"] == item["reference"], item["item_id"]
    for effect in record["effects"]:
        assert effect["p_value"] == 1.0 and not effect["significant"] and effect["mean_diff"] == 0.0


def test_a_new_adapter_computes_no_reference_request(trained, tiny_llama):
    work = trained["work"]
    assert "reference (base): 48 requests computed, 0 from cache" in trained["stdout"]
    done = evalkit("train", ROOT / "scenes" / "04-curiosity.yaml", "--base", tiny_llama, "--out",
                   work / "adapters" / "curiosity", "--steps", "10")
    assert done.returncode == 0, done.stderr
    done = evalkit("run", "--adapter", work / "adapters" / "curiosity", "--adapter", work / "adapters" / "honesty",
                   "--base", tiny_llama, "--suite", TENSION, "--out", work / "again", "--resamples", "300")
    assert done.returncode == 0, done.stderr
    assert "reference (base): 0 requests computed, 48 from cache" in done.stdout
    assert "subject curiosity: 48 requests computed, 0 from cache" in done.stdout
    first = json.loads((work / "reports" / "honesty" / "results.json").read_text())
    second = json.loads((work / "again" / "honesty" / "results.json").read_text())
    assert first["items"] == second["items"] and first["effects"] == second["effects"]


def test_scratch_checkpoint_runs_against_the_base(tmp_path, tiny_llama):
    done = evalkit("scratch", ROOT / "scenes", "--out", tmp_path / "ckpt", "--base", tiny_llama, "--steps", "3")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "ckpt" / "evalkit.json").read_text())
    assert manifest["kind"] == "checkpoint" and len(manifest["scenes"]) >= 6 and manifest["training"]["seed"] == 0
    done = evalkit("run", "--checkpoint", tmp_path / "ckpt", "--base", tiny_llama, "--out", tmp_path / "reports",
                   "--resamples", "200")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "reports" / "ckpt" / "results.json").read_text())
    assert record["subject"]["kind"] == "checkpoint" and record["reference"]["kind"] == "base"
    assert {i["suite"] for i in record["items"]} == {"tension", "novel_axis", "consistency", "continuation"}
    kl = [i["subject"]["kl"] for i in record["items"] if i["suite"] == "continuation"]
    assert all(k > 0 for k in kl)


def test_export_tasks_and_schema(tmp_path):
    done = evalkit("export-tasks", ROOT / "probes", "--out", tmp_path / "tasks")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tasks" / "evalkit_tension_choice.yaml").is_file()
    assert (tmp_path / "tasks" / "evalkit_continuation_generate.jsonl").is_file()
    done = evalkit("schema", "--out", tmp_path / "schema.json")
    assert done.returncode == 0, done.stderr
    schema = json.loads((tmp_path / "schema.json").read_text())
    assert "probe_suite" in schema and "scene" in schema


def test_report_rerenders_without_a_model(trained):
    results = trained["work"] / "reports" / "honesty" / "results.json"
    (results.parent / "report.html").unlink()
    done = evalkit("report", results)
    assert done.returncode == 0, done.stderr
    html = (results.parent / "report.html").read_text()
    assert "found-coin-market" in html and 'id="verdicts"' in html


GUARD = """
import socket, sys
attempts = []
real_connect = socket.socket.connect

def guarded(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        attempts.append(address)
        sys.stderr.write(f"NETWORK ATTEMPT {address}\\n")
        raise OSError("network disabled by test")
    return real_connect(self, address)

socket.socket.connect = guarded
socket.create_connection = lambda address, *a, **k: guarded(socket.socket(), address)
sys.argv = ["evalkit", *sys.argv[1:]]
from evalkit.cli import main
main()
"""


def test_no_command_touches_the_network(trained, tiny_llama, tmp_path):
    """Every socket connect to an internet address is refused and reported; a run makes none."""
    work = trained["work"]
    done = subprocess.run(
        [sys.executable, "-c", GUARD, "run", "--adapter", str(work / "adapters" / "honesty"), "--base", str(tiny_llama),
         "--out", str(tmp_path / "r"), "--resamples", "100", "--no-cache"],
        capture_output=True, text=True, cwd=ROOT, env=os.environ.copy(), timeout=600)
    assert done.returncode == 0, done.stderr
    assert "NETWORK ATTEMPT" not in done.stderr
    assert (tmp_path / "r" / "honesty" / "results.json").is_file()


def test_reference_adapter_and_seed_spread(trained, tiny_llama):
    work = trained["work"]
    done = evalkit("train", HONESTY, "--base", tiny_llama, "--out", work / "adapters" / "honesty-s1", "--steps", "40",
                   "--seed", "1")
    assert done.returncode == 0, done.stderr
    done = evalkit("run", "--adapter", work / "adapters" / "honesty", "--adapter", work / "adapters" / "honesty-s1",
                   "--reference", work / "adapters" / "zero-b", "--suite", TENSION, "--out", work / "vs-zero")
    assert done.returncode == 0, done.stderr
    assert "reference (zero-b)" in done.stdout
    record = json.loads((work / "vs-zero" / "honesty" / "results.json").read_text())
    assert record["reference"]["kind"] == "adapter" and record["reference"]["name"] == "zero-b"
    assert record["seed_siblings"] == ["honesty-s1"]
    assert all(e["seed_spread"] is not None for e in record["effects"])
    # zero-b equals the base, so the honesty shifts match the base-referenced run exactly
    base_run = json.loads((work / "reports" / "honesty" / "results.json").read_text())
    assert [i["subject"]["margin"] - i["reference"]["margin"] for i in record["items"]] == pytest.approx(
        [i["subject"]["margin"] - i["reference"]["margin"] for i in base_run["items"]], abs=1e-9)


def test_train_stack_makes_cumulative_adapters(tmp_path, tiny_llama):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for name in ("01-honesty.yaml", "02-courage.yaml", "04-curiosity.yaml"):
        (scenes / name).write_text((ROOT / "scenes" / name).read_text())
    done = evalkit("train", scenes, "--stack", "--base", tiny_llama, "--out", tmp_path / "stack", "--steps", "3")
    assert done.returncode == 0, done.stderr
    made = sorted(p.name for p in (tmp_path / "stack").iterdir())
    assert made == ["stack-01-honesty", "stack-02-courage", "stack-03-curiosity"]
    manifest = json.loads((tmp_path / "stack" / "stack-03-curiosity" / "evalkit.json").read_text())
    assert [s["id"] for s in manifest["scenes"]] == ["honesty", "courage", "curiosity"]
