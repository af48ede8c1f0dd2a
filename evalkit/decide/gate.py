"""The CI gate: does the candidate regress against the baseline beyond a tolerated margin?

Both sides are run records (results.json). Each check pairs the two subjects' scores item by
item (or paraphrase group by group), orients the differences so that negative is worse, and
tests H1: mean difference < -margin against H0: mean difference >= -margin with a one-sided t
test on the interval's own SE (cluster-robust CR1 when items share clusters) and degrees of
freedom, Holm across the checks. The bound printed beside each check is the one-sided lower
confidence bound of the worsening at the level Holm leaves that check (alpha * p / p_Holm), so
a check fails exactly when its printed bound lies above its margin. A build fails only on a
significant regression beyond the margin: an insignificant wiggle never fails it, a real drop
does. (Stated as H0: mean difference <= -margin, the test would fail builds on noise;
non-inferiority puts the burden on the regression.)
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats as sps

from evalkit.decide import stats
from evalkit.errors import EvalkitError
from evalkit.files import (
    JUNIT_SIGNATURE,
    cannot_write,
    check_file_replaceable,
    check_writable,
    note_written,
    parse_model,
    read_yaml_mapping,
    same_file,
    write_text_atomic,
)
from evalkit.kinds import KINDS
from evalkit.record import ItemRecord, RunRecord, SuiteRef

DEFAULT_POLICY = Path(__file__).parent / "policies" / "default.yaml"


class Check(BaseModel):
    """One gated score."""

    model_config = ConfigDict(extra="forbid")

    suite: str
    """The suite's name, as in its probe file."""
    metric: str
    """A per-item score (e.g. nll, entropy, margin) or a consistency group score (agreement, margin_variance)."""
    worse: Literal["lower", "higher"]
    """Which direction is a regression."""
    margin: float = Field(ge=0, allow_inf_nan=False, strict=True)
    """Tolerated worsening, in the metric's unit (a number: `true` or "0.1" is refused, not read as one)."""
    alpha: float | None = Field(default=None, ge=1e-12, lt=1, strict=True)  # a denormal alpha could never be reached
    """Overrides the policy's alpha for this check."""


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(default=0.05, ge=1e-12, lt=1, strict=True)  # a number, as margins are
    item_tolerance: float = Field(default=0.0, ge=0, le=1, strict=True)
    """Share of items (of the larger side) allowed to be on one side only; those are skipped."""
    checks: list[Check] = Field(min_length=1)


def load_policy(path: Path | None) -> Policy:
    path = path or DEFAULT_POLICY
    data = read_yaml_mapping(path)
    policy = parse_model(Policy, data, path)
    seen = set()
    for k, c in enumerate(policy.checks):
        if (c.suite, c.metric) in seen:
            raise EvalkitError(f"field 'checks.{k}': {c.suite}/{c.metric} is gated twice", where=str(path))
        seen.add((c.suite, c.metric))
    return policy


@dataclass
class Outcome:
    check: Check
    n: int
    unit: str
    baseline_mean: float
    candidate_mean: float
    worsening: float
    """Mean of (candidate - baseline) oriented so that positive = worse."""
    bound: float
    """One-sided lower confidence bound of the worsening at `level`: the check fails exactly when
    it lies above the margin."""
    level: float
    """The level Holm leaves this check: alpha * p / p_holm (alpha itself for a single check)."""
    p_value: float
    p_holm: float
    test: str
    alpha: float
    failed: bool
    candidate: str = ""
    """Which candidate run, when one gate judges several (run --gate with several subjects)."""

    @property
    def name(self) -> str:
        return f"{self.check.suite}/{self.check.metric}"

    def line(self) -> str:
        verdict = "FAIL" if self.failed else "pass"
        return (f"{verdict}  {self.name}: worse by {self.worsening:+.4f}, at least {self.bound:+.4f} "
                f"({1 - self.level:.4g} one-sided bound; {self.unit}, n={self.n}); margin {self.check.margin:g}, "
                f"{self.check.worse} is worse; p {self.p_value:.4g}, Holm {self.p_holm:.4g} (alpha {self.alpha:g}; "
                f"{self.test})")


def _items(record: RunRecord) -> dict[tuple[str, str], ItemRecord]:
    return {(i.suite, i.item_id): i for i in record.items}


def pair_records(baseline: RunRecord, candidate: RunRecord, tolerance: float,
                 where: str) -> list[tuple[ItemRecord, ItemRecord]]:
    """Items of both runs by (suite, item id); too many on one side only is an input error."""
    a, b = _items(baseline), _items(candidate)
    check_item_sets(set(a), set(b), tolerance, where)
    check_same_dtype(baseline, candidate.manifest.decoding.get("dtype"), "the candidate", where)
    check_same_scoring(baseline, {s.name: suite_scoring(s) for s in candidate.manifest.suites}, "the candidate", where)
    check_same_questions(baseline, {k: (i.prompt, i.options, i.cluster) for k, i in b.items()}, "the candidate", where)
    return [(a[k], b[k]) for k in sorted(set(a) & set(b))]


def suite_scoring(suite: SuiteRef) -> dict[str, Any]:
    """The settings a suite's scores depend on, as its record holds them (before version 3 only
    its kind and normalization)."""
    return suite.scoring or {"kind": suite.kind, "normalization": suite.normalization}


def check_same_dtype(baseline: RunRecord, dtype: Any, other: str, where: str) -> None:
    """The baseline and `other` computed their scores in one dtype. bfloat16 moves per-item scores
    about as much as a scene does (choice margins by 0.04 nats at the median, up to 0.2; greedy
    continuations change with them): gating one SmolLM2 adapter's fp32 run against its own bf16 run
    found the continuation NLL 0.024-0.043 nats/token lower in bf16 for each of 5 adapters (the base
    continued 3 of 12 prompts otherwise in bf16). Across dtypes the gate would judge the precision,
    not the change."""
    ours = baseline.manifest.decoding.get("dtype")
    if ours is not None and dtype is not None and ours != dtype:
        raise EvalkitError(f"the baseline's scores were computed in {ours} but {other}'s in {dtype}: a change of "
                           "precision moves every score, so the gate would judge the precision", where=where,
                           hint="score both with the same --dtype; float32 to decide")


def check_same_scoring(baseline: RunRecord, scoring: dict[str, dict[str, Any]], other: str, where: str) -> None:
    """Each suite both sides ran scores the same way in the baseline as in `other`: a changed
    normalization, delimiter, chat rendering or generation length moves every number."""
    for suite in baseline.manifest.suites:
        if suite.name not in scoring:
            continue
        ours, theirs = suite_scoring(suite), scoring[suite.name]
        changed = sorted(k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k])
        if changed:
            k = changed[0]
            raise EvalkitError(f"suite {suite.name} scores with {k} {theirs[k]!r} in {other} but {ours[k]!r} in the "
                               "baseline: its numbers are not comparable", where=where,
                               hint="run the baseline again on this version of the suite")


def check_same_questions(baseline: RunRecord, questions: dict[tuple[str, str], tuple[str, list[str], str | None]],
                         other: str, where: str) -> None:
    """The same (suite, item id) asks the same prompt with the same options, in the same cluster, in
    the baseline as in `other` (a candidate run, or the suites a run will evaluate): else its scores
    are not comparable, or (another cluster) the check's SE and degrees of freedom would depend on
    which run is the baseline."""
    changed = [(i, questions[k]) for k, i in _items(baseline).items()
               if k in questions and _asked(i.prompt, i.options, i.cluster) != _asked(*questions[k])]
    if changed:
        item, (prompt, options, cluster) = changed[0]
        if item.prompt != prompt:
            what = "another prompt"
        elif list(item.options) != list(options):
            what = "other options"
        else:
            what = f"another cluster ({cluster!r}; {item.cluster!r} in the baseline)"
        raise EvalkitError(f"item {item.suite}/{item.item_id} has {what} in {other} than in the baseline "
                           f"({len(changed)} such items): they ran different versions of the suite", where=where,
                           hint="run the baseline again on this version of the suite")


def _asked(prompt: str, options: list[str], cluster: str | None) -> tuple[str, list[str], str | None]:
    return prompt, list(options), cluster


def check_item_sets(a: set[tuple[str, str]], b: set[tuple[str, str]], tolerance: float, where: str) -> None:
    """(suite, item) keys of baseline and candidate; too many on one side only is an input error."""
    only = sorted(a ^ b)
    if len(only) > tolerance * max(len(a), len(b)):
        shown = ", ".join(f"{s}/{i} ({'baseline' if (s, i) in a else 'candidate'} only)" for s, i in only[:5])
        more = f" and {len(only) - 5} more" if len(only) > 5 else ""
        raise EvalkitError(f"baseline and candidate differ in {len(only)} items: {shown}{more}", where=where,
                           hint=f"the policy tolerates {tolerance:.0%}")


def check_policy(policy: Policy, suite_kinds: dict[str, str], where: str) -> None:
    """Every check names a suite of the run and a metric its kind tests (before any work)."""
    for k, check in enumerate(policy.checks):
        if check.suite not in suite_kinds:
            raise EvalkitError(f"field 'checks.{k}.suite': no suite '{check.suite}' in the run; "
                               f"allowed: {', '.join(sorted(suite_kinds))}", where=where)
        kind = KINDS[suite_kinds[check.suite]]
        if kind.metric(check.metric) is None:
            allowed = ", ".join(m.name for m in (*kind.tested, *kind.group_tested))
            raise EvalkitError(f"field 'checks.{k}.metric': '{check.metric}' is not a tested metric of "
                               f"{kind.name} suites; allowed: {allowed}", where=where)


def _number(item: ItemRecord, metric: str, side: str) -> float:
    """A gated score must be a finite number: NaN or an infinity would decide the gate by itself."""
    value = item.subject.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EvalkitError(f"field 'subject.{metric}': {value!r} is not a finite number",
                           where=f"{side} [{item.suite}/{item.item_id}]")
    return float(value)


def _values(pairs: list[tuple[ItemRecord, ItemRecord]], check: Check,
            where: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, list[str] | None, str]:
    members = [(x, y) for x, y in pairs if x.suite == check.suite]
    kind = KINDS[members[0][0].kind] if members and members[0][0].kind in KINDS else None
    scores = kind.group_scores if kind is not None else None
    if scores is not None and kind is not None and check.metric in {m.name for m in kind.group_tested}:
        base, cand = (_group_scores(scores, [pair[k] for pair in members], where[k]) for k in (0, 1))
        groups = sorted(set(base) & set(cand))
        return (np.array([base[g][check.metric] for g in groups]),
                np.array([cand[g][check.metric] for g in groups]), None, "groups")
    kept = [(x, y) for x, y in members if x.subject.get(check.metric) is not None
            and y.subject.get(check.metric) is not None]
    clusters = [x.cluster or x.item_id for x, _ in kept]
    return (np.array([_number(x, check.metric, where[0]) for x, _ in kept]),
            np.array([_number(y, check.metric, where[1]) for _, y in kept]), clusters, "items")


def _group_scores(scores: Callable, items: list[ItemRecord], side: str) -> dict[str, dict[str, float]]:
    """Per-group scores of one side; a group whose item scores are not numbers is an input error."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite group score is refused below
            table = scores(items, "subject")
    except (KeyError, TypeError, ValueError) as exc:
        raise EvalkitError(f"item scores cannot make group scores: {exc!r}", where=side) from None
    for group, values in table.items():
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise EvalkitError(f"group '{group}': {bad[0]} is not a finite number", where=side)
    return table


def decide(baseline: RunRecord, candidate: RunRecord, policy: Policy, where: str = "gate",
           sides: tuple[str, str] = ("baseline", "candidate")) -> list[Outcome]:
    pairs = pair_records(baseline, candidate, policy.item_tolerance, where)
    check_policy(policy, {s.name: s.kind for s in candidate.manifest.suites}, where)
    measured = []
    for check in policy.checks:
        base, cand, clusters, unit = _values(pairs, check, sides)
        if len(base) == 0:
            raise EvalkitError(f"no scores for {check.suite}/{check.metric} in both runs", where=where,
                               hint="check the suite and metric names against results.json")
        with np.errstate(over="ignore", invalid="ignore"):  # scores near the float limit: refused below
            worse = (cand - base) if check.worse == "higher" else (base - cand)  # positive = worse
            spread = stats.interval_spread(worse, clusters)
            finite = bool(np.isfinite(worse).all() and np.isfinite(worse.mean())
                          and (spread.se is None or np.isfinite(spread.se)))
        if not finite:
            raise EvalkitError(f"{check.suite}/{check.metric}: the scores are too large to compare (their "
                               "differences are not finite numbers)", where=where)
        _require_units(check, len(worse), unit, spread, where)
        measured.append((check, base, cand, worse, unit, spread, _p_worse_than(float(worse.mean()), check.margin,
                                                                              spread)))
    outcomes = []
    for (check, base, cand, worse, unit, spread, p), adjusted in zip(measured, stats.holm([m[-1] for m in measured])):
        alpha = check.alpha if check.alpha is not None else policy.alpha
        level = alpha * p / adjusted if adjusted > 0 else alpha
        outcomes.append(Outcome(
            check=check, n=len(worse), unit=unit, baseline_mean=float(base.mean()), candidate_mean=float(cand.mean()),
            worsening=float(worse.mean()), bound=_lower_bound(float(worse.mean()), spread, level), level=level,
            p_value=p, p_holm=adjusted, test=f"one-sided t, {spread.kind} SE, {spread.units - 1} df", alpha=alpha,
            failed=adjusted < alpha))
    return outcomes


def check_testable(baseline: RunRecord, policy: Policy, where: str) -> None:
    """Every check has at least two units of evidence in the baseline (for `run --gate`, before
    any model work; `decide` asks the same of the paired items)."""
    pairs = [(item, item) for item in baseline.items]
    for check in policy.checks:
        base, _, clusters, unit = _values(pairs, check, ("baseline", "baseline"))
        if len(base):
            _require_units(check, len(base), unit, stats.interval_spread(np.zeros(len(base)), clusters), where)


def _require_units(check: Check, n: int, unit: str, spread: stats.Spread, where: str) -> None:
    """A check on one unit (one item, or items all in one cluster) could never fail: refused, not 'pass'."""
    if not spread.testable:
        what = f"its {n} {unit} are" if n != 1 else f"its one {unit.removesuffix('s')} is"
        raise EvalkitError(f"{check.suite}/{check.metric}: {what} one unit of evidence ({spread.kind} SE over "
                           f"{spread.units}), so no regression could be shown; gate a suite of at least two units "
                           "(items without a cluster, or several clusters)", where=where)


def _p_worse_than(mean: float, margin: float, spread: stats.Spread) -> float:
    """One-sided t test of H1: mean worsening > margin, on the SE and degrees of freedom of the
    interval (CR1 over clusters): the same basis as the printed bound, so the two agree."""
    assert spread.se is not None  # decide refuses a check of one unit
    if spread.se == 0.0:
        return 0.0 if mean > margin else 1.0
    return float(sps.t.sf((mean - margin) / spread.se, spread.units - 1))


def _lower_bound(mean: float, spread: stats.Spread, level: float) -> float:
    """mean - t_{1-level, df} SE: above the margin exactly when p < level."""
    assert spread.se is not None  # decide refuses a check of one unit
    return mean - float(sps.t.ppf(1 - level, spread.units - 1)) * spread.se


def junit_xml(outcomes: list[Outcome], baseline: str, candidate: str) -> str:
    suite = ET.Element("testsuite", name="evalkit gate", tests=str(len(outcomes)),
                       failures=str(sum(o.failed for o in outcomes)), errors="0")
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="baseline", value=baseline)
    ET.SubElement(properties, "property", name="candidate", value=candidate)
    for o in outcomes:
        where = f"{o.candidate}." if o.candidate else ""
        case = ET.SubElement(suite, "testcase", classname=f"evalkit.gate.{where}{o.check.suite}", name=o.check.metric)
        if o.failed:
            failure = ET.SubElement(case, "failure", type="regression",
                                    message=f"{o.name} worse by {o.worsening:+.4f} "
                                            f"(at least {o.bound:+.4f}), "
                                            f"margin {o.check.margin:g}, Holm p {o.p_holm:.4g}")
            failure.text = o.line()
        else:
            ET.SubElement(case, "system-out").text = o.line()
    # Paths and folder names may hold characters XML 1.0 cannot carry even escaped (control
    # characters; undecodable bytes of a file name): each is shown as U+FFFD.
    return _NOT_XML.sub("\ufffd", ET.tostring(suite, encoding="unicode", xml_declaration=True)) + "\n"


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def markdown(outcomes: list[Outcome], baseline: str, candidate: str) -> str:
    failed = sum(o.failed for o in outcomes)
    head = f"### evalkit gate: {'❌ ' + str(failed) + ' regression(s)' if failed else '✅ no regression'}\n\n"
    lines = [head, f"Baseline `{baseline}`, candidate `{candidate}`.\n\n",
             "| check | result | worse by | one-sided bound (level) | margin | Holm p | n |\n"
             "|---|---|---|---|---|---|---|\n"]
    for o in outcomes:
        lines.append(f"| {o.name} ({o.check.worse} is worse) | {'**FAIL**' if o.failed else 'pass'} | "
                     f"{o.worsening:+.4f} | ≥ {o.bound:+.4f} ({1 - o.level:.4g}) | {o.check.margin:g} | "
                     f"{o.p_holm:.4g} | {o.n} {o.unit} |\n")
    lines.append("\nA check fails only when the candidate is significantly worse than the baseline by more than "
                 "its margin (one-sided, Holm across checks).\n")
    return "".join(lines)


def write_outputs(outcomes: list[Outcome], baseline: str, candidate: str, junit: Path | None,
                  summary: Path | None) -> None:
    if junit is not None:
        write_text_atomic(junit, junit_xml(outcomes, baseline, candidate))
    if summary is not None:
        try:
            summary.parent.mkdir(parents=True, exist_ok=True)
            # GitHub appends step summaries; so do we (a file name's undecodable bytes shown as U+FFFD)
            with summary.open("a", encoding="utf-8", errors="replace") as fh:
                fh.write(markdown(outcomes, baseline, candidate))
            note_written(summary)
        except OSError as exc:
            raise cannot_write(summary, exc) from None


# Files Markdown may be appended to: GitHub's step summary file has no suffix.
SUMMARY_SUFFIXES = ("", ".md", ".markdown", ".txt")


def check_outputs(junit: Path | None, summary: Path | None, inputs: list[Path], summary_named: bool = True) -> None:
    """Before deciding: the JUnit XML may replace only an earlier one, the summary is appended to
    (GitHub's step summary is a file the runner made; one the user named must be Markdown's), and
    neither may be one of the inputs."""
    if junit is not None:
        check_file_replaceable(junit, JUNIT_SIGNATURE, inputs)
    if summary is not None:
        if summary.is_dir():
            raise EvalkitError("is a folder; give a file", where=str(summary))
        if any(same_file(summary, Path(source)) for source in inputs):
            raise EvalkitError("is an input of this command; give another file for the summary", where=str(summary))
        if summary.exists() and not summary.is_file():  # a FIFO would block the gate for ever
            raise EvalkitError("is not a plain file; give a file for the summary", where=str(summary))
        if summary_named and summary.suffix.lower() not in SUMMARY_SUFFIXES:  # Markdown would break a .json
            raise EvalkitError("the summary is Markdown: give a .md file, a .txt file or a name without a suffix "
                               "(as $GITHUB_STEP_SUMMARY is)", where=str(summary))
        check_writable(summary)
