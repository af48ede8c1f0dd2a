"""Evaluate subjects against a reference and test what changed: the engine's paired items, then
the decisions, then the reports. The composition behind `evalkit run` and `evalkit.evaluate`."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from evalkit.decide.effects import build_records
from evalkit.engine.adapters import UNVERIFIED
from evalkit.engine.base import Base, load_base
from evalkit.engine.paired import evaluate_paired
from evalkit.engine.runner import Subject, adapter_subject, base_of, checkpoint_subject
from evalkit.errors import EvalkitError
from evalkit.files import atomic_directory, check_replaceable, check_writable, inside
from evalkit.inputs.suites import LoadedSuite, load_suites
from evalkit.paths import cache_root
from evalkit.pipelines.discover import (
    check_adapters_fit,
    check_discoverable,
    check_distinct,
    discover_adapters,
    prompt_bank,
    read_prompts,
)
from evalkit.progress import progress_bar
from evalkit.record import RunRecord, write_record
from evalkit.report.run_page import write_run_report
from evalkit.settings import RunSettings

Log = Callable[[str], None]


def evaluate_subjects(base: Base, subjects: list[Subject], suites: list[LoadedSuite], settings: RunSettings,
                      reference: Optional[Subject] = None, log: Log = print, use_cache: bool = True) -> list[RunRecord]:
    """Paired items from the engine, tested: one RunRecord per subject."""
    with progress_bar("evaluating models", len(subjects) + 1) as advance:
        runs = evaluate_paired(base, subjects, suites, settings, reference=reference, log=log, use_cache=use_cache,
                               on_done=advance)
    return build_records(runs, settings.stats)


def name_apart(subjects: list[Subject]) -> None:
    """Give every subject a distinct name (its run id and report folder): the folder name, or,
    where folders share one, as many trailing path parts as tell them apart (a/share, b/share ->
    a-share, b-share). The same folder given twice is refused."""
    seen: dict[Path, Subject] = {}
    for s in subjects:
        if s.path in seen:
            raise EvalkitError("this model is given twice", where=str(s.path))
        seen[s.path] = s
    by_name: dict[str, list[Subject]] = {}
    for s in subjects:
        by_name.setdefault(_folded(s.name), []).append(s)
    for same in (group for group in by_name.values() if len(group) > 1):
        for depth in range(2, max(len(s.path.parts) for s in same) + 1):
            names = ["-".join(s.path.parts[-depth:]).lstrip("/-") for s in same]
            if len({_folded(n) for n in names}) == len(names):
                break
        for s, name in zip(same, names):
            s.name = name
    if len({_folded(s.name) for s in subjects}) < len(subjects):
        raise EvalkitError("two subjects would write the same report folder; rename one",
                           where=", ".join(str(s.path) for s in subjects))


def _folded(name: str) -> str:
    """Names one folder on a file system that ignores case or Unicode form (macOS, Windows, shares)."""
    return unicodedata.normalize("NFC", name).casefold()


def reference_subject(path: Path, trained_elsewhere: bool = False) -> Subject:
    """A reference is a checkpoint when it is a full model folder, else an adapter."""
    return checkpoint_subject(path) if (path / "config.json").is_file() else adapter_subject(path, trained_elsewhere)


@dataclass(frozen=True)
class DiscoveryRequest:
    """`run --discover`: look for directions of change no probe declared, in each adapter subject."""

    controls: tuple[Path, ...] = ()
    """Control adapters (the neutral scene, other seeds): the null, and what the shift is taken against."""
    prompts: Optional[Path] = None
    """A prompt bank, one prompt a line (default: the bundled one for the base)."""


def evaluate(adapters: list[Path], checkpoints: list[Path], base_dir: Optional[Path], suite_paths: list[Path],
             settings: RunSettings, reference: Optional[Path] = None, log: Log = print,
             use_cache: bool = True, out: Optional[Path] = None,
             discovery: Optional[DiscoveryRequest] = None, other_files: Iterable[Path] = ()) -> list[RunRecord]:
    """Validate everything, load the base once, evaluate reference and subjects, test each pair;
    with `discovery`, add each adapter's discovered directions to its record; with `out`, write
    each subject's results.json and report.html to out/<subject>/ (never over an input, nor over
    `other_files`: what the command reads or writes besides, such as the gate's policy)."""
    if not adapters and not checkpoints:
        raise EvalkitError("give at least one --adapter or --checkpoint")
    suites = load_suites(suite_paths)
    elsewhere = base_dir is not None  # the user named the base: adapters of other tools are accepted
    subjects = [*(adapter_subject(a, elsewhere) for a in adapters), *(checkpoint_subject(c) for c in checkpoints)]
    for s in subjects:
        if s.kind == "adapter" and s.manifest is None:
            log(f"note: {s.path.name}: {UNVERIFIED}")
    name_apart(subjects)
    ref_subject = reference_subject(reference, elsewhere) if reference is not None else None
    if ref_subject is not None and any(s.path.resolve() == ref_subject.path.resolve() for s in subjects):
        raise EvalkitError("is both the reference and a subject: it would be compared with itself",
                           where=str(ref_subject.path))
    if base_dir is None:
        with_manifest = [s for s in subjects if s.kind == "adapter"]
        if not with_manifest:
            raise EvalkitError("--checkpoint needs --base: the model it is compared against")
        base_dir = base_of(with_manifest)
    if out is not None:
        check_writable(out)
        inputs = [*adapters, *checkpoints, *suite_paths, *other_files, *([reference] if reference else []),
                  *([base_dir] if base_dir else []), *(discovery.controls if discovery else ()),
                  *([discovery.prompts] if discovery and discovery.prompts else [])]
        for s in subjects:  # each subject's folder is written whole: never a user's folder, nor an input
            check_replaceable(inside(out, s.name), inputs=inputs, kind="run report")
    if use_cache:
        check_writable(cache_root() / "scores")
    controls = [adapter_subject(c, elsewhere) for c in discovery.controls] if discovery else []
    if discovery is not None:
        if not any(s.kind == "adapter" for s in subjects):
            raise EvalkitError("--discover looks inside adapters: give at least one --adapter")
        check_discoverable([s for s in subjects if s.kind == "adapter"], ref_subject, controls)
        if discovery.prompts is not None:
            read_prompts(discovery.prompts)
    base = load_base(base_dir, settings.dtype, settings.device)
    if discovery is not None:
        check_adapters_fit(base, controls)  # the subjects and the reference are checked by the runner
        check_distinct(base, [*(s for s in subjects if s.kind == "adapter"), *controls,
                              *([ref_subject] if ref_subject else [])])
        prompt_bank(discovery.prompts, base)  # a bank that cannot be read is refused before the evaluation
    records = evaluate_subjects(base, subjects, suites, settings, reference=ref_subject, log=log, use_cache=use_cache)
    if discovery is not None:
        found = discover_adapters(base, [s for s in subjects if s.kind == "adapter"], ref_subject, controls, suites,
                                  discovery.prompts, seed=settings.stats.seed, batch_size=settings.batch_size, log=log,
                                  use_cache=use_cache)
        by_name = {s.name: found[s.path] for s in subjects if s.path in found}
        records = [r.model_copy(update={"discovery": by_name.get(r.run_id)}) for r in records]
    if out is not None:
        for record in records:
            write_outputs(record, inside(out, record.run_id))
    return records


def write_outputs(record: RunRecord, folder: Path) -> Path:
    """results.json and report.html of one run, as a folder written whole (an earlier run's folder
    is replaced; a user's is refused); returns the report's path."""
    with atomic_directory(folder, kind="run report") as tmp:
        write_record(record, tmp / "results.json")
        write_run_report(record, tmp / "report.html")
    return folder / "report.html"
