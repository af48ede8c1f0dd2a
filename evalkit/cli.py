"""The command line: each command parses, calls one library function, prints. Errors the
user can fix are one line on stderr and exit code 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import BaseModel, ValidationError
from typer.core import TyperGroup

from evalkit.errors import EvalkitError
from evalkit.offline import go_offline, quiet_progress_bars

# typer vendors click; its UsageError (bad values, unknown options and commands) is BadParameter's base.
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _usage_line(exc: Any) -> str:
    ctx = getattr(exc, "ctx", None)
    command = f"{ctx.info_name}: " if ctx is not None and ctx.parent is not None else ""  # the subcommand
    return " ".join(f"{command}{exc.format_message()} (see --help)".split())


class _Commands(TyperGroup):
    """Every command's input errors become one line on stderr and exit code 2, whether evalkit
    runs as a program or in-process (typer's CliRunner in the tests)."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context
        try:
            return super().invoke(ctx)
        except EvalkitError as exc:
            _fail(ctx, exc.line())
        except _UsageError as exc:  # a bad option value, an unknown option: one line, not click's usage block
            _fail(ctx, _usage_line(exc))
        except OSError as exc:  # a path the system refuses (too long a name, no permission, a device error)
            if exc.filename is None:
                raise
            _fail(ctx, f"{exc.filename}: {exc.strerror or exc}")

    def make_context(self, *args: Any, **kwargs: Any) -> Any:  # the group's own options (`evalkit --bogus`)
        try:
            return super().make_context(*args, **kwargs)
        except _UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # plain `evalkit`: the help, as click shows it
                raise
            typer.echo(f"evalkit: error: {_usage_line(exc)}", err=True)
            raise SystemExit(2) from None


def _fail(ctx: Any, line: str) -> None:
    typer.echo(f"evalkit: error: {' '.join(line.split())}", err=True)
    ctx.exit(2)


app = typer.Typer(cls=_Commands, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  no_args_is_help=True, help="evalkit: what did this scene change?")


def _say(message: str) -> None:
    typer.echo(message)


# Settings whose option is not named after the field.
OPTION_NAMES = {"learning_rate": "--lr"}


def _settings(model: type[BaseModel], **values: Any) -> Any:
    """Settings from command-line values; a value out of range names its option."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][-1])
        option = OPTION_NAMES.get(field, "--" + field.replace("_", "-"))
        expected = err.get("ctx", {}).get("expected")
        message = f"expected {expected}" if expected else err["msg"].removeprefix("Value error, ")
        raise EvalkitError(f"{option} {err.get('input')!r}: {message}") from None


@app.command()
def validate(paths: list[Path] = typer.Argument(..., help="Scene or probe files, or folders of them.")) -> None:
    """Check scene and probe files; report the first problem of each file with file, item and field."""
    from evalkit.inputs.validate import validate_paths

    for line in validate_paths(paths):
        _say(line)


@app.command()
def train(
    scenes: Path = typer.Argument(..., help="A scene file, or a folder of scenes."),
    base: Optional[Path] = typer.Option(None, help="Base model folder (default: the embedded demo base)."),
    out: Optional[Path] = typer.Option(None, help="Adapter folder (default: adapters/<scene id>)."),
    stack: bool = typer.Option(False, help="Train cumulative adapters for scenes 1..k of a folder."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (at most; see --stop-loss)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="AdamW learning rate."),
    rank: Optional[int] = typer.Option(None, help="LoRA rank r."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha (the update is scaled by alpha / r)."),
    batch_size: Optional[int] = typer.Option(None, help="Windows of the scene per step."),
    block: Optional[int] = typer.Option(None, help="Tokens per window."),
    targets: Optional[str] = typer.Option(None, help="Comma-separated module names LoRA goes on."),
    dtype: Optional[str] = typer.Option(None, help="float32, or bfloat16 (CPU autocast; weights stay float32)."),
    stop_loss: Optional[float] = typer.Option(None, help="Stop once the mean loss of the last 5 steps is below this."),
    damage_budget: Optional[float] = typer.Option(None, help="Stop, keeping the last state within it, once general "
                                                  "English is this much worse (nats/token)."),
    seed: Optional[int] = typer.Option(None, help="Training seed."),
) -> None:
    """Train one LoRA adapter per scene (or a stack), seeded, with an evalkit manifest.

    Settings: the recipe for the base's size (the demo base's, or the pretrained-model recipe),
    then a scene's own `training:` block, then these options; each adapter's manifest records
    where every setting came from."""
    from evalkit.pipelines.train import train as do_train
    from evalkit.settings import TrainSettings

    chosen = {k: v for k, v in {"steps": steps, "learning_rate": lr, "rank": rank, "alpha": alpha,
                                "batch_size": batch_size, "block": block, "dtype": dtype, "stop_loss": stop_loss,
                                "damage_budget": damage_budget, "seed": seed, "targets": targets.split(",") if targets else None}.items()
              if v is not None}
    _settings(TrainSettings, **chosen)  # each value range-checked here, naming its option
    for path in do_train(scenes, base, out, stack, command_line=chosen, log=_say):
        _say(str(path))


@app.command()
def scratch(
    scenes: Path = typer.Argument(..., help="A scene file or a folder of scenes."),
    out: Path = typer.Option(..., help="Checkpoint folder, e.g. checkpoints/s10."),
    base: Optional[Path] = typer.Option(None, help="Model folder whose tokenizer to use (default: the demo base)."),
    corpus: Optional[Path] = typer.Option(None, help="Extra training text: a .txt file or a folder of them."),
    demo_stories: int = typer.Option(0, help="Also train on this many generated demo-world stories."),
    steps: int = typer.Option(260, help="Training steps."),
    seed: int = typer.Option(0, help="Training seed."),
) -> None:
    """Train a small causal LM from scratch on the scenes; 'evalkit run --checkpoint' accepts it."""
    from evalkit.files import check_replaceable
    from evalkit.inputs.scenes import load_scenes
    from evalkit.progress import progress_bar
    from evalkit.settings import ScratchSettings
    from evalkit.training.scratch import read_corpus, train_scratch

    settings = _settings(ScratchSettings, steps=steps, seed=seed)
    if not 0 <= demo_stories <= 1_000_000:  # the plan's bound: a million stories is hours of training already
        raise EvalkitError(f"--demo-stories {demo_stories}: must be between 0 and 1,000,000")
    loaded = load_scenes(scenes)
    texts = read_corpus(corpus) if corpus is not None else None
    check_replaceable(out, inputs=[scenes, *([corpus] if corpus is not None else []), *([base] if base else [])],
                      kind="checkpoint")
    tokenizer_dir = base if base is not None else _demo_base()
    with progress_bar(f"training {out.name}", settings.steps) as advance:
        _say(str(train_scratch(loaded, tokenizer_dir, out, settings, texts, demo_stories, log=_say, on_step=advance)))


@app.command()
def run(
    adapter: Optional[list[Path]] = typer.Option(None, "--adapter", help="Adapter folder; repeat for several."),
    checkpoint: Optional[list[Path]] = typer.Option(None, "--checkpoint", help="A full model folder (e.g. from 'evalkit scratch') to compare against the base; repeatable."),
    base: Optional[Path] = typer.Option(None, help="Base model folder (default: the adapters' manifest)."),
    reference: Optional[Path] = typer.Option(None, help="Compare against this adapter or checkpoint instead of the base (e.g. the control scene's adapter)."),
    suite: Optional[list[Path]] = typer.Option(None, "--suite", help="Probe file or folder (default: probes/)."),
    out: Path = typer.Option(Path("reports"), help="Reports folder; each subject gets <out>/<name>/."),
    batch_size: int = typer.Option(32, help="Rows per forward pass (packed prompts, generations)."),
    dtype: str = typer.Option("float32", help="float32 (default) or bfloat16 (about 2x faster on CPU; per-item margins move by ~0.04 nats, up to ~0.2: screen with it, decide with float32; see README)."),
    device: str = typer.Option("cpu", help="cpu, or cuda for a GPU."),
    backend: str = typer.Option("hf", help="hf (default: evalkit's lm-eval HF model class) or vllm (lm-eval's vLLM class, GPU)."),
    executor: str = typer.Option("local", help="local (this process) or ray ((subject x suite) jobs on a Ray cluster)."),
    workers: Optional[int] = typer.Option(None, help="Ray workers (default: one per CPU of the cluster)."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)."),
    alpha: float = typer.Option(0.05, help="Significance level for q-values."),
    test: str = typer.Option("wilcoxon", help="wilcoxon, t or permutation."),
    resamples: int = typer.Option(2000, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Seed for bootstrap and lm-eval."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Compute every score again (reference and subjects) instead of reusing cached ones."),
    gate_policy: Optional[Path] = typer.Option(None, "--gate", help="Gate each subject against --baseline with this policy."),
    baseline: Optional[Path] = typer.Option(None, help="results.json to gate against (with --gate)."),
    junit: Optional[Path] = typer.Option(None, help="JUnit XML of the gate (with --gate)."),
    discover: bool = typer.Option(False, "--discover", help="Also look for directions of change no probe declared, in each adapter (a section of its report and results.json)."),
    control: Optional[list[Path]] = typer.Option(None, "--control", help="With --discover: a control adapter (the neutral scene, another seed), the null; give two or more."),
    prompts: Optional[Path] = typer.Option(None, help="With --discover: a prompt bank, one prompt a line (default: the bundled one for the base)."),
) -> None:
    """Evaluate the reference (the base by default) and each subject on the probe suites, pair by item, test, report."""
    from evalkit.inputs.suites import load_suites
    from evalkit.paths import default_folder
    from evalkit.pipelines.evaluate import DiscoveryRequest, evaluate
    from evalkit.pipelines.reports import gate_candidates, prepare_gate
    from evalkit.settings import RunSettings, StatsSettings

    stats = _settings(StatsSettings, alpha=alpha, test=test, resamples=resamples, seed=seed)
    settings = _settings(RunSettings, batch_size=batch_size, dtype=dtype, device=device, backend=backend,
                         executor=executor, workers=workers, ray_address=ray_address, stats=stats)
    if (gate_policy is None) != (baseline is None):
        raise EvalkitError("--gate and --baseline go together")
    if junit is not None and gate_policy is None:
        raise EvalkitError("--junit goes with --gate: it is the gate's report")
    suite_paths = suite or [default_folder("probes")]
    gating = None
    if gate_policy is not None and baseline is not None:
        gating = prepare_gate(baseline, gate_policy, load_suites(suite_paths), junit, settings.dtype)
    if not discover and (control or prompts):
        raise EvalkitError("--control and --prompts go with --discover")
    discovery = DiscoveryRequest(controls=tuple(control or []), prompts=prompts) if discover else None
    records = evaluate(adapter or [], checkpoint or [], base, suite_paths, settings, reference=reference, log=_say,
                       use_cache=not no_cache, out=out, discovery=discovery,
                       other_files=[p for p in (gate_policy, baseline, junit) if p is not None])
    reports = [out / r.run_id / "report.html" for r in records]
    for report in reports:
        _say(f"report: {report}")
    if gating is not None and baseline is not None:
        policy, baseline_record = gating
        outcomes = gate_candidates(baseline, baseline_record, [r.parent / "results.json" for r in reports], policy,
                                   junit, log=_say)
        if any(o.failed for o in outcomes):
            raise typer.Exit(1)


@app.command()
def demo(
    out: Path = typer.Option(Path("reports") / "demo", help="Where the demo's reports go (its adapters go to ./adapters, where later demos reuse them)."),
    quick: bool = typer.Option(False, help="A smaller base and shorter training: the same path in seconds."),
    base: Optional[Path] = typer.Option(None, help="A real model (smollm2, a GGUF file or a HF folder): the real scenes and suites, two seeds each, against the base and against the control scene."),
    discover: bool = typer.Option(False, "--discover", help="Also look for directions of change no probe declared in every scene's adapter (the control scene, trained with two more seeds, is the null)."),
) -> None:
    """Build (or reuse) the demo base, train the bundled scenes, run every suite, write reports."""
    from evalkit.pipelines.demo import demo as do_demo
    from evalkit.pipelines.real_demo import real_demo

    if base is not None:
        index = real_demo(base, out, log=_say, discover=discover)
    else:
        index = do_demo(out, quick=quick, log=_say, discover=discover)
    _say(f"open this report: {index.resolve()}")


@app.command()
def experiment(
    plan: Path = typer.Argument(..., help="An experiment plan (see examples/ten-scenes.yaml)."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default: reports/<plan name>); replaced whole."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be trained and evaluated, then stop."),
) -> None:
    """Train what the plan needs (reusing what exists), evaluate everything on one base load, report."""
    from evalkit.pipelines.experiment import run_experiment

    index = run_experiment(plan, out, dry_run)
    if index is not None:
        _say(f"open this report: {index.resolve()}")


@app.command()
def calibrate(
    base: Optional[Path] = typer.Option(None, help="Base model folder (default: the embedded demo base)."),
    datasets: int = typer.Option(2000, min=1, max=1_000_000, help="Simulated null data sets per design."),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Seed of the simulation."),
    out: Path = typer.Option(Path("reports") / "calibration", help="Where calibration.json goes."),
    null_comparisons: int = typer.Option(22, min=3, help="Disjoint control-vs-control comparisons (3 control seeds each) for discovery's null."),
) -> None:
    """Show the harness does not cry wolf (null subjects, simulated nulls, discovery's null) and finds planted effects."""
    from evalkit.pipelines.calibrate import calibrate as do_calibrate

    if not do_calibrate(base, datasets, seed, out, log=_say, null_comparisons=null_comparisons):
        raise typer.Exit(1)


@app.command("export-tasks")
def export_tasks(
    probes: list[Path] = typer.Argument(..., help="Probe files or folders."),
    out: Path = typer.Option(..., help="Folder for the task YAML and JSONL data (replaced whole)."),
) -> None:
    """Write the suites as lm-eval task YAML that plain lm-eval runs with --include_path."""
    from evalkit.engine.export import export_tasks as do_export
    from evalkit.inputs.suites import load_suites

    for name in do_export(load_suites(probes), out):
        _say(name)
    _say(f"run them with: lm_eval --model hf --model_args pretrained=MODEL --include_path {out.resolve()} --tasks NAME")


@app.command()
def schema(out: Optional[Path] = typer.Option(None, help="Write here instead of printing.")) -> None:
    """The JSON Schema of probe files and scene files, for editors."""
    import json

    from evalkit.files import SCHEMA_SIGNATURE, check_file_replaceable, write_text_atomic
    from evalkit.inputs.scenes import Scene
    from evalkit.inputs.suites import suite_json_schema

    text = json.dumps({"$comment": "written by evalkit schema", "probe_suite": suite_json_schema(),
                       "scene": Scene.model_json_schema()}, indent=2)
    if out is None:
        _say(text)
    else:
        check_file_replaceable(out, SCHEMA_SIGNATURE)
        write_text_atomic(out, text + "\n")
        _say(f"schema: {out}")


@app.command()
def gate(
    baseline: Path = typer.Option(..., help="results.json of the baseline run."),
    candidate: Path = typer.Option(..., help="results.json of the candidate run."),
    policy: Optional[Path] = typer.Option(None, help="Gate policy YAML (default: evalkit's default policy)."),
    junit: Optional[Path] = typer.Option(None, help="Write JUnit XML here (one testcase per check)."),
    summary: Optional[Path] = typer.Option(None, help="Append a Markdown summary here (default: $GITHUB_STEP_SUMMARY)."),
) -> None:
    """Exit 1 when the candidate is significantly worse than the baseline beyond a margin; 0 otherwise."""
    from evalkit.pipelines.reports import gate as do_gate

    if any(o.failed for o in do_gate(baseline, candidate, policy, junit, summary, log=_say)):
        raise typer.Exit(1)


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders, results.json files, or folders of run folders."),
    out: Path = typer.Option(Path("reports") / "compare.html", help="Where the compare report goes."),
) -> None:
    """A scene x (suite, metric) heatmap over runs, with stack trajectories; no model needed."""
    from evalkit.pipelines.reports import compare as do_compare

    _say(f"report: {do_compare(runs, out)}")


@app.command()
def discover(
    adapter: Path = typer.Option(..., help="The adapter whose changes to look for."),
    reference: Optional[Path] = typer.Option(None, help="Compare against this adapter instead of the base."),
    control: Optional[list[Path]] = typer.Option(None, "--control", help="A control adapter (neutral scene, another seed): the null; repeat for several."),
    base: Optional[Path] = typer.Option(None, help="Base model (default: the adapter's manifest)."),
    prompts: Optional[Path] = typer.Option(None, help="A prompt bank, one prompt a line (default: the bundled one for the base)."),
    suite: Optional[list[Path]] = typer.Option(None, "--suite", help="Probe files or folders: their prompts join the bank, their two-way choices are compared."),
    out: Path = typer.Option(Path("reports") / "discover", help="Where discovery.json and discovery.html go."),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Seed of the held-out splits."),
) -> None:
    """Directions of change no probe declared: labelled, replicated, against controls, new or not."""
    from evalkit.pipelines.discover import run_discovery

    _say(f"report: {run_discovery(adapter, base, reference, control or [], prompts, suite or [], out, seed, log=_say)}")


@app.command()
def power(
    results: Path = typer.Argument(..., help="A results.json of a run (e.g. a control adapter against the base)."),
    shift: float = typer.Option(..., help="The true shift to detect, in each metric's own unit (nats for margins)."),
    target: float = typer.Option(0.8, "--power", help="The power wanted (1 - beta)."),
) -> None:
    """How many items (or clusters) each effect would need to find a given shift, from a run's spread."""
    import math

    from evalkit.pipelines.reports import power as do_power

    if not (0 < shift < math.inf and 0 < target < 1):
        raise EvalkitError(f"--shift must be above 0 and --power between 0 and 1, not {shift:g} and {target:g}")
    for line in do_power(results, shift, target):
        _say(line)


@app.command()
def report(results: Path = typer.Argument(..., help="A results.json written by 'evalkit run'.")) -> None:
    """Re-render report.html from results.json, without loading any model."""
    from evalkit.pipelines.reports import rerender

    _say(f"report: {rerender(results)}")


def _demo_base() -> Path:
    from evalkit.training.demo_base import ensure_demo_base

    return ensure_demo_base(log=_say)


def main() -> None:
    go_offline()
    quiet_progress_bars()
    app()
