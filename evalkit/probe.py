"""Probe suites: declarative YAML files of items, validated with errors that name file, item, field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from evalkit.errors import EvalkitError
from evalkit.files import read_yaml_mapping, stable_hash, validation_error
from evalkit.scene import ID_PATTERN

Normalization = Literal["sum", "per_token"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensionItem(_Strict):
    """A prompt and two or more competing completions; options[0] is the 'a' pole."""

    id: str = Field(pattern=ID_PATTERN)
    cluster: str | None = None
    """Items sharing a cluster (a template, a dilemma) are not independent; SEs account for it."""
    prompt: str = Field(min_length=1)
    options: list[Annotated[str, Field(min_length=1)]] = Field(min_length=2)


class TensionSuite(_Strict):
    """Which choices became contested: margin, entropy and winner over the options."""

    suite: str = Field(pattern=ID_PATTERN)
    kind: Literal["tension"]
    description: str = ""
    normalization: Normalization = "sum"
    """Log-probabilities the margin and entropy use: summed over the option's tokens, or per token."""
    delimiter: str = " "
    """Put between the prompt and each option (lm-eval's target_delimiter)."""
    items: list[TensionItem] = Field(min_length=1)


ProbeSuite = Annotated[Union[TensionSuite], Field(discriminator="kind")]
KINDS = ("tension",)
_SUITE_ADAPTER: TypeAdapter = TypeAdapter(ProbeSuite)


class LoadedSuite(BaseModel):
    """A validated suite with where it came from and its content hash."""

    path: str
    hash: str
    spec: TensionSuite


def load_suite(path: Path) -> LoadedSuite:
    data = read_yaml_mapping(path)
    kind = data.get("kind")
    if kind not in KINDS:
        shown = "missing" if kind is None else f"'{kind}'"
        raise EvalkitError(f"field 'kind' is {shown}; allowed: {', '.join(KINDS)}", where=str(path))
    items = data.get("items")
    if isinstance(items, list):
        if not items:
            raise EvalkitError("field 'items': the suite is empty", where=str(path))
        _check_unique_ids(path, items)
    try:
        spec = _SUITE_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _item_error(path, data, exc) from None
    return LoadedSuite(path=str(path), hash=stable_hash(spec.model_dump(mode="json")), spec=spec)


def _check_unique_ids(path: Path, items: list) -> None:
    seen: set[str] = set()
    for item in items:
        item_id = item.get("id") if isinstance(item, dict) else None
        if item_id in seen:
            raise EvalkitError("field 'id': duplicate item id", where=f"{path} [{item_id}]")
        if item_id is not None:
            seen.add(item_id)


def _item_error(path: Path, data: dict, exc: ValidationError) -> EvalkitError:
    """Name the offending item by its id, and the field inside it."""
    loc = exc.errors()[0]["loc"]
    # With a discriminated union pydantic prefixes the kind tag: (kind, 'items', 3, 'options').
    skip = 1 if loc and loc[0] in KINDS else 0
    rest = loc[skip:]
    if len(rest) >= 2 and rest[0] == "items" and isinstance(rest[1], int):
        item = data["items"][rest[1]]
        item_id = item.get("id") if isinstance(item, dict) else None
        return validation_error(path, exc, str(item_id or f"item #{rest[1] + 1}"), skip=skip + 2)
    return validation_error(path, exc, skip=skip)


def suite_files(path: Path) -> list[Path]:
    if not path.exists():
        raise EvalkitError("no such file or folder", where=str(path))
    if path.is_dir():
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        if not files:
            raise EvalkitError("folder holds no probe files (*.yaml)", where=str(path))
        return files
    return [path]


def load_suites(paths: list[Path]) -> list[LoadedSuite]:
    suites = [load_suite(f) for p in paths for f in suite_files(p)]
    names: set[str] = set()
    for s in suites:
        if s.spec.suite in names:
            raise EvalkitError(f"suite name '{s.spec.suite}' is used by more than one file", where=s.path)
        names.add(s.spec.suite)
    return suites
