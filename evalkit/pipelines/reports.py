"""Commands over written records, no model needed: re-render a report, compare runs, gate."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from evalkit.decide.gate import (
    DEFAULT_POLICY,
    Outcome,
    Policy,
    check_item_sets,
    check_outputs,
    check_policy,
    check_same_dtype,
    check_same_questions,
    check_same_scoring,
    check_testable,
    decide,
    load_policy,
    write_outputs,
)
from evalkit.errors import EvalkitError
from evalkit.files import HTML_SIGNATURE, IN_PROGRESS, check_file_replaceable
from evalkit.inputs.suites import LoadedSuite
from evalkit.kinds import check_record
from evalkit.record import RunRecord, results_file
from evalkit.record import read_record as read_file
from evalkit.report.overview import write_compare_report
from evalkit.report.run_page import write_run_report

Log = Callable[[str], None]


def read_record(path: Path) -> RunRecord:
    """A results.json, checked whole: its schema and what each item's kind needs."""
    record = read_file(path)
    check_record(record, str(path))
    return record


def rerender(results: Path, out: Optional[Path] = None) -> Path:
    results = results_file(results)
    out = out or results.parent / "report.html"
    check_file_replaceable(out, HTML_SIGNATURE, [results])
    return write_run_report(read_record(results), out)


def compare(results: list[Path], out: Path) -> Path:
    """The compare report over existing runs (results.json files, run folders, or folders of them)."""
    found: list[Path] = []
    for path in results:
        if path.is_file():
            found.append(path)
        elif (path / "results.json").is_file():
            found.append(path / "results.json")
        elif path.is_dir():  # not an interrupted run's '.NAME.<8 chars>.tmp' (or a swap's '.NAME.<8>.old')
            found += sorted(p for p in path.glob("*/results.json") if not IN_PROGRESS.fullmatch(p.parent.name))
        else:
            raise EvalkitError("no such results file or run folder", where=str(path))
    if not found:
        raise EvalkitError("no results.json found", where=", ".join(map(str, results)))
    check_file_replaceable(out, HTML_SIGNATURE, found)
    records = [read_record(p) for p in found]
    return write_compare_report(records, [p.parent / "report.html" for p in found], out)


def gate(baseline: Path, candidate: Path, policy_path: Optional[Path], junit: Optional[Path] = None,
         summary: Optional[Path] = None, log: Log = print) -> list[Outcome]:
    """Decide, print a line per check, write JUnit and Markdown; the outcome of every check."""
    policy = load_policy(policy_path)
    named = summary is not None
    summary = summary or (Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None)
    check_outputs(junit, summary, [baseline, candidate, *([policy_path] if policy_path else [])], summary_named=named)
    base, cand = read_record(baseline), read_record(candidate)
    check_policy(policy, {s.name: s.kind for s in cand.manifest.suites}, where=str(policy_path or DEFAULT_POLICY))
    outcomes = decide(base, cand, policy, where=f"{baseline} vs {candidate}", sides=(str(baseline), str(candidate)))
    for o in outcomes:
        log(o.line())
    write_outputs(outcomes, str(baseline), str(candidate), junit, summary)
    failed = [o.name for o in outcomes if o.failed]
    log(f"gate: {'FAILED: ' + ', '.join(failed) if failed else 'passed'} ({len(outcomes)} checks)")
    return outcomes


def prepare_gate(baseline: Path, policy_path: Path, suites: list[LoadedSuite], junit: Optional[Path],
                 dtype: str) -> tuple[Policy, RunRecord]:
    """`run --gate`: the policy, the baseline and the JUnit path are checked before any model work,
    against the suites the run will evaluate."""
    policy = load_policy(policy_path)
    check_outputs(junit, None, [baseline, policy_path])
    record = read_record(baseline)
    check_policy(policy, {s.name: s.spec.kind for s in suites}, where=str(policy_path))
    planned = {(s.name, item_id): (c.prompt, list(c.options), c.cluster) for s in suites
               for item_id, c in s.questions().items()}
    where = f"{baseline} vs the suites of this run"
    check_item_sets({(i.suite, i.item_id) for i in record.items}, set(planned), policy.item_tolerance, where=where)
    check_same_dtype(record, dtype, "this run", where)
    check_same_scoring(record, {s.name: s.scoring() for s in suites}, "this run's suites", where)
    check_same_questions(record, planned, "this run's suites", where)
    check_testable(record, policy, where)
    return policy, record


def gate_candidates(baseline: Path, record: RunRecord, candidates: list[Path], policy: Policy,
                    junit: Optional[Path], log: Log = print) -> list[Outcome]:
    """Gate every run of this command against an already checked baseline; one JUnit file holds
    every candidate's checks (named by the candidate's folder)."""
    outcomes = []
    for candidate in candidates:
        checks = decide(record, read_record(candidate), policy, where=f"{baseline} vs {candidate}",
                        sides=(str(baseline), str(candidate)))
        for o in checks:
            log(o.line())
        failed = [o.name for o in checks if o.failed]
        log(f"gate {candidate.parent.name}: {'FAILED: ' + ', '.join(failed) if failed else 'passed'} "
            f"({len(checks)} checks)")
        outcomes += [replace(o, candidate=candidate.parent.name) for o in checks]
    write_outputs(outcomes, str(baseline), ", ".join(str(c) for c in candidates), junit, None)
    return outcomes


def power(results: Path, shift: float, power: float = 0.8) -> list[str]:
    """From a run: per effect, its units, SE and MDE now, and how many units (items, or clusters
    where items share them) a true shift of `shift` would need to be found with `power` at the
    run's alpha: n = (z_{1-a/2} + z_power)^2 var / shift^2, var = SE^2 x units measured here."""
    from evalkit.decide.stats import items_needed, z_sum

    record = read_record(results)
    alpha = record.stats.alpha
    lines = [f"{'suite':20s} {'metric':16s} {'scope':22s} {'units':>5s} {'SE':>8s} {'MDE':>8s} "
             f"{'needed for ' + format(shift, 'g'):>16s}"]
    for e in record.effects:
        units = e.units or e.n
        variance = e.se * e.se * units if e.se is not None else math.nan  # a product, so huge is inf, not an error
        count = z_sum(alpha, power) ** 2 * variance / (shift * shift) if shift * shift > 0 else math.inf
        if units < 2 or not math.isfinite(variance):
            needed = "untestable"
        elif count < 1e15:
            needed = str(items_needed(variance, shift, alpha, power))
        else:
            needed = "over 1e15"
        mde = f"{e.mde:.3f}" if e.mde is not None else "-"
        se = f"{e.se:.3f}" if e.se is not None else "-"
        lines.append(f"{e.suite:20s} {e.metric:16s} {e.scope:22s} {units:5d} {se:>8s} {mde:>8s} {needed:>16s}")
    return lines
