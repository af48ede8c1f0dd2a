"""Experiment plans: which scenes, which stacks, which scratch checkpoints (a documented schema).

Validated whole before anything is trained: unknown scenes, cycles and duplicates in named
stacks and unknown keys are one-line errors naming the plan file and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from evalkit.errors import EvalkitError
from evalkit.files import ID_PATTERN, parse_model, read_yaml_mapping
from evalkit.inputs.scenes import Scene, TrainingOverrides, load_scene, scene_files
from evalkit.settings import MAX_SEED

Id = Annotated[str, Field(pattern=ID_PATTERN)]
Members = Annotated[list[str], Field(min_length=1)]
# Labels the plan gives models itself: a named stack may not take one of them.
GENERATED_LABEL = re.compile(r"^(stack-\d+|without-.*|scratch-.*)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StackPlan(_Strict):
    cumulative: bool = Field(default=True, strict=True)
    """Stacks 1..k over `scenes` in order: how each added scene moves the model."""
    leave_one_out: bool = Field(default=True, strict=True)
    """The full stack without scene j, for every j: what removing (or replacing) j undoes."""
    named: dict[Id, Members] = {}
    """Extra stacks by name; members are scene ids or other named stacks (expanded in order)."""


class ScratchPlan(_Strict):
    name: str = Field(pattern=ID_PATTERN)
    scenes: list[str] | None = None
    """Scene ids to train on; omitted = every scene of the plan."""
    corpus: str | None = None
    """A .txt file or folder of them, relative to the plan file (e.g. 100 or 1000 documents)."""
    demo_stories: int = Field(default=0, ge=0, le=1_000_000)
    """Also train on this many generated demo-world stories (general language for a small model)."""
    steps: int = Field(default=260, ge=1, le=1_000_000)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


class DiscoverPlan(_Strict):
    """Look for directions of change no probe declared, in every single scene's adapter."""

    control: Id
    """The neutral control scene's id: trained again with `seeds`, it is the null."""
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(default=[1, 2], min_length=2)
    """Training seeds of the control adapters (two or more, all different)."""
    prompts: str | None = None
    """A prompt bank (one prompt a line, relative to the plan file); omitted = the bundled one."""


class Plan(_Strict):
    """An experiment: one adapter per scene, stacks, leave-one-out, scratch; one compare report."""

    name: str = Field(pattern=ID_PATTERN)
    base: str | None = None
    """A Hugging Face model folder (relative to the plan file); omitted = the embedded demo base."""
    scenes: list[str] = Field(min_length=1)
    """Scene files or folders, relative to the plan file. Their order is the stacking order."""
    suites: list[str] = Field(default=["../probes"], min_length=1)
    stacks: StackPlan = StackPlan()
    scratch: list[ScratchPlan] = []
    training: TrainingOverrides = TrainingOverrides()
    """Training settings for every adapter of the plan (a scene's own overrides apply to its single adapter)."""
    reference: str = "base"
    """What single scenes are compared against: 'base', or a scene id (e.g. the control scene)."""
    discover: DiscoverPlan | None = None


@dataclass
class Resolved:
    plan: Plan
    path: Path
    scenes: list[Scene]
    scene_paths: list[str]
    named_stacks: dict[str, list[Scene]]
    scratch_scenes: dict[str, list[Scene]]

    def rel(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else (self.path.parent / p)


def _expand(name: str, named: dict[str, list[str]], ids: set[str], trail: list[str], where: str) -> list[str]:
    if name in trail:
        raise EvalkitError(f"field 'stacks.named.{trail[0]}': cycle {' -> '.join([*trail, name])}", where=where)
    out: list[str] = []
    for member in named[name]:
        if member in named:
            out += _expand(member, named, ids, [*trail, name], where)
        elif member in ids:
            out.append(member)
        else:
            raise EvalkitError(f"field 'stacks.named.{name}': unknown scene or stack '{member}'", where=where)
        if len(out) > len(ids):  # some scene is in twice: said now, before stacks of stacks double it further
            twice = next(m for m in out if out.count(m) > 1)
            raise EvalkitError(f"field 'stacks.named.{trail[0] if trail else name}': scene '{twice}' appears twice",
                               where=where)
    return out


def load_plan(path: Path) -> Resolved:
    data = read_yaml_mapping(path)
    plan = parse_model(Plan, data, path)
    where = str(path)
    scenes, paths = [], []
    for entry in plan.scenes:
        target = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        if not target.exists():
            raise EvalkitError(f"field 'scenes': no such scene file or folder '{entry}'", where=where)
        for f in scene_files(target):
            scenes.append(load_scene(f))
            paths.append(str(f.resolve()))
    by_id: dict[str, Scene] = {}
    for s in scenes:
        if s.id == "base" or GENERATED_LABEL.match(s.id):
            raise EvalkitError(f"field 'scenes': scene id '{s.id}' is a name the plan gives its own models "
                               "(base, stack-NN, without-*, scratch-*)", where=where)
        if s.id in by_id:
            raise EvalkitError(f"field 'scenes': scene '{s.id}' is listed twice", where=where)
        by_id[s.id] = s
    named = {}
    for name in plan.stacks.named:
        if name in by_id or name == "base" or GENERATED_LABEL.match(name):
            raise EvalkitError(f"field 'stacks.named.{name}': '{name}' is already the name of a scene or of a "
                               "stack the plan makes (stack-NN, without-*, scratch-*); model names share one "
                               "namespace", where=where)
        members = _expand(name, plan.stacks.named, set(by_id), [], where)
        dupes = sorted({m for m in members if members.count(m) > 1})
        if dupes:
            raise EvalkitError(f"field 'stacks.named.{name}': scene '{dupes[0]}' appears twice", where=where)
        named[name] = [by_id[m] for m in members]
    scratch = {}
    for k, spec in enumerate(plan.scratch):
        if spec.name in scratch:
            raise EvalkitError(f"field 'scratch.{k}.name': '{spec.name}' is used twice", where=where)
        unknown = [s for s in (spec.scenes or []) if s not in by_id]
        if unknown:
            raise EvalkitError(f"field 'scratch.{k}.scenes': unknown scene '{unknown[0]}'", where=where)
        if spec.scenes and len(set(spec.scenes)) < len(spec.scenes):
            twice = next(s for s in spec.scenes if spec.scenes.count(s) > 1)
            raise EvalkitError(f"field 'scratch.{k}.scenes': scene '{twice}' is listed twice", where=where)
        scratch[spec.name] = [by_id[s] for s in spec.scenes] if spec.scenes else list(scenes)
    if plan.reference != "base" and plan.reference not in by_id:
        raise EvalkitError(f"field 'reference': '{plan.reference}' is neither 'base' nor a scene id", where=where)
    if plan.discover is not None:
        if plan.discover.control not in by_id:
            raise EvalkitError(f"field 'discover.control': '{plan.discover.control}' is not a scene id of the plan",
                               where=where)
        if len(set(plan.discover.seeds)) < len(plan.discover.seeds):
            raise EvalkitError("field 'discover.seeds': a seed is given twice", where=where)
        prompts = plan.discover.prompts
        if prompts is not None and not (path.parent / prompts).is_file():
            raise EvalkitError(f"field 'discover.prompts': no such file '{prompts}'", where=where)
    return Resolved(plan, path.resolve(), scenes, paths, named, scratch)
