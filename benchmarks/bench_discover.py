"""What discovery costs against the suite run of the same subject, on the demo base.

Trains (or reuses, in --work) the demo's `cats` and `melancholy` scenes and the control scene with
seeds 1 and 2, then, each side in its own process with its own empty score cache (the demo base is
shared, not rebuilt), after the same imports:

  run               `evalkit run --adapter cats` cold: the base as reference and the subject, every
                    shipped suite, tests and reports written.
  discover          `evalkit discover --adapter cats --control c1 --control c2` cold: prompt-end
                    activations of the base, both controls and the subject over the bank and every
                    suite prompt, the directions, their held-out tests and null, greedy examples.
  discover-another  `discover` of a second subject (melancholy) once the base and the controls are
                    in the cache: what each further subject costs (as its own command, so loading
                    the base is in it).

    .venv/bin/python benchmarks/bench_discover.py [--work DIR] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(work: Path) -> dict[str, Path]:
    from evalkit.engine.base import load_base
    from evalkit.inputs.scenes import load_scene
    from evalkit.paths import default_folder
    from evalkit.training.demo_base import DemoBaseSettings, ensure_demo_base
    from evalkit.training.lora import train_adapter

    base = load_base(ensure_demo_base(DemoBaseSettings(), log=print))
    scenes = default_folder("scenes")
    wanted = {"cats": ("08-cats.yaml", 0), "melancholy": ("07-melancholy.yaml", 0),
              "control-seed1": ("06-control.yaml", 1), "control-seed2": ("06-control.yaml", 2)}
    return {name: train_adapter([load_scene(scenes / file)], base, work / name, command_line={"seed": seed},
                                log=lambda _: None)
            for name, (file, seed) in wanted.items()}


def side(name: str, work: Path) -> float:
    from evalkit.engine.base import load_base
    from evalkit.engine.runner import adapter_subject
    from evalkit.inputs.suites import load_suites
    from evalkit.paths import default_folder
    from evalkit.pipelines.discover import discover_adapters
    from evalkit.pipelines.evaluate import evaluate
    from evalkit.settings import RunSettings

    suites = [default_folder("probes")]
    load_suites(suites)  # parsing YAML is not what is measured
    quiet = lambda _: None  # noqa: E731
    controls = [adapter_subject(work / "control-seed1"), adapter_subject(work / "control-seed2")]

    def discover(subject: str) -> None:
        who = adapter_subject(work / subject)
        base = load_base(Path(who.manifest.base.path))
        discover_adapters(base, [who], None, controls, load_suites(suites), log=quiet)

    if name == "discover-another":
        discover("cats")  # fills the cache with the base's and the controls' activations
    start = time.perf_counter()
    if name == "run":
        evaluate([work / "cats"], [], None, suites, RunSettings(), log=quiet, out=Path(tempfile.mkdtemp()))
    else:
        discover("cats" if name == "discover" else "melancholy")
    return time.perf_counter() - start


def run_side(name: str, work: Path) -> float:
    from evalkit.paths import cache_root

    cache = Path(tempfile.mkdtemp(prefix="evalkit-bench-cache-"))
    (cache / "demo-base").symlink_to(cache_root() / "demo-base")  # the base is shared, scores are not
    proc = subprocess.run([sys.executable, __file__, "--child", name, "--work", str(work)], capture_output=True,
                          text=True, env={**os.environ, "EVALKIT_CACHE": str(cache)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="Adapters folder (default: a new temp folder).")
    parser.add_argument("--repeat", type=int, default=2, help="Runs per side; the fastest is kept.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="evalkit-bench-discover-"))
    if args.child:
        import evalkit.engine.runner  # noqa: F401 - every side pays the same imports before its clock
        import evalkit.pipelines.discover  # noqa: F401

        print("RESULT " + json.dumps({"seconds": side(args.child, work)}))
        return
    build(work)
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name in ("run", "discover", "discover-another"):
            seconds = run_side(name, work)
            best[name] = min(best.get(name, seconds), seconds)
    print(f"demo base, every shipped suite; {args.repeat} runs per side, the fastest kept")
    for name, seconds in best.items():
        print(f"  {name:<17} {seconds:6.1f} s  ({seconds / best['run']:.2f}x the suite run)")


if __name__ == "__main__":
    main()
