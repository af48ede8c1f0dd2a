"""How long the statistics take for 10 subjects x 4 suites x 100 items (issue: under 10 s).

Scripted per-item scores (no model): every suite kind with its metrics, items in clusters of
10, shifts drawn from a seeded generator. Prints wall time for the effects of all subjects.

    .venv/bin/python benchmarks/bench_stats.py
"""

from __future__ import annotations

import time

import numpy as np

from evalkit.decide.effects import suite_effects
from evalkit.record import ItemRecord
from evalkit.settings import StatsSettings

SUBJECTS, ITEMS, CLUSTER = 10, 100, 10


def scores(rng: np.random.Generator, kind: str, shift: float) -> dict:
    margin = float(rng.normal(shift, 1.0))
    if kind == "continuation":
        return {"kl": abs(float(rng.normal(shift, 0.3))), "nll": float(rng.normal(2 + shift, 0.5)),
                "changed": int(rng.random() < 0.3), "ref_margin": margin}
    out = {"margin": margin, "entropy": float(rng.uniform(0, 1)), "a_wins": int(margin > 0)}
    if kind == "consistency":
        out["agrees"] = int(rng.random() < 0.8)
    return out


def subject_items(rng: np.random.Generator, shift: float) -> list[ItemRecord]:
    items = []
    for kind in ("tension", "novel_axis", "consistency", "continuation"):
        for i in range(ITEMS):
            items.append(ItemRecord(
                suite=kind, kind=kind, item_id=f"{kind}-{i}", cluster=f"c{i // CLUSTER}", prompt="p",
                reference=scores(rng, kind, 0.0), subject=scores(rng, kind, shift)))
    return items


def main() -> None:
    rng = np.random.default_rng(0)
    data = [subject_items(rng, shift=0.1 * k) for k in range(SUBJECTS)]
    settings = StatsSettings()
    started = time.perf_counter()
    effects = [suite_effects(items, settings) for items in data]
    elapsed = time.perf_counter() - started
    n_effects = sum(len(e) for e in effects)
    print(f"{SUBJECTS} subjects x 4 suites x {ITEMS} items: {n_effects} effects in {elapsed:.2f} s "
          f"({1000 * elapsed / n_effects:.1f} ms per effect; default CI = t interval)")
    boot = StatsSettings(ci="bootstrap")
    started = time.perf_counter()
    for items in data:
        suite_effects(items, boot)
    print(f"same with ci=bootstrap ({boot.resamples} resamples): {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
