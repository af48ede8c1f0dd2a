"""`evalkit calibrate`: the harness proves it does not cry wolf, and that it finds a planted effect.

(a) null subjects on a real model: the base against itself and an untrained LoRA (B = 0);
(b) simulated null data sets (decide/null_rates.py): false-positive rates of every default procedure;
(c) a scene built to move one novel axis of the demo base, trained with several seeds and
    compared with the neutral control scene: found on that axis in the expected direction, and
    nothing on the control axes beyond seed noise;
(d) discovery's null: the control scene trained with 3 x N seeds, N disjoint comparisons of one
    seed against two others as its controls: how often a direction is called a finding (at most 5%);
(e) discovery of planted scenes against two control seeds: the scene that moves a declared axis
    gives a finding matching that axis, the scene that plants what no probe asks about a new one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from scipy.stats import binomtest

from evalkit.decide.discovery import NULL_RATIO
from evalkit.decide.effects import build_records
from evalkit.decide.null_rates import null_rates, print_rates
from evalkit.engine.base import Base, load_base
from evalkit.engine.paired import evaluate_paired
from evalkit.engine.runner import Subject, adapter_subject, checkpoint_subject
from evalkit.errors import EvalkitError
from evalkit.files import CALIBRATION_SIGNATURE, check_file_replaceable, write_json_atomic
from evalkit.inputs.scenes import Scene, load_scenes, scene_files
from evalkit.inputs.suites import LoadedSuite, load_suites
from evalkit.kinds.novel_axis import NovelAxisSuite
from evalkit.paths import cache_root, default_folder
from evalkit.pipelines.discover import discover_adapters
from evalkit.pipelines.evaluate import evaluate_subjects
from evalkit.progress import progress_bar
from evalkit.settings import RunSettings
from evalkit.training.demo_base import ensure_demo_base
from evalkit.training.lora import train_adapter, untrained_adapter

Log = Callable[[str], None]


def null_subjects(base: Base, suites: list[LoadedSuite], work: Path, settings: RunSettings, log: Log) -> dict:
    """(a) Subjects that change nothing must give p = 1 everywhere and no significant effect."""
    zero = untrained_adapter(base, work / "untrained-lora")
    records = evaluate_subjects(base, [checkpoint_subject(Path(base.path)), adapter_subject(zero)], suites, settings,
                                log=lambda _: None, use_cache=False)
    out = {}
    for label, record in zip(("base vs itself", "untrained LoRA (B = 0)"), records):
        identical = all(i.reference == i.subject for i in record.items)
        figures = {"effects": len(record.effects), "significant": sum(e.significant for e in record.effects),
                   "min_p": min((e.p_value for e in record.effects if e.p_value is not None), default=1.0),
                   "items_identical": identical}
        figures["ok"] = figures["significant"] == 0 and figures["min_p"] == 1.0 and identical
        log(f"{'ok ' if figures['ok'] else 'FAIL'} {label:24s} {figures['effects']} effects, "
            f"{figures['significant']} significant, smallest p {figures['min_p']:.3f}, "
            f"all {len(record.items)} items identical: {identical}")
        out[label] = figures
    return out


def planted_axis(scene: Scene) -> tuple[str, str, str]:
    for e in scene.expect:
        if e.cluster is not None:
            return e.suite, e.cluster, e.direction
    raise EvalkitError("the planted scene must expect a cluster (a novel axis) to move", where=scene.id)


def planted_effect(base: Base, planted: tuple[Scene, str], control: tuple[Scene, str], suites: list[LoadedSuite],
                   work: Path, settings: RunSettings, seeds: tuple[int, ...], log: Log) -> dict:
    """(c) The planted scene against the neutral control scene, seed for seed.

    Any LoRA nudges every axis a little, and items of one axis are near-clones, so a shift of
    0.05 nats can be 'significant' on them. What the scene itself changed is what it changes
    beyond fine-tuning on neutral text (the control scene, same seed, as reference), and only
    where that exceeds the seed-to-seed spread of the planted scene's own adapters.
    """
    scene, scene_path = planted
    suite_name, axis, direction = planted_axis(scene)
    suite = next((s for s in suites if s.name == suite_name), None)
    if suite is None or not isinstance(suite.spec, NovelAxisSuite):
        raise EvalkitError(f"no novel_axis suite named '{suite_name}' among the probes", where=scene.id)
    controls = sorted(a for a, text in suite.spec.axes.items() if "control" in text)
    runs = []
    for seed in seeds:
        train = {"seed": seed}
        subject = train_adapter([scene], base, work / f"{scene.id}-seed{seed}", command_line=train,
                                scene_paths=[scene_path], log=log)
        reference = train_adapter([control[0]], base, work / f"{control[0].id}-seed{seed}", command_line=train,
                                  scene_paths=[control[1]], log=log)
        runs += evaluate_paired(base, [adapter_subject(subject)], [suite], settings,
                                reference=adapter_subject(reference), log=lambda _: None)
    records = build_records(runs, settings.stats)  # the seeds of one scene: their spread is measured
    rows, ok = [], True
    for seed, record in zip(seeds, records):
        effects = {e.scope.removeprefix("cluster:"): e for e in record.effects if e.scope.startswith("cluster:")}
        hit = effects[axis]
        right_way = (hit.mean_diff < 0) == (direction == "decrease")
        found = hit.significant and right_way and not hit.within_seed_noise
        false_alarms = [a for a in controls if effects[a].significant and not effects[a].within_seed_noise]
        ok = ok and found and not false_alarms
        rows.append({"seed": seed, "axis": axis, "shift": hit.mean_diff, "ci": [hit.ci_low, hit.ci_high],
                     "mde": hit.mde, "control_mde": {a: effects[a].mde for a in controls},
                     "q": hit.q_value, "verdict": hit.verdict, "seed_spread": hit.seed_spread, "found": found,
                     "controls": {a: {"shift": effects[a].mean_diff, "q": effects[a].q_value,
                                      "significant": effects[a].significant, "seed_spread": effects[a].seed_spread,
                                      "within_seed_noise": effects[a].within_seed_noise} for a in controls},
                     "false_alarms": false_alarms})
        log(f"{'ok ' if found and not false_alarms else 'FAIL'} seed {seed}: {axis} shift {hit.mean_diff:+.3f} "
            f"[{hit.ci_low or 0:+.3f}, {hit.ci_high or 0:+.3f}] q {hit.q_value or 1:.2g} (MDE {hit.mde or 0:.3f}), "
            f"seed spread {hit.seed_spread or 0:.3f}; "
            "control axes " + ", ".join(
                f"{a} {effects[a].mean_diff:+.3f} q {effects[a].q_value:.2g}"
                + (" (within seed spread {:.3f})".format(effects[a].seed_spread or 0.0)
                   if effects[a].significant and effects[a].within_seed_noise else "")
                for a in controls))
    return {"scene": scene.id, "reference": f"{control[0].id} adapter, same seed", "axis": axis,
            "direction": direction, "controls": controls, "seeds": rows, "ok": ok}


def simulated(datasets: int, seed: int, alpha: float, log: Log) -> dict[str, Any]:
    """(b) False-positive rates on simulated null data, with 95% binomial CIs."""
    rates = null_rates(datasets=datasets, alpha=alpha, seed=seed)
    ok = print_rates(rates, alpha, log)
    return {"ok": ok, "datasets": datasets, "seed": seed, "rates": [
        {"design": r.design, "n": r.n, "procedure": r.procedure, "default": r.default, "rate": r.rate,
         "ci": list(r.ci), "passes": r.passes(alpha)} for r in rates]}



def discovery_null(base: Base, control: tuple[Scene, str], suites: list[LoadedSuite], work: Path, count: int,
                   log: Log) -> tuple[dict, list[Subject]]:
    """(d) `count` comparisons of the control scene with itself: comparison i takes seed 3i as the
    subject and seeds 3i + 1, 3i + 2 as its controls, so no adapter is in two comparisons and
    they are independent (what the binomial CI assumes). Nothing but a seed differs, so every
    finding is a false positive."""
    controls = []
    with progress_bar(f"training {3 * count} control seeds", 3 * count) as advance:
        for s in range(3 * count):
            controls.append(adapter_subject(train_adapter([control[0]], base, work / f"{control[0].id}-seed{s}",
                                                          command_line={"seed": s}, scene_paths=[control[1]],
                                                          log=lambda _: None)))
            advance()
    rows, largest = [], 0.0
    for i in range(count):
        subject, others = controls[3 * i], controls[3 * i + 1 : 3 * i + 3]
        record = discover_adapters(base, [subject], None, others, suites, log=lambda _: None,
                                   examples=False)[subject.path]
        ratios = [d.null_ratio for d in record.directions if d.null_ratio is not None]
        largest = max([largest, *ratios])
        rows.append({"subject_seed": 3 * i, "control_seeds": [3 * i + 1, 3 * i + 2],
                     "found": [d.name for d in record.directions if d.found], "largest_ratio": max(ratios, default=0.0),
                     "replicating": sum(d.replicates for d in record.directions)})
    hits = sum(bool(r["found"]) for r in rows)
    ci = binomtest(hits, count).proportion_ci(confidence_level=0.95, method="exact")
    ok = hits / count <= 0.05
    log(f"{'ok ' if ok else 'FAIL'} {hits} of {count} control-vs-control comparisons called a finding: rate "
        f"{hits / count:.3f} [exact 95% CI {ci.low:.3f}, {ci.high:.3f}] (at most 0.05 passes); largest ratio to the "
        f"null {largest:.2f} (a finding needs {NULL_RATIO:g})")
    return {"comparisons": count, "seeds": 3 * count, "findings": hits, "rate": hits / count, "ci": [ci.low, ci.high],
            "ok": ok, "null_ratio_required": NULL_RATIO, "rows": rows}, controls


def discovery_planted(base: Base, planted: list[tuple[Scene, str]], controls: list[Subject],
                      suites: list[LoadedSuite], work: Path, log: Log) -> dict:
    """(e) Each planted scene (seed 0) against two control seeds: a scene that expects a novel axis
    to move must give a finding matching it; a scene tagged 'undeclared', a finding that is new."""
    out, ok = {}, True
    for scene, path in planted:
        subject = adapter_subject(train_adapter([scene], base, work / f"{scene.id}-seed0", command_line={"seed": 0},
                                                scene_paths=[path], log=lambda _: None))
        record = discover_adapters(base, [subject], None, controls, suites, log=lambda _: None)[subject.path]
        axes = {e.cluster for e in scene.expect if e.cluster}
        findings = [d for d in record.directions if d.found]
        wanted = ([d for d in findings if d.matches in axes] if axes
                  else [d for d in findings if d.matches is None] if "undeclared" in scene.tags else findings)
        ok = ok and bool(wanted)
        for d in record.directions:
            log(f"{'ok ' if d in wanted else '   '} {scene.id}: {d.name}: {d.reading} "
                f"Label: {', '.join(repr(t) for t in d.promoted[:6])}.")
        out[scene.id] = {"expects": sorted(axes) or ("new" if "undeclared" in scene.tags else "anything"),
                         "ok": bool(wanted), "directions": [d.model_dump() for d in record.directions]}
    return {"ok": ok, "scenes": out}


def calibrate(base_dir: Optional[Path], datasets: int, seed: int, out: Path, log: Log = print,
              null_comparisons: int = 22) -> bool:
    """(a) null subjects, (b) simulated null data, (c) a planted scene; figures to `out`/calibration.json."""
    suites = load_suites([default_folder("probes")])
    check_file_replaceable(out / "calibration.json", CALIBRATION_SIGNATURE)
    scenes_dir = default_folder("scenes")
    tagged = list(zip(load_scenes(scenes_dir), [str(f.resolve()) for f in scene_files(scenes_dir)]))
    planted = [(s, f) for s, f in tagged if "planted" in s.tags]
    control = [(s, f) for s, f in tagged if "control" in s.tags]
    if not planted or not control:
        raise EvalkitError("calibration needs a scene tagged 'planted' and one tagged 'control'", where=str(scenes_dir))
    base = load_base(base_dir or ensure_demo_base(log=log))
    settings = RunSettings()
    # its ~70 adapters are evalkit's own working material, reused by the next calibration: the
    # cache holds them, so nothing is written outside --out but calibration.json
    work = cache_root() / "calibration-adapters" / base.fingerprint[:16]
    log("(a) null subjects: nothing changed, so nothing may be significant")
    figures: dict = {"null_subjects": null_subjects(base, suites, work, settings, log)}
    log(f"(b) {datasets} simulated null data sets per design (seed {seed}); 'ok' = 95% CI covers or lies below alpha")
    figures["simulated"] = simulated(datasets, seed, settings.stats.alpha, log)
    axis_scene = next((p for p in planted if any(e.cluster for e in p[0].expect)), planted[0])
    log(f"(c) planted scene '{axis_scene[0].id}' against control scene '{control[0][0].id}', seeds 0, 1, 2")
    figures["planted"] = planted_effect(base, axis_scene, control[0], suites, work, settings, (0, 1, 2), log)
    log(f"(d) discovery's null: {3 * null_comparisons} seeds of '{control[0][0].id}', {null_comparisons} disjoint "
        "comparisons of one seed against two others")
    figures["discovery_null"], controls = discovery_null(base, control[0], suites, work, null_comparisons, log)
    log(f"(e) discovery of the planted scenes against control seeds {controls[1].path.name}, {controls[2].path.name}")
    figures["discovery_planted"] = discovery_planted(base, planted, controls[1:3], suites, work, log)
    ok = (all(f["ok"] for f in figures["null_subjects"].values()) and figures["simulated"]["ok"]
          and figures["planted"]["ok"] and figures["discovery_null"]["ok"] and figures["discovery_planted"]["ok"])
    write_json_atomic(out / "calibration.json", {"$comment": "written by evalkit calibrate", "ok": ok, **figures})
    log(f"calibration {'passed' if ok else 'FAILED'}; figures in {out / 'calibration.json'}")
    return ok
