"""Scenes: the small YAML texts a researcher grows a model with, one adapter each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from evalkit.errors import EvalkitError
from evalkit.files import ID_PATTERN, not_blank, parse_model, read_yaml_mapping, stable_hash, visible, yaml_files
from evalkit.settings import MAX_SEED


class Expectation(BaseModel):
    """A probe the scene's author expects to move, and which way."""

    model_config = ConfigDict(extra="forbid")

    suite: str
    """Name of the probe suite (its `suite` field), e.g. `tension`."""
    item: str | None = None
    """An item id within the suite."""
    cluster: str | None = None
    """A cluster of the suite (a dilemma, a novel axis, a consistency group). Omitting both
    `item` and `cluster` means the suite as a whole."""
    metric: str = "margin"
    """The per-item score expected to move."""
    direction: Literal["increase", "decrease"]
    """Which way the subject's score should go relative to the reference."""

    @model_validator(mode="after")
    def _item_or_cluster(self) -> "Expectation":
        if self.item is not None and self.cluster is not None:
            raise ValueError("give 'item' or 'cluster', not both")
        return self


class TrainingOverrides(BaseModel):
    """Per-scene training settings; anything left out takes the trainer's default."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(default=None, ge=1, le=1_000_000)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    rank: int | None = Field(default=None, ge=1, le=4096)
    alpha: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class Turn(BaseModel):
    """One turn of a chat scene (for instruct models)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(min_length=1), AfterValidator(not_blank)]


class Scene(BaseModel):
    """One scene file. Exactly one of `text` and `turns` carries the content."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    """Stable identifier; names the adapter folder."""
    title: Annotated[str, Field(min_length=1), AfterValidator(not_blank)]
    text: str | None = None
    """The scene as prose."""
    turns: list[str] | list[Turn] | None = None
    """The scene as utterances (joined by blank lines for training), or as a chat: turns with a
    role (system, user, assistant), rendered with the model's chat template, the loss on the
    assistant's turns only."""
    tags: list[str] = []
    expect: list[Expectation] = []
    """Probes the author expects this scene to move (empty for a control scene)."""
    training: TrainingOverrides = TrainingOverrides()

    @model_validator(mode="after")
    def _one_body(self) -> "Scene":
        if (self.text is None) == (self.turns is None):
            raise ValueError("give exactly one of 'text' or 'turns'")
        if not visible(self.body):
            raise ValueError("the scene's text is empty (only spaces or invisible characters)")
        if self.chat is not None and not any(t.role == "assistant" for t in self.chat):
            raise ValueError("a chat scene needs an assistant turn: the loss is on the assistant's turns only")
        return self

    @property
    def chat(self) -> list[Turn] | None:
        """The turns of a chat scene; None for prose."""
        turns = self.turns or []
        return [t for t in turns if isinstance(t, Turn)] if turns and isinstance(turns[0], Turn) else None

    @property
    def body(self) -> str:
        if self.text is not None:
            return self.text
        return "\n\n".join(t.content if isinstance(t, Turn) else t for t in self.turns or [])

    @property
    def content_hash(self) -> str:
        """Hash of everything that affects training: the text and the training overrides."""
        chat = {"chat": [t.model_dump() for t in self.chat]} if self.chat else {}
        return stable_hash({"body": self.body, "training": self.training.model_dump(), **chat})


class _ChatTurns(BaseModel):
    turns: list[Turn]


def load_scene(path: Path) -> Scene:
    data = read_yaml_mapping(path)
    if "text" not in data and "turns" not in data:
        raise EvalkitError("field 'text' is required (or 'turns')", where=str(path))
    turns = data.get("turns")
    if isinstance(turns, list) and any(isinstance(t, dict) for t in turns):
        # A chat: its errors name the turn and field (turns.0.role), not pydantic's string branch.
        parse_model(_ChatTurns, {"turns": turns}, path)
    return parse_model(Scene, data, path)


def scene_files(path: Path) -> list[Path]:
    """A scene file, or the scene files of a folder in name order (the stacking order)."""
    return yaml_files(path, "scene")


def load_scenes(path: Path) -> list[Scene]:
    scenes = [load_scene(f) for f in scene_files(path)]
    seen: dict[str, int] = {}
    for scene in scenes:
        seen[scene.id] = seen.get(scene.id, 0) + 1
    dupes = [sid for sid, n in seen.items() if n > 1]
    if dupes:
        raise EvalkitError(f"scene id '{dupes[0]}' is used by more than one file", where=str(path))
    return scenes
