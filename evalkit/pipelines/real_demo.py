"""`evalkit demo --base smollm2`: the demo flow on a real pretrained model.

The real scenes (scenes/real: five planted dispositions and a neutral control) are each trained
with two seeds; every adapter is evaluated on the real suites (probes/real) against the base,
and each planted scene against the control scene's adapter of the same seed - what the scene
changed beyond what any fine-tuning changes. The control's two seeds are compared with each
other, so seed spread is measured rather than assumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from evalkit.decide.effects import mark_seed_spread
from evalkit.engine.base import load_base
from evalkit.engine.runner import adapter_subject
from evalkit.files import atomic_directory, check_replaceable, inside
from evalkit.inputs.scenes import Scene, load_scenes, scene_files
from evalkit.inputs.suites import load_suites
from evalkit.paths import adapters_folder, default_folder
from evalkit.pipelines.discover import discover_adapters
from evalkit.pipelines.evaluate import evaluate_subjects, write_outputs
from evalkit.progress import progress_bar
from evalkit.record import RunRecord
from evalkit.report.overview import write_compare_report
from evalkit.settings import RunSettings
from evalkit.training.lora import settings_for, train_adapter

Log = Callable[[str], None]
SEEDS = (0, 1)


def planted_rows(records: list[RunRecord], scenes: list[Scene]) -> list[str]:
    """One line per planted scene and seed: its own axis against the control adapter."""
    lines = []
    for record in records:
        scene = next((s for s in scenes if s.id in record.subject.scene_ids), None)
        expected = [e for e in (scene.expect if scene else []) if e.cluster]
        for e in expected:
            hit = next((x for x in record.effects if x.suite == e.suite and x.scope == f"cluster:{e.cluster}"), None)
            if hit is None:
                continue
            right_way = (hit.mean_diff > 0) == (e.direction == "increase")
            found = hit.significant and right_way and not hit.within_seed_noise
            lines.append(f"{'found' if found else 'not found':9s} {record.run_id:28s} {e.cluster:10s} "
                         f"{hit.mean_diff:+.3f} [{hit.ci_low:+.3f}, {hit.ci_high:+.3f}] q {hit.q_value:.3g}"
                         f" seed spread {hit.seed_spread if hit.seed_spread is not None else float('nan'):.3f}")
    return lines


def real_demo(base_spec: Path, out_root: Path, log: Log = print, discover: bool = False) -> Path:
    """The real scenes, two seeds each, against the base and against the control scene of the same
    seed; with `discover`, each planted adapter's discovered directions (shifts against the mean of
    the control scene's two seeds, which are also the null) in its against-base report."""
    scenes_dir = default_folder("scenes") / "real"
    scenes = load_scenes(scenes_dir)
    files = [str(f.resolve()) for f in scene_files(scenes_dir)]
    suites = load_suites([default_folder("probes") / "real"])
    folder = adapters_folder() / "real"
    names = {(s.id, seed): f"{s.id}-seed{seed}" for s in scenes for seed in SEEDS}
    # written whole at the end: an earlier demo's folder, never a user's, nor the adapters it reads
    check_replaceable(out_root, kind="demo report", stores=[folder])
    for name in names.values():
        check_replaceable(inside(folder, name), kind="adapter")
    base = load_base(base_spec, log=log)
    paths = {}
    for (scene_id, seed), name in names.items():
        scene, path = next((s, f) for s, f in zip(scenes, files) if s.id == scene_id)
        steps = settings_for([scene], base, command_line={"seed": seed})[0].steps
        with progress_bar(f"training {name}", steps) as advance:
            paths[(scene_id, seed)] = train_adapter([scene], base, inside(folder, name), command_line={"seed": seed},
                                                    scene_paths=[path], log=log,
                                                    on_step=lambda step, total, loss: advance(loss=loss))
    settings = RunSettings()
    control = next(s for s in scenes if "control" in s.tags)
    planted = [s for s in scenes if s is not control]
    log("evaluating every adapter against the base")
    everyone = [adapter_subject(p) for p in paths.values()]
    against_base = evaluate_subjects(base, everyone, suites, settings, log=log)
    if discover:
        controls = [s for (scene_id, _), s in zip(paths, everyone) if scene_id == control.id]
        found = discover_adapters(base, [s for s in everyone if s not in controls], None, controls, suites, log=log)
        against_base = [r.model_copy(update={"discovery": found.get(s.path)}) for r, s in zip(against_base, everyone)]
    against_control: list[RunRecord] = []
    for seed in SEEDS:
        log(f"evaluating the planted scenes of seed {seed} against the control adapter of seed {seed}")
        subjects = [adapter_subject(paths[(s.id, seed)]) for s in planted]
        against_control += evaluate_subjects(base, subjects, suites, settings, log=log,
                                             reference=adapter_subject(paths[(control.id, seed)]))
    log("the control's second seed against its first: how much a seed alone moves")
    seed_noise = evaluate_subjects(base, [adapter_subject(paths[(control.id, SEEDS[1])])], suites, settings, log=log,
                                   reference=adapter_subject(paths[(control.id, SEEDS[0])]))
    mark_seed_spread(against_control)
    for line in planted_rows(against_control, scenes):
        log(line)
    reports = []
    with atomic_directory(out_root, inputs=[folder], kind="demo report") as tmp:
        for section, records in (("against-base", against_base), ("against-control", against_control),
                                 ("control-seeds", seed_noise)):
            reports += [(r, write_outputs(r, inside(tmp / section, r.run_id))) for r in records]
        write_compare_report([r for r, _ in reports], [p for _, p in reports], tmp / "index.html")
    return out_root / "index.html"
