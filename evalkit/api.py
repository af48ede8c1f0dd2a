"""The Python front door: everything the command line does, as functions taking paths or objects.

    import evalkit

    records = evalkit.evaluate(["adapters/honesty"], suites=["probes/tension.yaml"])
    for effect in records[0].effects:
        print(effect.suite, effect.metric, effect.scope, effect.mean_diff, effect.q_value)

Every function validates all of its input before it writes anything and raises `EvalkitError`
(one line naming the file, item and field) on bad input. Paths may be `str` or `Path`. Nothing
is printed unless `log` is given (e.g. `log=print`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

from evalkit.errors import EvalkitError
from evalkit.offline import go_offline
from evalkit.record import Effect, RunRecord, results_file
from evalkit.settings import RunSettings, StatsSettings, TrainSettings

PathLike = Union[str, "os.PathLike[str]"]
Log = Optional[Callable[[str], None]]

__all__ = [
    "evaluate", "train", "gate", "demo", "compare", "load_suites", "load_scenes", "read_record", "render_report",
    "export_tasks", "validate", "GateResult", "RunSettings", "StatsSettings", "TrainSettings", "RunRecord", "Effect",
    "EvalkitError",
]


def _quiet(log: Log) -> Callable[[str], None]:
    return log if log is not None else (lambda _: None)


def _paths(paths: Union[PathLike, Iterable[PathLike]]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def evaluate(adapters: Sequence[PathLike] = (), checkpoints: Sequence[PathLike] = (), *,
             base: Optional[PathLike] = None, reference: Optional[PathLike] = None,
             suites: Union[PathLike, Sequence[PathLike], None] = None, settings: Optional[RunSettings] = None,
             out: Optional[PathLike] = None, use_cache: bool = True, log: Log = None) -> list[RunRecord]:
    """Evaluate each adapter (on its base) and each checkpoint against a reference, paired item by
    item, and test every difference.

    Args:
        adapters: Adapter folders (peft files + evalkit.json), each one subject.
        checkpoints: Full model folders (e.g. from `evalkit scratch`), each one subject.
        base: The base model folder; default: the base named in the adapters' manifests.
        reference: An adapter or checkpoint to compare against instead of the base (e.g. the
            control scene's adapter: "what this scene changed beyond any fine-tuning").
        suites: Probe files or folders; default: ./probes, else the bundled suites.
        settings: Batch size, dtype, device, backend, executor and the statistics (`RunSettings`).
        out: When given, each subject's results.json and report.html go to out/<subject>/.
        use_cache: Reuse scores already computed for the same model weights and requests.
        log: Called with each progress line (default: silent).

    Returns:
        One `RunRecord` per subject, in order: its paired items and its effects table
        (`record.effects`, one `Effect` per suite x metric, cluster and group).
    """
    from evalkit.paths import default_folder
    from evalkit.pipelines.evaluate import evaluate as run

    go_offline()
    return run(_paths(adapters), _paths(checkpoints), Path(base) if base is not None else None,
               _paths(suites) if suites is not None else [default_folder("probes")], settings or RunSettings(),
               reference=Path(reference) if reference is not None else None, log=_quiet(log), use_cache=use_cache,
               out=Path(out) if out is not None else None)


def train(scenes: PathLike, *, base: Optional[PathLike] = None, out: Optional[PathLike] = None, stack: bool = False,
          settings: Optional[TrainSettings] = None, log: Log = None) -> list[Path]:
    """Train one LoRA adapter per scene (or cumulative stacks 1..k of a folder with `stack=True`).

    Args:
        scenes: A scene file, or a folder of scene files (name order is stacking order).
        base: The base model folder; default: the embedded demo base (built once, cached).
        out: The adapter folder (one scene) or the stacks' parent folder; default: ./adapters/<id>.
        stack: Train stack k on scenes 1..k together, for every k.
        settings: The LoRA recipe (`TrainSettings`); default: the recipe for the base's size. A
            scene's own `training:` block overrides it.
        log: Called with each progress line (default: silent).

    Returns:
        The adapter folders, each with peft's files, evalkit.json and loss_curve.json.
    """
    from evalkit.pipelines.train import train as run

    go_offline()
    return run(Path(scenes), Path(base) if base is not None else None, Path(out) if out is not None else None,
               stack, settings,
               log=_quiet(log))


@dataclass
class GateResult:
    """What `gate` decided: `passed` is False when any check regressed."""

    passed: bool
    outcomes: list
    """One `evalkit.decide.gate.Outcome` per check: worsening, its CI, p and Holm p, failed."""


def gate(baseline: PathLike, candidate: PathLike, *, policy: Optional[PathLike] = None,
         junit: Optional[PathLike] = None, summary: Optional[PathLike] = None, log: Log = None) -> GateResult:
    """Does the candidate regress against the baseline beyond the policy's margins?

    Each check is a one-sided non-inferiority test on the paired subject scores of the two runs,
    Holm-adjusted across checks; a check fails only on a significant worsening beyond its margin.

    Args:
        baseline: results.json of the baseline run.
        candidate: results.json of the candidate run.
        policy: Gate policy YAML; default: evalkit's default policy.
        junit: Write JUnit XML here (one testcase per check).
        summary: Append a Markdown summary here.
        log: Called with one line per check (default: silent).
    """
    from evalkit.pipelines.reports import gate as run

    outcomes = run(Path(baseline), Path(candidate), Path(policy) if policy is not None else None,
                   Path(junit) if junit is not None else None, Path(summary) if summary is not None else None,
                   log=_quiet(log))
    return GateResult(passed=not any(o.failed for o in outcomes), outcomes=outcomes)


def demo(out: PathLike = Path("reports") / "demo", *, quick: bool = False, log: Log = None) -> Path:
    """The embedded default end to end: the demo base, the bundled scenes, every suite. Returns
    the index report's path (quick=True: the same path at smoke-test size, in seconds)."""
    from evalkit.pipelines.demo import demo as run

    go_offline()
    return run(Path(out), quick=quick, log=_quiet(log))


def compare(runs: Sequence[PathLike], out: PathLike) -> Path:
    """A run x (suite, metric) heatmap over existing runs (results.json files or run folders)."""
    from evalkit.pipelines.reports import compare as run

    return run(_paths(runs), Path(out))


def load_suites(paths: Union[PathLike, Sequence[PathLike]]) -> list:
    """Probe files or folders -> validated suites (`LoadedSuite`: path, content hash, spec)."""
    from evalkit.inputs.suites import load_suites as load

    return load(_paths(paths))


def load_scenes(path: PathLike) -> list:
    """A scene file or folder -> validated scenes, in stacking order."""
    from evalkit.inputs.scenes import load_scenes as load

    return load(Path(path))


def read_record(path: PathLike) -> RunRecord:
    """A results.json -> its `RunRecord` (schema and version checked)."""
    from evalkit.pipelines.reports import read_record as read

    return read(Path(path))


def render_report(record: Union[RunRecord, PathLike], out: Optional[PathLike] = None) -> Path:
    """Render report.html from a `RunRecord` or a results.json, without any model. `out` defaults
    to report.html beside the results file (required when given a record)."""
    from evalkit.report.run_page import write_run_report

    if not isinstance(record, RunRecord):
        path = results_file(Path(record))
        return write_run_report(read_record(path), Path(out) if out is not None else path.parent / "report.html")
    if out is None:
        raise EvalkitError("render_report needs `out` when given a record")
    return write_run_report(record, Path(out))


def export_tasks(probes: Union[PathLike, Sequence[PathLike]], out: PathLike) -> list[str]:
    """Write the suites as lm-eval task YAML + JSONL that plain lm-eval runs with --include_path."""
    from evalkit.engine.export import export_tasks as export

    return export(load_suites(probes), Path(out))


def validate(paths: Union[PathLike, Sequence[PathLike]]) -> list[str]:
    """Check scene and probe files; one 'ok' line per file, or EvalkitError for the first problem."""
    from evalkit.inputs.validate import validate_paths

    return validate_paths(_paths(paths))
