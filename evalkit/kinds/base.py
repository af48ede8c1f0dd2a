"""What every suite kind shares: the suite header, the request shapes, the choice metrics, and
`Kind`, the one declaration of what a kind means to the layers that use it.

Every kind reduces to two request shapes that lm-eval runs: a *choice* (a prompt and competing
completions, scored by log-likelihood) and a *generation* (a prompt continued greedily).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Optional, Sequence

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from evalkit.files import ID_PATTERN, not_blank, seen_as

Normalization = Literal["sum", "per_token"]
Text = Annotated[str, Field(min_length=1), AfterValidator(not_blank)]
# A blank cluster would put every item that has one into a single unnamed cluster: leave it out.
Cluster = Annotated[str, AfterValidator(not_blank)]


def _distinct(texts: list[str]) -> list[str]:
    seen = [seen_as(t) for t in texts]
    for k, text in enumerate(texts):
        if seen[k] in seen[:k]:
            first = seen.index(seen[k])
            how = "the same text" if text == texts[first] else \
                "the same text to a reader (they differ only in spaces, invisible characters or Unicode form)"
            raise ValueError(f"options {first + 1} and {k + 1} are {how}: nothing to choose between")
    return texts


Options = Annotated[list[Text], Field(min_length=2), AfterValidator(_distinct)]
"""Two or more completions to choose between, no two alike (a margin between equals is always 0)."""
Id = Annotated[str, Field(pattern=ID_PATTERN)]
Raw = dict[str, dict[str, Any]]  # item id -> raw outputs, or item id -> per-item metrics


@dataclass(frozen=True)
class Choice:
    """One multiple-choice request group: options[0] is the pole margins are measured for."""

    id: str
    cluster: Optional[str]
    prompt: str
    options: tuple[str, ...]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationItem(Strict):
    """An item continued greedily (continuation suites)."""

    id: Id
    cluster: Optional[Cluster] = None
    prompt: Text


@dataclass(frozen=True)
class Generation:
    """What a suite asks to be generated greedily, and how."""

    items: Sequence[GenerationItem]
    max_new_tokens: int
    until: list[str]


class SuiteSpec(Strict):
    """The fields every probe file has; each kind adds `kind` and its items."""

    suite: Id
    """The suite's name; names its lm-eval task and its rows in reports."""
    kind: str
    """Which kind of suite this is (each kind narrows it to its own name)."""
    description: str = ""
    normalization: Normalization = "sum"
    """Which log-probability margins use: summed over the completion's tokens, or per token."""
    delimiter: str = " "
    """Put between the prompt and each completion (lm-eval's target_delimiter; none in chat suites)."""
    chat: bool = Field(default=False, strict=True)  # 'yes' in quotes is not a yes
    """For instruct models: each prompt is the user's turn, rendered with the tokenizer's chat
    template and a generation prompt, and each option or continuation is the assistant's reply
    (as lm-eval does with --apply_chat_template)."""

    @abstractmethod
    def choices(self) -> list[Choice]:
        """The choice requests of the suite (every option of every item)."""

    def generation(self) -> Optional[Generation]:
        """The items generated greedily, if the kind generates (None: it only chooses)."""
        return None

    def item_ids(self) -> list[str]:
        """Every item id, in file order: the unit reference and subject are paired by."""
        return [c.id for c in self.choices()]

    def questions(self) -> dict[str, Choice]:
        """Every item as a Choice, by id in file order, as run records hold it: its cluster, prompt
        and options (generated items without references have none)."""
        generation = self.generation()
        shapes = {i.id: Choice(i.id, i.cluster, i.prompt, ()) for i in (generation.items if generation else [])}
        shapes.update({c.id: c for c in self.choices()})
        return {item_id: shapes[item_id] for item_id in self.item_ids()}

    def clusters(self) -> set[str]:
        return {c.cluster for c in self.questions().values() if c.cluster is not None}


def choice_metrics(logprobs: list[float], n_tokens: list[int], normalization: str) -> dict[str, Any]:
    """Margin of option 0 over its strongest rival, choice entropy (bits), and who wins."""
    per_token = [lp / max(n, 1) for lp, n in zip(logprobs, n_tokens)]
    chosen = logprobs if normalization == "sum" else per_token
    top = max(chosen)
    weights = [math.exp(c - top) for c in chosen]
    probs = [w / sum(weights) for w in weights]
    winner = max(range(len(chosen)), key=lambda i: chosen[i])
    return {
        "margin": chosen[0] - max(chosen[1:]),
        "margin_sum": logprobs[0] - max(logprobs[1:]),
        "margin_per_token": per_token[0] - max(per_token[1:]),
        "entropy": -sum(p * math.log2(p) for p in probs if p > 0),
        "p_a": probs[0],
        "a_wins": int(winner == 0),
        "winner": winner,
        "logprob_sum": list(logprobs),
        "logprob_per_token": per_token,
        "n_tokens": list(n_tokens),
    }


def choice_of(raw: dict[str, Any], normalization: str) -> dict[str, Any]:
    return choice_metrics(raw["logprob_sum"], raw["n_tokens"], normalization)


@dataclass(frozen=True)
class Metric:
    """A per-item (or per-group) score that is tested reference vs subject."""

    name: str
    binary: bool = False
    """A yes/no outcome (McNemar) rather than a continuous score."""
    higher_is_better: Optional[bool] = None
    """Which way is better, where either is (None: moving it is what scenes are for)."""


# (spec, choice outputs, generation outputs, the reference's generations or None) -> item metrics
ItemMetrics = Callable[[Any, Raw, Raw, Optional[dict[str, str]]], Raw]
# (item records, side 'reference' or 'subject') -> group -> group metric -> value
GroupScores = Callable[[list, str], dict[str, dict[str, float]]]


@dataclass(frozen=True)
class Kind:
    """Everything a suite kind means, declared once: its file schema, how raw outputs become
    per-item metrics, which of them are tested (and how), and which the reports lead with.
    Adding a kind is one module that builds one of these (see `evalkit.kinds`)."""

    name: str
    spec: type[SuiteSpec]
    """The pydantic model of its probe files (with `kind: Literal[name]`)."""
    item_metrics: ItemMetrics
    """Raw model outputs -> per-item metrics (pure Python: no torch)."""
    tested: tuple[Metric, ...]
    """Per-item metrics tested over the whole suite (clustered where items share clusters)."""
    main_metric: str
    """The metric 'items that moved most' ranks by."""
    key_metric: str
    """The metric stack trajectories and increments show for this kind."""
    heatmap: tuple[str, ...]
    """Suite-level metrics shown as columns of the compare heatmap."""
    cluster_tested: tuple[str, ...] = ()
    """Metrics also tested per cluster (when the suite has more than one)."""
    lean_verdicts: bool = False
    """Per-cluster results get a verdict from the reference's lean (new, amplified, ...)."""
    group_scores: Optional[GroupScores] = None
    """Scores computed per cluster from its items, then paired over clusters."""
    group_tested: tuple[Metric, ...] = ()
    """The group scores that are tested (and may be gated)."""
    scores: tuple[tuple[str, type | tuple[type, ...]], ...] = ()
    """Per-item scores every record of this kind holds on both sides, with their types: what the
    reports and the gate read. A record without them fails validation, not rendering."""

    def problem(self, scores: dict[str, Any], options: list[str]) -> Optional[str]:
        """What is wrong with one side's scores of an item of this kind, or None."""
        for name, kind in self.scores:
            value = scores.get(name)
            if name not in scores or value is None:
                return f"field '{name}' is missing"
            if isinstance(value, bool) or not isinstance(value, kind):
                return f"field '{name}': {value!r} is not {_TYPE_NAMES.get(kind, 'a number')}"
            odd = [v for v in value if not _finite(v)] if isinstance(value, list) else []
            if odd:
                return f"field '{name}': holds {odd[0]!r}, not a finite number"
        for name, value in scores.items():
            if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
                return f"field '{name}': {value!r} is true/false, not a score"
        tested = {m.name for m in self.tested}
        for name in (*(n for n, _ in self.scores), *tested):  # every number, and every tested metric given
            value = scores.get(name)
            if name in scores and (_number(value) or name in tested) and not _finite(value):
                return f"field '{name}': {value!r} is not a finite number"
        winner = scores.get("winner")
        if winner is not None and not (isinstance(winner, int) and 0 <= winner < len(options)):
            return f"field 'winner': {winner!r} is not the index of one of {len(options)} options"
        for metric in self.tested:
            if metric.binary and metric.name in scores and scores[metric.name] not in (0, 1):
                return f"field '{metric.name}': {scores[metric.name]!r} is not 0 or 1"
        return _out_of_range(scores, options)

    def metric(self, name: str) -> Optional[Metric]:
        return next((m for m in (*self.tested, *self.group_tested) if m.name == name), None)


_TYPE_NAMES: dict[Any, str] = {int: "a whole number", (int, float): "a number", str: "text", list: "a list"}

# Bounds no model's scores leave, whatever the model (a hand-edited record is refused, not
# rendered or gated): probabilities, log-probabilities (up to float rounding) and the entropy of
# a choice among its options.
_ROUNDING = 1e-6
_PER_OPTION = ("logprob_sum", "logprob_per_token", "n_tokens")
_LOG_PROBABILITIES = ("logprob_sum", "logprob_per_token", "token_logprobs")


def _out_of_range(scores: dict[str, Any], options: list[str]) -> Optional[str]:
    for name in _PER_OPTION:
        value = scores.get(name)
        if value is not None and options and (not isinstance(value, list) or len(value) != len(options)
                                              or not all(_finite(v) for v in value)):
            return f"field '{name}': {value!r} is not a list of one number for each of the {len(options)} options"
    for name in _LOG_PROBABILITIES:
        value = scores.get(name)
        positive = next((v for v in value if _number(v) and v > _ROUNDING), None) if isinstance(value, list) else None
        if positive is not None:
            return f"field '{name}': holds {positive!r}, above 0, which no log-probability is"
    bounds = {"p_a": (0.0, 1.0), "kl": (0.0, None), "nll": (0.0, None),
              "entropy": (0.0, math.log2(len(options)) if options else None)}
    for name, (low, high) in bounds.items():
        value = scores.get(name, math.nan)
        if _finite(value) and value < low - _ROUNDING:
            return f"field '{name}': {value!r} is below {low:g}, which no model's {name} is"
        if _finite(value) and high is not None and value > high + _ROUNDING:
            return f"field '{name}': {value!r} is above {high:.4g}, which no model's {name} is here"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)
