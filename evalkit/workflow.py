"""The library functions the CLI is thin over: train, run, demo. Each validates all input
before it writes anything."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from evalkit.adapter import TrainSettings, train_adapter, train_stack
from evalkit.errors import EvalkitError
from evalkit.models import load_base, read_manifest
from evalkit.paths import project_root
from evalkit.probe import load_suites
from evalkit.record import RunRecord, write_record
from evalkit.report import write_compare_report, write_run_report
from evalkit.run import RunSettings, Subject, adapter_subject, checkpoint_subject, run_subjects
from evalkit.scene import load_scenes, scene_files

Log = Callable[[str], None]


def default_folder(name: str) -> Path:
    """`./<name>` when it exists, else the checkout's bundled one."""
    here = Path.cwd() / name
    return here if here.is_dir() else project_root() / name


def train(scene_path: Path, base_dir: Path, out: Path | None, stack: bool, settings: TrainSettings,
          log: Log = print) -> list[Path]:
    scenes = load_scenes(scene_path)
    files = [str(f.resolve()) for f in scene_files(scene_path)]
    if stack and not scene_path.is_dir():
        raise EvalkitError("--stack needs a folder of scenes", where=str(scene_path))
    if out is not None and len(scenes) > 1 and not stack:
        raise EvalkitError("--out names one adapter, but the folder holds several scenes", where=str(scene_path))
    base = load_base(base_dir)
    if stack:
        return train_stack(scenes, base, out or Path("adapters") / "stack", settings, log=log)
    return [train_adapter([s], base, out or Path("adapters") / s.id, settings, scene_paths=[f], log=log)
            for s, f in zip(scenes, files)]


def base_of(adapters: list[Path]) -> Path:
    """The base named by the adapters' manifests (they must agree)."""
    paths = {read_manifest(a).get("base", {}).get("path") for a in adapters}
    if len(paths) != 1 or None in paths:
        raise EvalkitError("the adapters name different bases; pass --base")
    return Path(paths.pop())


def subjects_from(adapters: list[Path], checkpoints: list[Path]) -> list[Subject]:
    return [*(adapter_subject(a) for a in adapters), *(checkpoint_subject(c) for c in checkpoints)]


def run(adapters: list[Path], checkpoints: list[Path], base_dir: Path | None, suite_paths: list[Path],
        out_root: Path, settings: RunSettings, reference: Path | None = None, log: Log = print,
        use_cache: bool = True) -> list[Path]:
    """Validate everything, load the base once, score reference and subjects, write one report each."""
    if not adapters and not checkpoints:
        raise EvalkitError("give at least one --adapter or --checkpoint")
    suites = load_suites(suite_paths)
    subjects = subjects_from(adapters, checkpoints)
    ref_subject = None
    if reference is not None:
        ref_subject = checkpoint_subject(reference) if (reference / "config.json").is_file() else adapter_subject(reference)
    if base_dir is None:
        with_manifest = [s.path for s in subjects if s.kind == "adapter"]
        if not with_manifest:
            raise EvalkitError("--checkpoint needs --base: the model it is compared against")
        base_dir = base_of(with_manifest)
    base = load_base(base_dir, settings.dtype, settings.device)
    records = run_subjects(base, subjects, suites, settings, reference=ref_subject, log=log, use_cache=use_cache)
    return [write_outputs(r, out_root / r.run_id) for r in records]


def write_outputs(record: RunRecord, folder: Path) -> Path:
    write_record(record, folder / "results.json")
    return write_run_report(record, folder / "report.html")


def compare(results: list[Path], out: Path) -> Path:
    """The compare report over existing runs (results.json files, run folders, or folders of them)."""
    from evalkit.record import read_record

    found: list[Path] = []
    for path in results:
        if path.is_file():
            found.append(path)
        elif (path / "results.json").is_file():
            found.append(path / "results.json")
        elif path.is_dir():
            found += sorted(path.glob("*/results.json"))
        else:
            raise EvalkitError("no such results file or run folder", where=str(path))
    if not found:
        raise EvalkitError("no results.json found", where=", ".join(map(str, results)))
    records = [read_record(p) for p in found]
    return write_compare_report(records, [p.parent / "report.html" for p in found], out)


def demo(out_root: Path, quick: bool = False, adapters_dir: Path | None = None, log: Log = print) -> Path:
    """Build or reuse the demo base, train or reuse the bundled scenes, run every suite.

    `quick` runs the same path with a smaller base and shorter training (for smoke tests).
    """
    from evalkit.demo_base import QUICK, DemoBaseSettings, ensure_demo_base

    scenes_dir, probes_dir = default_folder("scenes"), default_folder("probes")
    scenes = load_scenes(scenes_dir)
    files = [str(f.resolve()) for f in scene_files(scenes_dir)]
    suites = load_suites([probes_dir])
    base = load_base(ensure_demo_base(QUICK if quick else DemoBaseSettings(), log=log))
    train = replace(TrainSettings(), steps=10) if quick else TrainSettings()
    folder = adapters_dir or default_folder("adapters") / ("quick" if quick else "")
    adapters = [train_adapter([s], base, folder / s.id, train, scene_paths=[f], log=log) for s, f in zip(scenes, files)]
    records = run_subjects(base, [adapter_subject(a) for a in adapters], suites, RunSettings(), log=log)
    reports = [write_outputs(r, out_root / r.run_id) for r in records]
    return write_compare_report(records, reports, out_root / "index.html")


def rerender(results: Path) -> Path:
    from evalkit.record import read_record

    return write_run_report(read_record(results), results.parent / "report.html")



def calibrate(base_dir: Path | None, datasets: int, seed: int, out: Path, log: Log = print) -> bool:
    """(a) null subjects, (b) simulated null data, (c) a planted scene; figures to `out`/calibration.json."""
    from evalkit.calibrate import null_subjects, planted_effect, simulated
    from evalkit.demo_base import ensure_demo_base
    from evalkit.files import write_json_atomic

    suites = load_suites([default_folder("probes")])
    scenes_dir = default_folder("scenes")
    tagged = list(zip(load_scenes(scenes_dir), [str(f.resolve()) for f in scene_files(scenes_dir)]))
    planted = [(s, f) for s, f in tagged if "planted" in s.tags]
    control = [(s, f) for s, f in tagged if "control" in s.tags]
    if not planted or not control:
        raise EvalkitError("calibration needs a scene tagged 'planted' and one tagged 'control'", where=str(scenes_dir))
    base = load_base(base_dir or ensure_demo_base(log=log))
    settings = RunSettings()
    work = default_folder("adapters") / "calibration"
    log("(a) null subjects: nothing changed, so nothing may be significant")
    figures: dict = {"null_subjects": null_subjects(base, suites, work, settings, log)}
    log(f"(b) {datasets} simulated null data sets per design (seed {seed}); 'ok' = 95% CI covers or lies below alpha")
    figures["simulated"] = simulated(datasets, seed, settings.stats.alpha, log)
    log(f"(c) planted scene '{planted[0][0].id}' against control scene '{control[0][0].id}', seeds 0, 1, 2")
    figures["planted"] = planted_effect(base, planted[0], control[0], suites, work, settings, (0, 1, 2), log)
    ok = (all(f["ok"] for f in figures["null_subjects"].values()) and figures["simulated"]["ok"]
          and figures["planted"]["ok"])
    write_json_atomic(out / "calibration.json", {"ok": ok, **figures})
    log(f"calibration {'passed' if ok else 'FAILED'}; figures in {out / 'calibration.json'}")
    return ok


def gate(baseline: Path, candidate: Path, policy_path: Path | None, junit: Path | None, summary: Path | None,
         log: Log = print) -> bool:
    """Decide, print a line per check, write JUnit and Markdown; True when nothing regressed."""
    import os

    from evalkit.gate import decide, load_policy, write_outputs
    from evalkit.record import read_record

    policy = load_policy(policy_path)
    base, cand = read_record(baseline), read_record(candidate)
    outcomes = decide(base, cand, policy, where=f"{baseline} vs {candidate}")
    for o in outcomes:
        log(o.line())
    summary = summary or (Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None)
    write_outputs(outcomes, str(baseline), str(candidate), junit, summary)
    failed = [o.name for o in outcomes if o.failed]
    log(f"gate: {'FAILED: ' + ', '.join(failed) if failed else 'passed'} ({len(outcomes)} checks)")
    return not failed
