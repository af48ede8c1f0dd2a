"""continuation: how generations changed. Greedy text under each model; KL(subject || reference)
and the NLL along the reference's greedy continuation; a reference-preference margin when the
item gives reference continuations."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import Field

from evalkit.kinds.base import (
    Choice,
    Generation,
    GenerationItem,
    Kind,
    Metric,
    Options,
    Raw,
    SuiteSpec,
    choice_of,
)


class ContinuationItem(GenerationItem):
    references: Optional[Options] = None
    """Optional reference continuations, preferred first: gives a reference-preference margin."""


class ContinuationSuite(SuiteSpec):
    """How generations changed: greedy text, KL(subject||reference), NLL of the reference's text."""

    kind: Literal["continuation"]
    max_new_tokens: int = Field(default=24, ge=1, le=512, strict=True)  # not true (1) nor '20'
    until: list[Annotated[str, Field(min_length=1)]] = ["\n"]
    """Stop sequences for greedy generation (the end-of-text token always stops too)."""
    items: list[ContinuationItem] = Field(min_length=1)

    def choices(self) -> list[Choice]:
        return [Choice(i.id, i.cluster, i.prompt, tuple(i.references)) for i in self.items if i.references]

    def generation(self) -> Generation:
        return Generation(self.items, self.max_new_tokens, self.until)

    def item_ids(self) -> list[str]:
        return [i.id for i in self.items]


def item_metrics(spec: ContinuationSuite, choices: Raw, generations: Raw,
                 reference_generations: Optional[dict[str, str]]) -> Raw:
    """Generation, KL and NLL along the reference's continuation, and the reference margin.

    `reference_generations` is None when scoring the reference itself (KL is then 0).
    """
    out: Raw = {}
    for item in spec.items:
        gen = generations[item.id]
        ref_text = gen["generation"] if reference_generations is None else reference_generations[item.id]
        n = gen["n_tokens"]
        scores: dict[str, Any] = {
            "generation": gen["generation"],
            "reference_generation": ref_text,
            "changed": int(gen["generation"] != ref_text),
            "kl": 0.0 if reference_generations is None else gen["kl_mean"],
            "nll": gen["nll_sum"] / n if n else 0.0,
            "nll_sum": gen["nll_sum"],
            "continuation_tokens": n,
            "token_logprobs": gen["token_logprobs"],
            "tokens": gen["tokens"],
        }
        if item.references:
            scores["ref_margin"] = choice_of(choices[item.id], spec.normalization)["margin"]
        out[item.id] = scores
    return out


KIND = Kind(
    name="continuation", spec=ContinuationSuite, item_metrics=item_metrics,
    tested=(Metric("kl", higher_is_better=False), Metric("nll", higher_is_better=False),
            Metric("changed", binary=True), Metric("ref_margin", higher_is_better=True)),
    main_metric="kl", key_metric="kl", heatmap=("kl", "nll", "changed"),
    scores=(("generation", str), ("nll", (int, float)), ("changed", int), ("token_logprobs", list)),
)
