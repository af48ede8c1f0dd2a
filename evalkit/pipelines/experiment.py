"""`evalkit experiment plan.yaml`: the scene workflow as one command.

One adapter per scene, cumulative stacks 1..k, leave-one-out stacks and scratch checkpoints,
all content-addressed (identical scenes + base + settings = the same folder, reused); every
model evaluated with one base load; one report: each scene's effects, the increment each
added scene brings (stack k against stack k-1, paired), what removing a scene undoes (the
full stack without it against the full stack), and LoRA beside scratch.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from evalkit.decide.effects import build_records
from evalkit.engine.base import Base, load_base
from evalkit.engine.paired import paired_run
from evalkit.engine.runner import Runner, Subject, adapter_subject, checkpoint_subject, model_ref
from evalkit.errors import EvalkitError
from evalkit.files import atomic_directory, check_replaceable, inside
from evalkit.inputs.plans import Resolved, ScratchPlan, load_plan
from evalkit.inputs.scenes import Scene
from evalkit.inputs.suites import load_suites
from evalkit.paths import adapters_folder
from evalkit.pipelines.discover import discover_adapters, read_prompts
from evalkit.record import PairedRun, RunRecord, manifest_key, write_record
from evalkit.report.overview import write_experiment_report
from evalkit.report.run_page import write_run_report
from evalkit.settings import RunSettings, ScratchSettings
from evalkit.training.demo_base import demo_base_dir, ensure_demo_base
from evalkit.training.loop import leading_token
from evalkit.training.lora import adapter_key, settings_for, train_adapter
from evalkit.training.scratch import read_corpus, scratch_key, train_scratch


@dataclass
class Planned:
    """One model the experiment needs."""

    label: str
    role: str  # scene | stack | without | named | scratch
    scenes: list[Scene]
    path: Path
    key: str
    reuse: bool
    k: int | None = None
    scratch: Optional[tuple[ScratchPlan, ScratchSettings, Optional[list[str]]]] = None
    subject: Subject | None = field(default=None, repr=False)


def plan_training(resolved: Resolved) -> dict:
    """The plan's `training:` block: it overrides the recipe, and a scene's own block overrides it."""
    return {k: v for k, v in resolved.plan.training.model_dump().items() if v is not None}


def plan_models(resolved: Resolved, base: Base | None, base_dir: Path, store: Path) -> list[Planned]:
    """Every model of the plan with its content key and whether a trained copy already exists."""
    plan = plan_training(resolved)
    scenes = resolved.scenes
    wanted: list[tuple[str, str, list[Scene], int | None]] = [(s.id, "scene", [s], None) for s in scenes]
    if resolved.plan.stacks.cumulative:
        wanted += [(f"stack-{k:02d}", "stack", scenes[:k], k) for k in range(2, len(scenes) + 1)]
    if resolved.plan.stacks.leave_one_out and len(scenes) > 2:
        wanted += [(f"without-{s.id}", "without", [o for o in scenes if o is not s], None) for s in scenes]
    wanted += [(name, "named", members, None) for name, members in resolved.named_stacks.items()]
    out = []
    for label, role, members, k in wanted:
        if base is None:
            out.append(Planned(label, role, members, store / "adapters" / "?", "?", False, k))
            continue
        key = adapter_key(members, base, settings_for(members, base, plan=plan)[0])
        path = store / "adapters" / key
        out.append(Planned(label, role, members, path, key, manifest_key(path) == key, k))
    for spec in resolved.plan.scratch:
        members = resolved.scratch_scenes[spec.name]
        with plan_field(resolved, f"scratch.{resolved.plan.scratch.index(spec)}.corpus"):
            corpus = read_corpus(resolved.rel(spec.corpus)) if spec.corpus else None
        s = ScratchSettings(steps=spec.steps, seed=spec.seed)
        lead = leading_token(base.tokenizer) if base is not None else None  # the tokenizer scratch trains with
        key = scratch_key(members, base_dir, s, corpus, spec.demo_stories, lead)
        path = store / "checkpoints" / f"{spec.name}-{key}"
        out.append(Planned(f"scratch-{spec.name}", "scratch", members, path, key,
                           manifest_key(path) == key, scratch=(spec, s, corpus)))
    return out


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False)


def _train(planned: list[Planned], base: Base, base_dir: Path, resolved: Resolved, console: Console) -> None:
    plan = plan_training(resolved)
    todo, seen = [], set()
    for p in planned:  # models with the same content share one folder: train it once
        if not p.reuse and p.path not in seen:
            seen.add(p.path)
            todo.append(p)
    if not todo:
        return
    labels: dict[Path, list[str]] = {}
    for p in planned:
        labels.setdefault(p.path, []).append(p.label)
    paths = dict(zip([s.id for s in resolved.scenes], resolved.scene_paths))
    with _progress(console) as progress:
        overall = progress.add_task("training", total=sum(
            p.scratch[1].steps if p.scratch else settings_for(p.scenes, base, plan=plan)[0].steps for p in todo))
        for p in todo:
            def step(*_: object) -> None:
                progress.advance(overall)

            if p.scratch:
                spec, s, corpus = p.scratch
                train_scratch(p.scenes, base_dir, p.path, s, corpus, spec.demo_stories, log=lambda _: None,
                              on_step=step)
            else:
                train_adapter(p.scenes, base, p.path, plan=plan, scene_paths=[paths[s.id] for s in p.scenes],
                              log=lambda line: console.print(line) if line.startswith("warning") else None,
                              reuse=False, on_step=step)
            for label in labels[p.path]:
                console.print(f"trained {p.role:8s} {label:24s} ({len(p.scenes)} scene(s)) -> {p.path}", soft_wrap=True)


def _evaluate(planned: list[Planned], resolved: Resolved, base: Base, suites, run_settings: RunSettings,
              console: Console) -> dict[str, list[PairedRun]]:
    """Score every model once on one base load; pair them as the report needs."""
    for p in planned:
        p.subject = checkpoint_subject(p.path) if p.role == "scratch" else adapter_subject(p.path)
        p.subject.name = p.label
    adapters = list({p.path: p.subject for p in planned if p.role != "scratch" and p.subject is not None}.values())
    runner = Runner(base, suites, run_settings, adapters)
    by_label = {p.label: p for p in planned}
    as_reference: dict[str, tuple] = {}
    sections: dict[str, list[PairedRun]] = {"scenes": [], "stacks": [], "increments": [], "removals": [],
                                            "named": [], "scratch": []}
    stacks = {p.k: p for p in planned if p.role == "stack" and p.k is not None}
    first = resolved.scenes[0].id
    if stacks:
        stacks[1] = by_label[first]
    full = stacks.get(len(resolved.scenes))
    pairs: list[tuple[str, Planned, Planned | None, str]] = []
    reference = None if resolved.plan.reference == "base" else by_label[resolved.plan.reference]
    for p in planned:
        section = {"scene": "scenes", "stack": "stacks", "named": "named", "scratch": "scratch"}.get(p.role)
        if section:
            pairs.append((section, p, reference if p.role == "scene" else None, p.label))
    for k in sorted(stacks):
        if k >= 2:
            pairs.append(("increments", stacks[k], stacks[k - 1], f"stack-{k:02d}-over-{k - 1:02d}"))
    for p in planned:
        if p.role == "without" and full is not None:
            pairs.append(("removals", p, full, p.label))

    def reference_of(ref: Planned | None) -> tuple:
        name = ref.label if ref else "base"
        if name not in as_reference:
            evaluated, fp, _ = runner.evaluate(ref.subject if ref else None)
            as_reference[name] = (evaluated, fp, model_ref(ref.subject if ref else None, base, fp))
        return as_reference[name]

    try:
        with _progress(console) as progress:
            task = progress.add_task("evaluating", total=len(pairs))
            for section, subject, ref, run_id in pairs:
                ref_evaluated, ref_fp, ref_model = reference_of(ref)
                evaluated, fp, counts = runner.evaluate(subject.subject, reference=(ref_evaluated, ref_fp))
                sections[section].append(paired_run(
                    run_id, ref_model, model_ref(subject.subject, base, fp), suites, ref_evaluated, evaluated,
                    run_settings, {"subject_computed": counts.computed, "subject_cached": counts.cached}))
                progress.advance(task)
    finally:
        runner.close()
    return sections


@contextmanager
def plan_field(resolved: Resolved, field: str) -> Iterator[None]:
    """A problem with a file the plan names (a suite, the base, a corpus) says which plan and field
    named it, then what is wrong with the file."""
    try:
        yield
    except EvalkitError as exc:
        raise EvalkitError(f"field '{field}': {exc.line()}", where=str(resolved.path)) from None


def run_experiment(plan_path: Path, out: Path | None, dry_run: bool, console: Console | None = None) -> Path | None:
    console = console or Console()
    if not console.is_terminal:  # logs and CI: wide enough that tables do not wrap
        console.width = max(console.width, 140)
    started = time.time()
    resolved = load_plan(plan_path)
    with plan_field(resolved, "suites"):
        suites = load_suites([resolved.rel(s) for s in resolved.plan.suites])
    out = out or Path("reports") / resolved.plan.name
    inputs = [plan_path, *map(Path, resolved.scene_paths),
              *([resolved.rel(resolved.plan.base)] if resolved.plan.base else []),
              *(resolved.rel(s) for s in resolved.plan.suites),
              *(resolved.rel(spec.corpus) for spec in resolved.plan.scratch if spec.corpus)]
    if resolved.plan.discover is not None and resolved.plan.discover.prompts:
        inputs.append(resolved.rel(resolved.plan.discover.prompts))
    store = _store()
    check_replaceable(out, inputs=inputs, kind="experiment report", stores=[store])
    if resolved.plan.discover is not None and resolved.plan.discover.prompts:
        with plan_field(resolved, "discover.prompts"):
            read_prompts(resolved.rel(resolved.plan.discover.prompts))
    base_dir = resolved.rel(resolved.plan.base) if resolved.plan.base else demo_base_dir()
    base = None
    if dry_run and not resolved.plan.base and not (base_dir / "evalkit-base.json").exists():
        console.print("the demo base is not built yet: it will be, and every model below trained")
    else:
        if not resolved.plan.base:
            base_dir = ensure_demo_base(log=console.print)
        with plan_field(resolved, "base"):
            base = load_base(base_dir)
    planned = plan_models(resolved, base, base_dir, store)
    _print_plan(planned, console)
    if dry_run:
        return None
    assert base is not None  # loaded unless this was a dry run
    _train(planned, base, base_dir, resolved, console)
    run_settings = RunSettings()
    paired = _evaluate(planned, resolved, base, suites, run_settings, console)
    # Each section is tested on its own: seed spread is measured among runs of one section.
    sections = {name: [(r.run_id, r) for r in build_records(runs, run_settings.stats)]
                for name, runs in paired.items()}
    if resolved.plan.discover is not None:
        sections["scenes"] = _discover(planned, resolved, base, suites, store, console, sections["scenes"])
    with atomic_directory(out, inputs=inputs, kind="experiment report") as tmp:  # whole: nothing stale survives
        for section, runs in sections.items():
            for run_id, record in runs:
                write_record(record, inside(tmp / section, run_id) / "results.json")
                write_run_report(record, inside(tmp / section, run_id) / "report.html")
        index = write_experiment_report(resolved.plan.name, sections, tmp / "index.html")
    _print_summary(planned, sections, console, time.time() - started)
    return out / index.name


def _discover(planned: list[Planned], resolved: Resolved, base: Base, suites, store: Path, console: Console,
              runs: list[tuple[str, RunRecord]]) -> list[tuple[str, RunRecord]]:
    """The plan's `discover:` block: every single scene's adapter against the control scene trained
    with the plan's seeds (the null), the reference as the plan names it."""
    spec = resolved.plan.discover
    assert spec is not None
    control = next(s for s in resolved.scenes if s.id == spec.control)
    path = dict(zip([s.id for s in resolved.scenes], resolved.scene_paths))[control.id]
    controls = []
    for seed in spec.seeds:
        settings = settings_for([control], base, plan=plan_training(resolved), command_line={"seed": seed})[0]
        folder = store / "adapters" / adapter_key([control], base, settings)
        controls.append(adapter_subject(train_adapter([control], base, folder, plan=plan_training(resolved),
                                                      command_line={"seed": seed}, scene_paths=[path],
                                                      log=lambda _: None)))
    scenes = {p.label: p for p in planned if p.role == "scene" and p.subject is not None}
    reference = None if resolved.plan.reference == "base" else scenes[resolved.plan.reference].subject
    taken = {c.path for c in controls} | ({reference.path} if reference else set())
    subjects = [p.subject for p in scenes.values() if p.subject is not None and p.subject.path not in taken]
    prompts = resolved.rel(spec.prompts) if spec.prompts else None
    found = discover_adapters(base, subjects, reference, controls, suites, prompts, log=console.print)
    by_label = {label: found.get(p.subject.path) for label, p in scenes.items() if p.subject is not None}
    return [(run_id, record.model_copy(update={"discovery": by_label.get(run_id)})) for run_id, record in runs]


def _store() -> Path:
    """Where trained models live: under ./adapters, addressed by content."""
    return adapters_folder() / "store"


def _print_plan(planned: list[Planned], console: Console) -> None:
    table = Table(title="experiment plan", show_lines=False)
    for column in ("model", "role", "scenes", "status"):
        table.add_column(column)
    for p in planned:
        table.add_row(p.label, p.role, str(len(p.scenes)), "reuse" if p.reuse else "train")
    console.print(table)
    console.print(f"{sum(not p.reuse for p in planned)} to train, {sum(p.reuse for p in planned)} reused")


def _print_summary(planned, sections, console: Console, seconds: float) -> None:
    table = Table(title=f"experiment done in {seconds:.0f} s")
    for column in ("section", "run", "reference", "significant effects", "largest cluster shift"):
        table.add_column(column)
    for section, runs in sections.items():
        for run_id, r in runs:
            clusters = [e for e in r.effects if e.scope.startswith("cluster:") and e.significant]
            top = max(clusters, key=lambda e: abs(e.mean_diff), default=None)
            table.add_row(section, run_id, r.reference.name, str(sum(e.significant for e in r.effects)),
                          f"{top.suite}/{top.scope[8:]} {top.mean_diff:+.2f}" if top else "")
    console.print(table)
