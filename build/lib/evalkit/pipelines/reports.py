"""Commands over written records, no model needed: re-render a report, compare runs, gate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from evalkit.decide.gate import Outcome, decide, load_policy, write_outputs
from evalkit.errors import EvalkitError
from evalkit.record import read_record
from evalkit.report.overview import write_compare_report
from evalkit.report.run_page import write_run_report

Log = Callable[[str], None]


def rerender(results: Path, out: Optional[Path] = None) -> Path:
    return write_run_report(read_record(results), out or results.parent / "report.html")


def compare(results: list[Path], out: Path) -> Path:
    """The compare report over existing runs (results.json files, run folders, or folders of them)."""
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


def gate(baseline: Path, candidate: Path, policy_path: Optional[Path], junit: Optional[Path] = None,
         summary: Optional[Path] = None, log: Log = print) -> list[Outcome]:
    """Decide, print a line per check, write JUnit and Markdown; the outcome of every check."""
    policy = load_policy(policy_path)
    base, cand = read_record(baseline), read_record(candidate)
    outcomes = decide(base, cand, policy, where=f"{baseline} vs {candidate}")
    for o in outcomes:
        log(o.line())
    summary = summary or (Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None)
    write_outputs(outcomes, str(baseline), str(candidate), junit, summary)
    failed = [o.name for o in outcomes if o.failed]
    log(f"gate: {'FAILED: ' + ', '.join(failed) if failed else 'passed'} ({len(outcomes)} checks)")
    return outcomes
