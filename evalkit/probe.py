"""Probe suites: declarative YAML files of items, validated with errors that name file, item, field.

Four kinds (DESIGN.md): continuation, novel_axis, tension, consistency. Every kind reduces to
two request shapes that lm-eval runs: a *choice* (a prompt and competing completions, scored
by log-likelihood) and a *generation* (a prompt continued greedily).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from evalkit.errors import EvalkitError
from evalkit.files import read_yaml_mapping, stable_hash, validation_error, yaml_files
from evalkit.scene import ID_PATTERN

Normalization = Literal["sum", "per_token"]
Text = Annotated[str, Field(min_length=1)]
Id = Annotated[str, Field(pattern=ID_PATTERN)]


@dataclass(frozen=True)
class Choice:
    """One multiple-choice request group: options[0] is the pole margins are measured for."""

    id: str
    cluster: str | None
    prompt: str
    options: tuple[str, ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _SuiteBase(_Strict):
    suite: Id
    """The suite's name; names its lm-eval task and its rows in reports."""
    description: str = ""
    normalization: Normalization = "sum"
    """Which log-probability margins use: summed over the completion's tokens, or per token."""
    delimiter: str = " "
    """Put between the prompt and each completion (lm-eval's target_delimiter)."""


# --- tension ---------------------------------------------------------------------------------

class TensionItem(_Strict):
    """A prompt and two or more competing completions; options[0] is the 'a' pole."""

    id: Id
    cluster: str | None = None
    """Items sharing a cluster (a template, a dilemma) are not independent; SEs account for it."""
    prompt: Text
    options: list[Text] = Field(min_length=2)


class TensionSuite(_SuiteBase):
    """Which choices became contested: margin, entropy and winner over the options."""

    kind: Literal["tension"]
    items: list[TensionItem] = Field(min_length=1)

    def choices(self) -> list[Choice]:
        return [Choice(i.id, i.cluster, i.prompt, tuple(i.options)) for i in self.items]


# --- novel axis ------------------------------------------------------------------------------

class AxisPair(_Strict):
    """One contrast on an axis: the same prompt, continued towards pole a or pole b."""

    id: Id
    axis: Id
    """The axis this pair measures; pairs of one axis form a cluster."""
    prompt: Text
    pole_a: Text
    pole_b: Text


class NovelAxisSuite(_SuiteBase):
    """Did a new axis of behaviour appear: margin log p(pole_a) - log p(pole_b), per axis."""

    kind: Literal["novel_axis"]
    axes: dict[Id, str] = {}
    """Optional description of each axis, shown in the report."""
    items: list[AxisPair] = Field(min_length=1)

    def choices(self) -> list[Choice]:
        return [Choice(i.id, i.axis, i.prompt, (i.pole_a, i.pole_b)) for i in self.items]


# --- consistency -----------------------------------------------------------------------------

class Paraphrase(_Strict):
    id: Id
    prompt: Text


class ParaphraseGroup(_Strict):
    """Paraphrases of one question, answered from the same options."""

    id: Id
    options: list[Text] = Field(min_length=2)
    paraphrases: list[Paraphrase] = Field(min_length=2)


class ConsistencySuite(_SuiteBase):
    """Does the model still answer paraphrases alike: agreement and margin variance per group."""

    kind: Literal["consistency"]
    groups: list[ParaphraseGroup] = Field(min_length=1)

    def choices(self) -> list[Choice]:
        return [Choice(p.id, g.id, p.prompt, tuple(g.options)) for g in self.groups for p in g.paraphrases]


# --- continuation ----------------------------------------------------------------------------

class ContinuationItem(_Strict):
    id: Id
    cluster: str | None = None
    prompt: Text
    references: list[Text] | None = Field(default=None, min_length=2)
    """Optional reference continuations, preferred first: gives a reference-preference margin."""


class ContinuationSuite(_SuiteBase):
    """How generations changed: greedy text, KL(subject||reference), NLL of the reference's text."""

    kind: Literal["continuation"]
    max_new_tokens: int = Field(default=24, ge=1, le=512)
    until: list[str] = ["\n"]
    """Stop sequences for greedy generation (the end-of-text token always stops too)."""
    items: list[ContinuationItem] = Field(min_length=1)

    def choices(self) -> list[Choice]:
        return [Choice(i.id, i.cluster, i.prompt, tuple(i.references)) for i in self.items if i.references]


AnySuite = Union[TensionSuite, NovelAxisSuite, ConsistencySuite, ContinuationSuite]
KINDS = ("continuation", "novel_axis", "tension", "consistency")
_SUITE_ADAPTER: TypeAdapter = TypeAdapter(Annotated[AnySuite, Field(discriminator="kind")])


def suite_json_schema() -> dict:
    """JSON Schema for probe files, for editors (`evalkit schema`)."""
    schema = _SUITE_ADAPTER.json_schema()
    schema["title"] = "evalkit probe suite"
    return schema


class LoadedSuite(BaseModel):
    """A validated suite with where it came from and its content hash."""

    path: str
    hash: str
    spec: AnySuite = Field(discriminator="kind")

    @property
    def name(self) -> str:
        return self.spec.suite

    def clusters(self) -> set[str]:
        found = {c.cluster for c in self.spec.choices()}
        if isinstance(self.spec, ContinuationSuite):
            found |= {i.cluster for i in self.spec.items}
        return {c for c in found if c is not None}

    def item_ids(self) -> list[str]:
        if isinstance(self.spec, ConsistencySuite):
            return [p.id for g in self.spec.groups for p in g.paraphrases]
        return [i.id for i in self.spec.items]


def load_suite(path: Path) -> LoadedSuite:
    data = read_yaml_mapping(path)
    kind = data.get("kind")
    if kind not in KINDS:
        shown = "missing" if kind is None else f"'{kind}'"
        raise EvalkitError(f"field 'kind' is {shown}; allowed: {', '.join(KINDS)}", where=str(path))
    listing = "groups" if kind == "consistency" else "items"
    entries = data.get(listing)
    if isinstance(entries, list):
        if not entries:
            raise EvalkitError(f"field '{listing}': the suite is empty", where=str(path))
        _check_unique_ids(path, entries, nested="paraphrases" if kind == "consistency" else None)
    try:
        spec = _SUITE_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _item_error(path, data, exc) from None
    return LoadedSuite(path=str(path), hash=stable_hash(spec.model_dump(mode="json")), spec=spec)


def _check_unique_ids(path: Path, entries: list, nested: str | None) -> None:
    """Item ids pair reference with subject, so a duplicate would pair the wrong scores."""
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        children = entry.get(nested) if nested else None
        for child in [entry, *(children if isinstance(children, list) else [])]:
            item_id = child.get("id") if isinstance(child, dict) else None
            if item_id is None:
                continue
            if item_id in seen:
                raise EvalkitError("field 'id': duplicate id", where=f"{path} [{item_id}]")
            seen.add(item_id)


def _item_error(path: Path, data: dict, exc: ValidationError) -> EvalkitError:
    """Name the offending item (or group, or paraphrase) by its id, and the field inside it."""
    loc = exc.errors()[0]["loc"]
    # With a discriminated union pydantic prefixes the kind tag: (kind, 'items', 3, 'options').
    skip = 1 if loc and loc[0] in KINDS else 0
    rest = loc[skip:]
    if len(rest) >= 2 and rest[0] in ("items", "groups") and isinstance(rest[1], int):
        entry = data[rest[0]][rest[1]]
        names = [_entry_id(entry, rest[1])]
        used = 2
        if len(rest) >= 4 and rest[2] == "paraphrases" and isinstance(rest[3], int) and isinstance(entry, dict):
            names.append(_entry_id(entry["paraphrases"][rest[3]], rest[3]))
            used = 4
        return validation_error(path, exc, " / ".join(names), skip=skip + used)
    return validation_error(path, exc, skip=skip)


def _entry_id(entry: object, index: int) -> str:
    item_id = entry.get("id") if isinstance(entry, dict) else None
    return str(item_id) if item_id else f"#{index + 1}"


def suite_files(path: Path) -> list[Path]:
    return yaml_files(path, "probe")


def load_suites(paths: list[Path]) -> list[LoadedSuite]:
    suites = [load_suite(f) for p in paths for f in suite_files(p)]
    names: set[str] = set()
    for s in suites:
        if s.name in names:
            raise EvalkitError(f"suite name '{s.name}' is used by more than one file", where=s.path)
        names.add(s.name)
    return suites
