"""Probe suites: declarative YAML files of items, validated with errors that name file, item, field.

The kinds and their schemas are declared in `evalkit.kinds`; this module reads files into them.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from evalkit.errors import EvalkitError
from evalkit.files import read_yaml_mapping, seen_as, stable_hash, validation_error, yaml_files
from evalkit.kinds import KINDS, Choice, Kind, SuiteSpec

if TYPE_CHECKING:
    AnySuite = SuiteSpec
else:
    AnySuite = Annotated[Union[tuple(k.spec for k in KINDS.values())], Field(discriminator="kind")]
_SUITE_ADAPTER: TypeAdapter = TypeAdapter(AnySuite)


def suite_json_schema() -> dict:
    """JSON Schema for probe files, for editors (`evalkit schema`)."""
    schema = _SUITE_ADAPTER.json_schema()
    schema["title"] = "evalkit probe suite"
    return schema


class LoadedSuite(BaseModel):
    """A validated suite with where it came from and its content hash."""

    path: str
    hash: str
    spec: AnySuite

    @property
    def name(self) -> str:
        return self.spec.suite

    @property
    def task_stem(self) -> str:
        """The name as lm-eval task names carry it ('-' written '_'): 'a-b' and 'a_b' are one task."""
        return self.name.replace("-", "_")

    @property
    def kind(self) -> Kind:
        return KINDS[self.spec.kind]

    def clusters(self) -> set[str]:
        return self.spec.clusters()

    def item_ids(self) -> list[str]:
        return self.spec.item_ids()

    def scoring(self) -> dict[str, Any]:
        """Every setting of the suite that changes its scores: all but its name, description, items
        (or groups) and axis labels; a field a kind adds counts. Stop strings are a set (every one
        cuts), and a chat suite puts no delimiter between prompt and reply."""
        settings = self.spec.model_dump(mode="json", exclude={"suite", "description", "items", "groups", "axes"})
        if "until" in settings:
            settings["until"] = sorted(set(settings["until"]))
        if settings.get("chat"):
            settings.pop("delimiter", None)
        return settings

    def questions(self) -> dict[str, Choice]:
        return self.spec.questions()


PLACEHOLDER = re.compile(r"\{(\w+)\}")
# Items (or groups) one suite may expand to: far beyond any probe set a run can score, and a
# bound on what a few lines of fills can make.
MAX_ITEMS = 100_000
MAX_EXPANDED_CHARS = 20_000_000  # fill words can each be an alias of one long text


def expand_templates(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """CheckList-style templates: `fills` names lists of words, each of `templates` is an item
    (a group, for consistency) whose text uses {name} placeholders, and becomes one item per
    combination of the fills it uses, numbered `<template id>-<k>`; items of one template share
    a cluster (the template's `cluster`, else its id), so their SEs account for it."""
    templates, fills = data.pop("templates", None), data.pop("fills", {})
    if templates is None:
        return data
    if not isinstance(templates, list) or not isinstance(fills, dict) or not all(
            isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in fills.values()):
        raise EvalkitError("fields 'templates' and 'fills': a list of items, and lists of words by name",
                           where=str(path))
    listing = "groups" if data.get("kind") == "consistency" else "items"
    existing = data.get(listing) or []
    if not isinstance(existing, list):
        raise EvalkitError(f"field '{listing}': expected a list", where=str(path))
    expanded = list(existing)
    for k, template in enumerate(templates):
        if not isinstance(template, dict) or not isinstance(template.get("id"), str):
            raise EvalkitError(f"field 'templates.{k}': a template needs an 'id'", where=str(path))
        used = sorted(set(PLACEHOLDER.findall(json.dumps(template))))
        unknown = [u for u in used if u not in fills]
        if unknown:
            raise EvalkitError(f"field 'templates.{k}': {{{unknown[0]}}} has no fill; fills: "
                               f"{', '.join(fills) or 'none'}", where=f"{path} [{template['id']}]")
        twice = next((u for u in used if len(set(fills[u])) < len(fills[u])), None)
        if twice is not None:  # two alike words make two alike items, which would count twice
            raise EvalkitError(f"field 'fills.{twice}': a word is given twice", where=str(path))
        count = math.prod(len(fills[u]) for u in used)
        if len(expanded) + count > MAX_ITEMS:
            raise EvalkitError(f"field 'templates.{k}': its fills make {count:,} {listing}; a suite holds at most "
                               f"{MAX_ITEMS:,}", where=f"{path} [{template['id']}]")
        size = count * (len(json.dumps(template)) + sum(max(map(len, fills[u])) for u in used))
        if size > MAX_EXPANDED_CHARS:
            raise EvalkitError(f"field 'templates.{k}': its fills make about {size:,} characters of items; a suite "
                               f"holds at most {MAX_EXPANDED_CHARS:,}", where=f"{path} [{template['id']}]")
        for n, values in enumerate(itertools.product(*(fills[u] for u in used)), start=1):
            fill = dict(zip(used, values))
            item = _fill(template, fill)
            item["id"] = f"{template['id']}-{n}"
            if listing == "groups":
                for j, paraphrase in enumerate(item.get("paraphrases") or [], start=1):
                    if isinstance(paraphrase, dict):
                        paraphrase["id"] = f"{item['id']}-{paraphrase.get('id', j)}"
            elif data.get("kind") != "novel_axis":
                item.setdefault("cluster", template["id"])
            expanded.append(item)
    data[listing] = expanded
    return data


def _fill(value: Any, fill: dict[str, str]) -> Any:
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: fill.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [_fill(v, fill) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, fill) for k, v in value.items()}
    return value


def load_suite(path: Path) -> LoadedSuite:
    data = expand_templates(read_yaml_mapping(path), path)
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        shown = "missing" if kind is None else repr(kind)
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
    _check_spacing(path, spec)
    _check_no_repeats(path, spec)
    _check_cluster_names(path, spec)
    return LoadedSuite(path=str(path), hash=stable_hash(spec.model_dump(mode="json")), spec=spec)


def _check_no_repeats(path: Path, spec: Any) -> None:
    """Items are the units every test counts: one question written twice under two ids would be
    counted as two independent answers (six copies of one item gave p = 0.03 from one item)."""
    seen: dict[tuple, str] = {}
    generation = spec.generation()
    asked: list[tuple[str, tuple]] = [(c.id, ("choice", seen_as(c.prompt), tuple(seen_as(o) for o in c.options)))
                                      for c in spec.choices()]
    asked += [(i.id, ("generation", seen_as(i.prompt))) for i in (generation.items if generation else [])]
    for item_id, question in asked:
        if question in seen and seen[question] != item_id:
            same = "prompt and options" if question[0] == "choice" else "prompt, continued greedily"
            raise EvalkitError(f"field 'prompt': item '{seen[question]}' asks the same ({same}); a repeated item "
                               "would be counted as two answers", where=f"{path} [{item_id}]")
        seen.setdefault(question, item_id)


def _check_cluster_names(path: Path, spec: Any) -> None:
    """Items share a cluster by its name: one name written two ways a reader cannot tell apart
    (NFC and NFD, a zero-width character, a trailing space) would split it, and every test
    would count its halves as independent clusters."""
    first: dict[str, tuple[str, str]] = {}
    for item_id, cluster in ((c.id, c.cluster) for c in spec.questions().values()):
        if cluster is None:
            continue
        other, other_item = first.setdefault(seen_as(cluster), (cluster, item_id))
        if other != cluster:
            raise EvalkitError(f"field 'cluster': {cluster!r} reads like {other!r} (cluster of item '{other_item}'), "
                               "differing only in spaces, invisible characters or Unicode form; name one cluster "
                               "one way", where=f"{path} [{item_id}]")


def _check_spacing(path: Path, spec: Any) -> None:
    """An option that starts with a space after a delimiter that ends with one puts two spaces
    before it: text no model was trained on, scored as if it were the option."""
    if spec.chat or not spec.delimiter[-1:].isspace():
        return
    for choice in spec.choices():
        for k, option in enumerate(choice.options):
            if option[:1].isspace():
                field = {"novel_axis": ("pole_a", "pole_b")[k % 2],
                         "continuation": f"references.{k}"}.get(spec.kind, f"options.{k}")
                raise EvalkitError(f"field '{field}': starts with a space, and the delimiter {spec.delimiter!r} "
                                   "already puts one before it (the model would see two); drop one",
                                   where=f"{path} [{choice.id}]")


def _check_unique_ids(path: Path, entries: list, nested: str | None) -> None:
    """Item ids pair reference with subject, so a duplicate would pair the wrong scores."""
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        children = entry.get(nested) if nested else None
        for child in [entry, *(children if isinstance(children, list) else [])]:
            item_id = child.get("id") if isinstance(child, dict) else None
            if not isinstance(item_id, str):  # absent or not text: the schema names it
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


def _entry_id(entry: Any, index: int) -> str:
    item_id = entry.get("id") if isinstance(entry, dict) else None
    return str(item_id) if item_id else f"#{index + 1}"


def suite_files(path: Path) -> list[Path]:
    return yaml_files(path, "probe")


def load_suites(paths: list[Path]) -> list[LoadedSuite]:
    suites = [load_suite(f) for p in paths for f in suite_files(p)]
    names: dict[str, str] = {}
    for s in suites:
        if s.task_stem in names:
            first = names[s.task_stem]
            what = f"suite name '{s.name}' is" if first == s.name else \
                f"suite names '{first}' and '{s.name}' (one lm-eval task: - is written _) are"
            raise EvalkitError(f"{what} used by more than one file", where=s.path)
        names[s.task_stem] = s.name
    return suites
