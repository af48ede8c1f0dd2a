"""A built wheel carries everything `evalkit demo` needs (bundled probes and scenes, templates,
the default gate policy): installed outside the checkout, it runs the quick demo from another
folder. The wheel is installed without dependencies into its own folder, put first on the path,
and uses this environment's torch, transformers, peft and lm-eval."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_runs_the_quick_demo_from_another_folder(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    done = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                           str(ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("evalkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("evalkit/bundled/probes/tension.yaml", "evalkit/bundled/scenes/06-control.yaml",
                   "evalkit/bundled/scenes/more/08-diligence.yaml", "evalkit/report/templates/run.html.j2",
                   "evalkit/decide/policies/default.yaml", "evalkit/py.typed"):
        assert needed in names, needed
    done = subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "EVALKIT_CACHE": str(tmp_path / "cache")}
    where = subprocess.run([sys.executable, "-c", "import evalkit.paths as p; print(p.bundled('probes'))"],
                           capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)
    assert where.stdout.strip().startswith(str(tmp_path / "site")), where.stdout + where.stderr
    done = subprocess.run([sys.executable, "-m", "evalkit", "demo", "--quick", "--out", "reports"],
                          capture_output=True, text=True, cwd=elsewhere, env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "reports" / "index.html").is_file()
    assert (elsewhere / "adapters" / "quick" / "honesty" / "evalkit.json").is_file()
