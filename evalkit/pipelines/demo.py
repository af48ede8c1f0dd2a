"""`evalkit demo`: the embedded default end to end. Build (or reuse) the demo base, train the
bundled scenes, evaluate every suite, write a report per scene and the compare index."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from evalkit.engine.base import load_base
from evalkit.engine.runner import adapter_subject
from evalkit.files import atomic_directory, check_replaceable, inside
from evalkit.inputs.scenes import load_scenes, scene_files
from evalkit.inputs.suites import load_suites
from evalkit.paths import adapters_folder, default_folder
from evalkit.pipelines.discover import discover_adapters
from evalkit.pipelines.evaluate import evaluate_subjects, write_outputs
from evalkit.report.overview import write_compare_report
from evalkit.settings import RunSettings
from evalkit.training.demo_base import QUICK, DemoBaseSettings, ensure_demo_base
from evalkit.training.lora import train_adapter

Log = Callable[[str], None]


# `demo --discover`: the control scene trained again with these seeds is the discovery null.
CONTROL_SEEDS = (1, 2)


def demo(out_root: Path, quick: bool = False, adapters_dir: Optional[Path] = None, log: Log = print,
         discover: bool = False) -> Path:
    """Build or reuse the demo base, train or reuse the bundled scenes, run every suite.

    `quick` runs the same path with a smaller base and shorter training (for smoke tests).
    `discover` also looks for directions of change no probe declared in every scene's adapter,
    against the control scene trained with two more seeds.
    """
    scenes_dir, probes_dir = default_folder("scenes"), default_folder("probes")
    scenes = load_scenes(scenes_dir)
    files = [str(f.resolve()) for f in scene_files(scenes_dir)]
    suites = load_suites([probes_dir])
    folder = adapters_dir or adapters_folder() / ("quick" if quick else "")
    # written whole at the end: an earlier demo's folder, never a user's, nor the adapters it reads
    check_replaceable(out_root, kind="demo report", stores=[folder])
    control = next((s for s in scenes if "control" in s.tags), None) if discover else None
    control_dirs = [inside(folder, f"{control.id}-seed{seed}") for seed in CONTROL_SEEDS] if control else []
    for target in [*(inside(folder, s.id) for s in scenes), *control_dirs]:
        check_replaceable(target, kind="adapter")
    base = load_base(ensure_demo_base(QUICK if quick else DemoBaseSettings(), log=log))
    quick_steps = {"steps": 10} if quick else {}
    adapters = [train_adapter([s], base, inside(folder, s.id), command_line=quick_steps, scene_paths=[f], log=log)
                for s, f in zip(scenes, files)]
    subjects = [adapter_subject(a) for a in adapters]
    records = evaluate_subjects(base, subjects, suites, RunSettings(), log=log)
    if control is not None:
        controls = [adapter_subject(train_adapter([control], base, out, command_line={**quick_steps, "seed": seed},
                                                  scene_paths=[files[scenes.index(control)]], log=log))
                    for seed, out in zip(CONTROL_SEEDS, control_dirs)]
        found = discover_adapters(base, subjects, None, controls, suites, log=log)
        records = [r.model_copy(update={"discovery": found[s.path]}) for r, s in zip(records, subjects)]
    with atomic_directory(out_root, inputs=[folder], kind="demo report") as tmp:
        reports = [write_outputs(r, inside(tmp, r.run_id)) for r in records]
        write_compare_report(records, reports, tmp / "index.html")
    return out_root / "index.html"
