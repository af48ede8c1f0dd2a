"""consistency: does the model still answer paraphrases alike. Per paraphrase its choice and
margin; per group agreement with the group's majority and margin variance, paired over groups."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Literal

import numpy as np
from pydantic import Field

from evalkit.kinds.base import Choice, Id, Kind, Metric, Options, Raw, Strict, SuiteSpec, Text, choice_of
from evalkit.record import ItemRecord


class Paraphrase(Strict):
    id: Id
    prompt: Text


class ParaphraseGroup(Strict):
    """Paraphrases of one question, answered from the same options."""

    id: Id
    options: Options
    paraphrases: list[Paraphrase] = Field(min_length=2)


class ConsistencySuite(SuiteSpec):
    """Does the model still answer paraphrases alike: agreement and margin variance per group."""

    kind: Literal["consistency"]
    groups: list[ParaphraseGroup] = Field(min_length=1)

    def choices(self) -> list[Choice]:
        return [Choice(p.id, g.id, p.prompt, tuple(g.options)) for g in self.groups for p in g.paraphrases]


def item_metrics(spec: ConsistencySuite, choices: Raw, generations: Raw, reference_generations: object) -> Raw:
    """Per paraphrase: its choice and margin, and whether it agrees with its group's majority.

    The majority is the option most paraphrases choose; a tie goes to the option with the
    larger summed probability over the group, so it never depends on item order.
    """
    out: Raw = {}
    for group in spec.groups:
        scores = {p.id: choice_of(choices[p.id], spec.normalization) for p in group.paraphrases}
        votes = Counter(s["winner"] for s in scores.values())
        mass: dict[int, float] = defaultdict(float)
        for s in scores.values():
            top = max(s["logprob_sum"])
            total = sum(math.exp(x - top) for x in s["logprob_sum"])
            for k, x in enumerate(s["logprob_sum"]):
                mass[k] += math.exp(x - top) / total
        majority = max(votes, key=lambda k: (votes[k], mass[k]))
        for pid, s in scores.items():
            out[pid] = {**s, "majority": majority, "agrees": int(s["winner"] == majority)}
    return out


def group_scores(items: list[ItemRecord], side: str) -> dict[str, dict[str, float]]:
    """Per paraphrase group, under one side ('reference' or 'subject'): agreement, margin variance."""
    groups: dict[str, list[ItemRecord]] = defaultdict(list)
    for i in items:
        groups[i.cluster or i.item_id].append(i)
    out = {}
    for name, members in groups.items():
        scores = [getattr(m, side) for m in members]
        margins = np.array([float(s["margin"]) for s in scores])
        with np.errstate(over="ignore", invalid="ignore"):  # margins near the float limit: inf, said as such
            variance = float(margins.var(ddof=1)) if len(margins) > 1 else 0.0
        out[name] = {"agreement": float(np.mean([s["agrees"] for s in scores])), "margin_variance": variance}
    return out


KIND = Kind(
    name="consistency", spec=ConsistencySuite, item_metrics=item_metrics,
    tested=(Metric("margin"), Metric("agrees", binary=True, higher_is_better=True)),
    main_metric="margin", key_metric="agreement", heatmap=("agreement", "margin_variance"),
    group_scores=group_scores,
    group_tested=(Metric("agreement", higher_is_better=True), Metric("margin_variance", higher_is_better=False)),
    scores=(("margin", (int, float)), ("agrees", int), ("winner", int)),
)
