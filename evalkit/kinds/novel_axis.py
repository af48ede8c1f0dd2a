"""novel_axis: did a new axis of behaviour appear. An axis is a set of contrast pairs (prompt,
pole_a, pole_b); margin = log p(pole_a) - log p(pole_b), tested per axis with a verdict from the
reference's own lean (new, amplified, reversed, attenuated)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from evalkit.kinds.base import Choice, Id, Kind, Metric, Raw, Strict, SuiteSpec, Text, choice_of


class AxisPair(Strict):
    """One contrast on an axis: the same prompt, continued towards pole a or pole b."""

    id: Id
    axis: Id
    """The axis this pair measures; pairs of one axis form a cluster."""
    prompt: Text
    pole_a: Text
    pole_b: Text

    @model_validator(mode="after")
    def _two_poles(self) -> "AxisPair":
        if self.pole_a == self.pole_b:
            raise ValueError("pole_a and pole_b are the same text: nothing to choose between")
        return self


class NovelAxisSuite(SuiteSpec):
    """Did a new axis of behaviour appear: margin log p(pole_a) - log p(pole_b), per axis."""

    kind: Literal["novel_axis"]
    axes: dict[Id, str] = {}
    """Optional description of each axis, shown in the report."""
    items: list[AxisPair] = Field(min_length=1)

    def choices(self) -> list[Choice]:
        return [Choice(i.id, i.axis, i.prompt, (i.pole_a, i.pole_b)) for i in self.items]


def item_metrics(spec: NovelAxisSuite, choices: Raw, generations: Raw, reference_generations: object) -> Raw:
    return {i.id: choice_of(choices[i.id], spec.normalization) for i in spec.items}


KIND = Kind(
    name="novel_axis", spec=NovelAxisSuite, item_metrics=item_metrics, tested=(Metric("margin"),),
    main_metric="margin", key_metric="margin", heatmap=("margin",), cluster_tested=("margin",), lean_verdicts=True,
    scores=(("margin", (int, float)), ("winner", int)),
)
