"""tension: which choices became contested. A prompt and two or more competing completions;
margin, two-way entropy and who wins, per item and per cluster (dilemma)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from evalkit.kinds.base import Choice, Cluster, Id, Kind, Metric, Options, Raw, Strict, SuiteSpec, Text, choice_of


class TensionItem(Strict):
    """A prompt and two or more competing completions; options[0] is the 'a' pole."""

    id: Id
    cluster: Optional[Cluster] = None
    """Items sharing a cluster (a template, a dilemma) are not independent; SEs account for it."""
    prompt: Text
    options: Options


class TensionSuite(SuiteSpec):
    """Which choices became contested: margin, entropy and winner over the options."""

    kind: Literal["tension"]
    items: list[TensionItem] = Field(min_length=1)

    def choices(self) -> list[Choice]:
        return [Choice(i.id, i.cluster, i.prompt, tuple(i.options)) for i in self.items]


def item_metrics(spec: TensionSuite, choices: Raw, generations: Raw, reference_generations: object) -> Raw:
    return {i.id: choice_of(choices[i.id], spec.normalization) for i in spec.items}


KIND = Kind(
    name="tension", spec=TensionSuite, item_metrics=item_metrics,
    tested=(Metric("margin"), Metric("entropy", higher_is_better=False), Metric("a_wins", binary=True)),
    main_metric="margin", key_metric="margin", heatmap=("margin", "entropy"), cluster_tested=("margin",),
    scores=(("margin", (int, float)), ("entropy", (int, float)), ("a_wins", int), ("winner", int)),
)
