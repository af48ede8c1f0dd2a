"""Reports over many runs: the compare heatmap (run x suite metric, run x cluster), stack
trajectories, and the experiment index with increments and removals."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from evalkit.kinds import HEATMAP_ORDER, KINDS
from evalkit.record import Effect, RunRecord
from evalkit.report import charts
from evalkit.report.format import num, pval
from evalkit.report.render import write_page

# The metric each kind shows in trajectories and increments.
KEY_METRICS = [(kind, KINDS[kind].key_metric) for kind in HEATMAP_ORDER]
# The suite-level columns of the compare heatmap (all metrics remain in each run report).
HEATMAP_METRICS = [(kind, metric) for kind in HEATMAP_ORDER for metric in KINDS[kind].heatmap]


def _row_label(record: RunRecord) -> tuple[str, str]:
    kind = {"adapter": "LoRA", "checkpoint": "scratch", "base": "base"}[record.subject.kind]
    if len(record.subject.scene_ids) > 1:
        if record.subject.kind == "adapter":
            kind = f"stack {len(record.subject.scene_ids)}"
        return kind, " + ".join(record.subject.scene_ids)
    return kind, record.subject.scene_title or record.subject.name


def stack_trajectory(records: list[RunRecord]) -> dict | None:
    """Key metrics against stack depth k, when the runs include adapters for scenes 1..k."""
    chain = sorted((r for r in records if r.subject.kind == "adapter" and len(r.subject.scene_ids) >= 1),
                   key=lambda r: len(r.subject.scene_ids))
    longest = max((r.subject.scene_ids for r in chain), key=len, default=[])
    stacks = {len(r.subject.scene_ids): r for r in chain
              if r.subject.scene_ids == longest[: len(r.subject.scene_ids)] and len(longest) > 1}
    if len(stacks) < 2:
        return None
    colours = ["#1565c0", "#c77700", "#2e7d32", "#6a1b9a"]
    series = []
    for (suite_kind, metric), colour in zip(KEY_METRICS, colours):
        points = []
        for k, r in sorted(stacks.items()):
            e = next((e for e in r.effects if e.metric == metric and e.scope in ("suite", "groups")
                      and any(s.name == e.suite and s.kind == suite_kind for s in r.manifest.suites)), None)
            if e is not None and e.ci_low is not None and e.ci_high is not None:  # untestable: no bounds to draw
                points.append({"k": k, "mean": e.mean_diff, "lo": e.ci_low, "hi": e.ci_high,
                               "title": f"k={k}: {num(e.mean_diff)} [{num(e.ci_low)}, {num(e.ci_high)}]"})
        if points:
            series.append({"name": f"{suite_kind} {metric}", "colour": colour, "points": points})
    return charts.trajectory(series, sorted(stacks)) if series else None


def _cell(e: Effect | None, in_nats: bool = False) -> dict[str, str]:
    """A heatmap cell: d_z (or, for yes/no scores, the rate change; for clusters, nats)."""
    if e is None:
        return {"text": "", "colour": charts.diverging_colour(None, 1.0), "title": ""}
    binary = e.effect_size_kind.startswith("rate difference")
    value: float | None
    value, limit = (e.mean_diff, 1.0) if binary else (e.mean_diff, 3.0) if in_nats else (e.d_z, 2.0)
    star = "*" if e.significant and not e.within_seed_noise else ""
    text = (f"{100 * e.mean_diff:+.0f}%" if binary else f"{e.mean_diff:+.2f}" if in_nats else num(e.d_z, 2)) + star
    return {"text": text, "colour": charts.diverging_colour(value, limit),
            "title": f"{e.suite} {e.metric} ({e.scope}): difference {num(e.mean_diff)} [{num(e.ci_low)}, "
                     f"{num(e.ci_high)}], q {pval(e.q_value)}, d_z {num(e.d_z, 2)}"
                     + (" - within seed noise" if e.within_seed_noise else "")}


def compare_view(records: list[RunRecord], links: list[str]) -> dict[str, Any]:
    kinds = {s.name: s.kind for r in records for s in r.manifest.suites}
    suite_cols = [(suite, metric) for kind, metric in HEATMAP_METRICS for suite, k in kinds.items() if k == kind]
    cluster_cols = sorted({(e.suite, e.scope) for r in records for e in r.effects if e.scope.startswith("cluster:")},
                          key=lambda c: (kinds.get(c[0], ""), c))
    order = {"LoRA": 0, "scratch": 2}
    rows = []
    for r, link in sorted(zip(records, links), key=lambda t: (order.get(_row_label(t[0])[0], 1), t[0].run_id)):
        kind, title = _row_label(r)
        suite_level = {(e.suite, e.metric): e for e in r.effects if e.scope in ("suite", "groups")}
        clusters = {(e.suite, e.scope): e for e in r.effects if e.scope.startswith("cluster:")}
        rows.append({"kind": kind, "title": title, "name": r.run_id, "href": link, "reference": r.reference.name,
                     "cells": [_cell(suite_level.get(c)) for c in suite_cols],
                     "cluster_cells": [_cell(clusters.get(c), in_nats=True) for c in cluster_cols]})
    return {"columns": [{"suite": s, "metric": m} for s, m in suite_cols],
            "cluster_columns": [{"suite": s, "cluster": c.removeprefix("cluster:")} for s, c in cluster_cols],
            "rows": rows, "trajectory": stack_trajectory(records), "alpha": records[0].stats.alpha if records else 0.05}


def relative_link(target: Path, start: Path) -> str:
    """An href to `target` from a page in `start`: a relative path, every part URL-quoted, so no
    folder name (`javascript:...`, quotes, angle brackets) can become a scheme or markup."""
    link = quote(Path(os.path.relpath(target, start)).as_posix(), safe="/")
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or link.startswith("/"):
        raise ValueError(f"not a relative link: {link}")
    return link


def write_compare_report(records: list[RunRecord], reports: list[Path], out: Path) -> Path:
    links = [relative_link(p, out.parent) for p in reports]
    return write_page("compare.html.j2", compare_view(records, links), out)


def _increment_row(label: str, record: RunRecord, link: str) -> dict[str, Any]:
    kinds = {x.name: x.kind for x in record.manifest.suites}
    cells = []
    for kind, metric in KEY_METRICS:
        e = next((e for e in record.effects if e.metric == metric and e.scope in ("suite", "groups")
                  and kinds.get(e.suite) == kind), None)
        cells.append({"text": "" if e is None else f"{e.mean_diff:+.3f} [{num(e.ci_low)}, {num(e.ci_high)}]"
                      + (" *" if e.significant else ""),
                      "colour": charts.diverging_colour(e.d_z if e else None, 2.0)})
    clusters = sorted((e for e in record.effects if e.scope.startswith("cluster:") and e.significant),
                      key=lambda e: -abs(e.mean_diff))
    return {"label": label, "href": link, "cells": cells, "reference": record.reference.name,
            "clusters": ", ".join(f"{e.scope.removeprefix('cluster:')} {e.mean_diff:+.2f} "
                                  f"[{e.ci_low:+.2f}, {e.ci_high:+.2f}]" for e in clusters[:4])}


def write_experiment_report(name: str, sections: dict[str, list[tuple[str, RunRecord]]], out: Path) -> Path:
    """The experiment's index: effects per scene (LoRA beside scratch), increments, removals."""
    overview = [(r, f"{section}/{quote(run_id)}/report.html") for section in ("scenes", "stacks", "named", "scratch")
                for run_id, r in sections.get(section, [])]
    view = compare_view([r for r, _ in overview], [link for _, link in overview])
    stacks = [r for _, r in sections.get("scenes", [])[:1]] + [r for _, r in sections.get("stacks", [])]
    view["trajectory"] = stack_trajectory(stacks)
    increments = [_increment_row(f"+ {r.subject.scene_ids[-1]} (stack {len(r.subject.scene_ids)} over "
                                 f"{len(r.subject.scene_ids) - 1})", r, f"increments/{quote(run_id)}/report.html")
                  for run_id, r in sections.get("increments", [])]
    removals = [_increment_row(f"without {run_id.removeprefix('without-')}", r, f"removals/{quote(run_id)}/report.html")
                for run_id, r in sections.get("removals", [])]
    return write_page("experiment.html.j2", {"name": name, **view, "increments": increments, "removals": removals,
                                             "key_metrics": [f"{k} {m}" for k, m in KEY_METRICS]}, out)
