"""bfloat16 against float32 on the demo: speed, margins, and whether any verdict changes.

Runs the demo's seven scene adapters (trained once, or reused from adapters/) on every shipped
suite twice, `--dtype float32` and `--dtype bfloat16`, with no score cache, and prints:
the wall time of each and the speed-up; the median, 99th percentile and largest |difference| of
every per-item margin (reference and subject sides); and every effect whose verdict (significant
or not, and the sign of a significant shift) differs between the two.

    .venv/bin/python benchmarks/bench_dtype.py [--base DIR]   # default: the demo base
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from evalkit.engine.base import load_base
from evalkit.engine.runner import adapter_subject
from evalkit.inputs.scenes import load_scene
from evalkit.inputs.suites import load_suites
from evalkit.paths import default_folder
from evalkit.pipelines.evaluate import evaluate_subjects
from evalkit.settings import RunSettings, TrainSettings
from evalkit.training.demo_base import ensure_demo_base
from evalkit.training.lora import train_adapter


def verdict(effect) -> tuple[bool, int]:
    return effect.significant, (1 if effect.mean_diff > 0 else -1) if effect.significant else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=None)
    args = parser.parse_args()
    base_dir = args.base or ensure_demo_base(log=lambda _: None)
    scene_files = sorted(default_folder("scenes").glob("*.yaml"))
    base = load_base(base_dir)
    adapters = [train_adapter([load_scene(f)], base, default_folder("adapters") / load_scene(f).id, TrainSettings(),
                              scene_paths=[str(f.resolve())], log=lambda _: None) for f in scene_files]
    subjects = [adapter_subject(a) for a in adapters]
    suites = load_suites([default_folder("probes")])
    runs, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        start = time.perf_counter()
        runs[dtype] = evaluate_subjects(load_base(base_dir, dtype), subjects, suites, RunSettings(dtype=dtype),
                                   log=lambda _: None, use_cache=False)
        seconds[dtype] = time.perf_counter() - start
    print(f"{len(subjects)} adapters + base, {len(suites)} suites: float32 {seconds['float32']:.1f} s, "
          f"bfloat16 {seconds['bfloat16']:.1f} s (speed-up {seconds['float32'] / seconds['bfloat16']:.2f}x)")
    diffs, flips, effects = [], [], 0
    for a, b in zip(runs["float32"], runs["bfloat16"]):
        for x, y in zip(a.items, b.items):
            for side in ("reference", "subject"):
                for key in ("margin", "ref_margin"):
                    if key in getattr(x, side):
                        diffs.append(abs(getattr(x, side)[key] - getattr(y, side)[key]))
        for e, f in zip(a.effects, b.effects):
            effects += 1
            if verdict(e) != verdict(f):
                flips.append(f"{a.run_id} {e.suite}/{e.metric} [{e.scope}]: fp32 q={e.q_value:.3f} "
                             f"diff={e.mean_diff:+.3f}, bf16 q={f.q_value:.3f} diff={f.mean_diff:+.3f}")
    p99 = statistics.quantiles(diffs, n=100)[98]
    print(f"margins: {len(diffs)} per-item values, |bf16 - fp32| median {statistics.median(diffs):.4f} nats, "
          f"99th percentile {p99:.3f}, max {max(diffs):.3f}")
    print(f"verdicts: {effects - len(flips)} of {effects} effects the same")
    for line in flips:
        print("  differs: " + line)


if __name__ == "__main__":
    main()
