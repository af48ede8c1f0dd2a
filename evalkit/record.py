"""The shared contract between the layers: the run record (everything a report shows, versioned,
so a report re-renders without a model) and the manifests written beside adapters and
checkpoints. No torch here: `decide` and `report` read these alone.

Modelled on inspect_ai's log: `version` first, every field documented where it is declared.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from evalkit.errors import EvalkitError
from evalkit.files import read_json, validation_error, write_text_atomic

RECORD_VERSION = 3
# Versions 1 and 2 lack the fields later versions added as optional (version 3: suites' scoring);
# they read as they are.
READABLE_VERSIONS = (1, 2, 3)
MANIFEST_VERSION = 1
MANIFEST_NAME = "evalkit.json"

if TYPE_CHECKING:
    Score = Any  # validated below at run time; readers convert what they use
else:
    # A true/false stays one (the kinds refuse it, as written), not read as 1.0.
    _Number = Union[StrictBool, StrictInt, StrictFloat]
    Score = Union[_Number, StrictStr, list[_Number], list[StrictStr], None]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Record):
    """One side of a comparison: the base, an adapter on it, or a checkpoint."""

    kind: Literal["base", "adapter", "checkpoint"]
    name: str
    """Short label shown in reports (adapter folder name, 'base', checkpoint folder name)."""
    path: str
    fingerprint: str
    """sha256 over the weights that produce this model's outputs (base + adapter for adapters)."""
    base_fingerprint: str | None = None
    scene_ids: list[str] = []
    scene_hashes: list[str] = []
    """Content hashes of those scenes as trained (text + training overrides)."""
    scene_title: str | None = None
    scene_excerpt: str | None = None
    training: dict[str, Any] | None = None
    """The adapter's or checkpoint's manifest (hyper-parameters, seed, steps, final loss, damage)."""
    unverified: str | None = None
    """What evalkit could not check about this model (an adapter trained by another tool)."""


class SuiteRef(_Record):
    name: str
    kind: str
    path: str
    hash: str
    n_items: int
    normalization: str
    """Which log-probability the suite's margins use: 'sum' over tokens or 'per_token'."""
    scoring: dict[str, Any] = {}
    """Every suite setting that changes its scores (kind, normalization, delimiter, chat, generation
    length and stops; see LoadedSuite.scoring); empty in records before version 3."""


class StatsRef(_Record):
    alpha: float = Field(gt=0, lt=1)
    test: str
    resamples: int
    seed: int
    power: float = Field(gt=0, lt=1)
    ci: str = "t"
    multiple_comparisons: str = "benjamini-hochberg over every testable effect of the run"
    neutral_margin: float | None = None
    """Novel axes: the equivalence bound (nats) within which a reference counts as not leaning."""


class Manifest(_Record):
    evalkit_version: str
    git_commit: str | None
    created: str
    packages: dict[str, str]
    seeds: dict[str, int]
    decoding: dict[str, Any]
    """Settings that change per-item scores: dtype, device, batch size, lm-eval request settings."""
    scoring: str
    """How scores were computed (which engine produced which number)."""
    suites: list[SuiteRef]
    requests: dict[str, int] = {}
    """Requests computed and taken from the reference cache in this run."""

    @field_validator("decoding")
    @classmethod
    def _named_dtype(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "dtype" in value and not isinstance(value["dtype"], str):  # the gate compares it across records
            raise ValueError(f"dtype {value['dtype']!r} is not a dtype's name")
        return value


class ItemRecord(_Record):
    """One item's scores under the reference and the subject, paired by (suite, item id)."""

    suite: str
    kind: str
    item_id: str
    cluster: str | None
    prompt: str
    options: list[str] = []
    reference: dict[str, Score]
    subject: dict[str, Score]


Verdict = Literal["new", "amplified", "reversed", "attenuated", "shifted", "baseline unclear", "unchanged"]


class Effect(_Record):
    """One paired test: a suite x metric, optionally restricted to a cluster or an item."""

    suite: str
    metric: str
    scope: str
    """'suite' for all items; 'groups' for per-group consistency scores; 'cluster:<name>' for one cluster."""
    n: int = Field(ge=0)
    reference_mean: float
    subject_mean: float
    mean_diff: float
    se: float | None = Field(ge=0)
    """The SE the interval and the MDE use: naive over items, or cluster-robust (CR1) over clusters."""
    se_kind: str
    ci_low: float | None
    """None when the effect is untestable (one unit)."""
    ci_high: float | None
    ci_method: str
    p_value: float | None = Field(ge=0, le=1)
    """None when the effect is untestable; such effects are left out of the BH family."""
    q_value: float | None = Field(ge=0, le=1)
    test: str
    effect_size: float | None
    effect_size_kind: str
    d_z: float | None = None
    """Cohen's d_z of the item differences: one scale across metrics (compare heatmaps)."""
    mde: float | None
    """Minimum detectable effect at the run's alpha and power, (t_{1-a/2,df} + t_{power,df}) SE on
    the interval's SE and degrees of freedom; read 'no change larger than this'."""
    units: int | None = Field(default=None, ge=0)
    """Items, or clusters when items share them: the unit the test and the interval count."""
    untestable: str | None = None
    """Why no test was possible (one item or one cluster: no spread to test against)."""
    significant: bool
    """q < alpha."""
    direction: Literal["up", "down", "none"]
    verdict: Optional[Verdict] = None
    """Novel axes only, from the reference's lean and the subject's (see decide.effects.axis_verdict)."""
    reference_ci_low: float | None = None
    """Novel axes only: the reference's own mean margin, its (1 - alpha) CI."""
    reference_ci_high: float | None = None
    reference_neutral: bool | None = None
    """Novel axes only: the reference is shown not to lean (its 1 - 2 alpha CI lies within
    +-stats.neutral_margin nats: two one-sided tests at alpha)."""
    seed_spread: float | None = None
    """When the run holds the same scene trained with several seeds: the range (max - min) of
    this effect's mean difference across those seeds."""
    within_seed_noise: bool | None = None
    """|mean difference| <= seed_spread: seeds disagree by as much as the effect itself."""

    @model_validator(mode="after")
    def _ordered_intervals(self) -> "Effect":
        for low, high in (("ci_low", "ci_high"), ("reference_ci_low", "reference_ci_high")):
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{low} {a} lies above {high} {b}")
        return self


class PairedRun(_Record):
    """What the engine hands up: one subject's items paired with the reference's, not yet tested."""

    run_id: str
    manifest: Manifest
    reference: ModelRef
    subject: ModelRef
    items: list[ItemRecord]


# --- discovered directions -----------------------------------------------------------------

class DiscoveredDirection(_Record):
    """A direction of change in the residual stream, with what makes it readable and believable."""

    name: str
    share: float
    """Share of the total squared change over the prompts that lies along it."""
    strength: float
    """Held-out strength: the root mean square shift along the direction found on one half of the
    prompts, on the other half, averaged over the splits (residual-stream units)."""
    relative_strength: float
    """strength over the reference's mean hidden-state norm at the prompts' ends."""
    promoted: list[str]
    """The label: next tokens whose probability rose most on the prompts where it is strongest."""
    suppressed: list[str]
    lens_promoted: list[str]
    """Tokens whose logits the direction itself raises most (the output head applied to it: the logit lens)."""
    lens_suppressed: list[str]
    strongest_prompts: list[str]
    reference_continuations: list[str]
    subject_continuations: list[str]
    held_out_t: list[float]
    held_out_p: list[float]
    """One-sided p of the shift along the direction found on one half of the prompts, on the other
    half; one per seeded split."""
    replicates: bool
    """p < 0.01 in every split."""
    null_strength: Optional[float]
    """The strongest held-out strength any direction of any control adapter reaches against the
    other controls; None with fewer than two controls."""
    null_ratio: Optional[float]
    """strength / null_strength."""
    beyond_null: bool
    """null_ratio >= the required ratio."""
    found: bool
    """Replicates and stands beyond the null: a change this subject made."""
    cosines: dict[str, float]
    """|cos| with the direction of each declared two-way choice: a novel axis by name, another
    suite's dilemma as suite/cluster."""
    matches: Optional[str]
    """The declared choice it matches (|cos| >= 0.5), or None: new."""
    reading: str
    """The verdict in words."""


class DiscoveryRecord(_Record):
    """What a subject changed, found on a prompt bank rather than declared (`evalkit discover`,
    or the discovery section of a run)."""

    version: int = 2
    subject: ModelRef
    reference: ModelRef
    controls: list[str]
    against: str
    """What the shifts are taken against: the controls' mean, or the reference."""
    prompts: int
    """Prompts the shifts were measured on (the bank plus every suite prompt)."""
    prompt_bank: str
    seed: int
    null_ratio_required: float
    directions: list[DiscoveredDirection]
    next_token_promoted: list[str]
    """Tokens whose next-token probability rose most, averaged over the prompts."""
    next_token_suppressed: list[str]
    manifest: dict[str, Any]


class RunRecord(_Record):
    """One subject against its reference: how it was run, every item paired, every effect tested.
    Written as results.json; reports and gates read nothing else."""

    version: int = RECORD_VERSION
    """Schema version of this file; bumped on any incompatible change."""
    run_id: str
    manifest: Manifest
    reference: ModelRef
    subject: ModelRef
    stats: StatsRef
    items: list[ItemRecord]
    effects: list[Effect]
    seed_siblings: list[str] = []
    """Other subjects of the same run trained on the same scenes with other seeds."""
    discovery: Optional[DiscoveryRecord] = None
    """Directions of change no probe declared (`run --discover`)."""


def write_record(record: RunRecord, path: Path) -> None:
    write_text_atomic(path, record.model_dump_json(indent=2) + "\n")


def _not_finite(data: Any) -> tuple[str, float] | None:
    """The first NaN or infinity in parsed JSON (Python's json reads NaN and Infinity), with where it is."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        at, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return at, value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1e308:  # no float holds it
            return at, math.inf
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        stack.extend((f"{at}.{key}" if at else str(key), child) for key, child in reversed(list(children)))
    return None


def results_file(path: Path) -> Path:
    """A run's results.json, named by itself or by its run's folder."""
    return path / "results.json" if path.is_dir() and (path / "results.json").is_file() else path


def read_record(path: Path) -> RunRecord:
    path = results_file(path)
    if not path.exists():
        raise EvalkitError("no such results file", where=str(path))
    if not path.is_file():
        what = "a folder without results.json" if path.is_dir() else "not a plain file"
        raise EvalkitError(f"is {what}; give a run's results.json", where=str(path))
    data = read_json(path)
    odd = _not_finite(data)
    if odd is not None:
        field, where = odd[0], str(path)
        parts = field.split(".")
        if parts[0] == "items" and len(parts) > 2 and isinstance(data.get("items"), list):  # name the item
            item = data["items"][int(parts[1])]
            if isinstance(item, dict):
                field, where = ".".join(parts[2:]), f"{path} [{item.get('suite')}/{item.get('item_id')}]"
        raise EvalkitError(f"field '{field}': {odd[1]} is not a finite number", where=where)
    if isinstance(data, dict) and data.get("version") not in READABLE_VERSIONS:
        raise EvalkitError(f"record version {data.get('version')!r} is not one of "
                           f"{', '.join(map(str, READABLE_VERSIONS))}", where=str(path))
    try:
        record = RunRecord.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path, exc) from None
    check_consistent(record, path)
    return record


def check_consistent(record: RunRecord, path: Path) -> None:
    """What pydantic cannot see field by field: each suite listed once, each item once, and every
    item and effect of a suite the record lists (a report or gate would show or pair it alone)."""
    suites: set[str] = set()
    for k, suite in enumerate(record.manifest.suites):
        if suite.name in suites:
            raise EvalkitError(f"field 'manifest.suites.{k}': suite '{suite.name}' is listed twice", where=str(path))
        suites.add(suite.name)
    seen: set[tuple[str, str]] = set()
    for item in record.items:
        where = f"{path} [{item.suite}/{item.item_id}]"
        if (item.suite, item.item_id) in seen:
            raise EvalkitError("field 'items': item given twice", where=where)
        if item.suite not in suites:
            raise EvalkitError(f"field 'suite': '{item.suite}' is not one of the record's suites (manifest.suites)",
                               where=where)
        seen.add((item.suite, item.item_id))
    for k, effect in enumerate(record.effects):
        if effect.suite not in suites:
            raise EvalkitError(f"field 'effects.{k}.suite': '{effect.suite}' is not one of the record's suites "
                               "(manifest.suites)", where=str(path))


# --- manifests of trained models --------------------------------------------------------------

class SceneRef(_Record):
    id: str
    title: str
    hash: str
    """Content hash of the scene as trained (text + training overrides)."""
    path: Optional[str] = None
    """The scene file it was read from, when known."""


class BaseRef(_Record):
    path: str
    fingerprint: str
    """sha256 over the base's weights; an adapter runs only on a base with this fingerprint."""
    model_type: str


class LoraRef(_Record):
    r: int
    alpha: float
    dropout: float
    target_modules: list[str]
    init: Optional[str] = None
    """How the adapter was initialised when it was not trained (the null adapter)."""


class AdapterManifest(_Record):
    """`evalkit.json` beside peft's files in an adapter folder."""

    version: int = MANIFEST_VERSION
    evalkit_version: str
    kind: Literal["adapter"]
    key: str
    """Content address: a hash of the scenes, the base's weights and the training settings."""
    recipe_version: Optional[int] = None
    scenes: list[SceneRef]
    base: BaseRef
    lora: LoraRef
    training: dict[str, Any]
    """The training settings as used (after overrides), and the number of training tokens."""
    final_loss: Optional[float] = None
    packages: dict[str, str]
    created: str
    seconds: Optional[float] = None
    settings_from: Optional[dict[str, str]] = None
    """Where each training setting came from: the recipe for the model's size, the plan, the
    scene's own `training:` block or the command line (later ones win, in that order)."""
    damage: Optional[dict[str, float]] = None
    """NLL (nats/token) of a general English sample under the base and base+adapter, and the increase."""
    warnings: list[str] = []
    """What the training saw that a user must know (memorised scene, damaged general text)."""


class CheckpointManifest(_Record):
    """`evalkit.json` in a checkpoint folder trained from scratch (`evalkit scratch`)."""

    version: int = MANIFEST_VERSION
    evalkit_version: str
    kind: Literal["checkpoint"]
    key: str
    scenes: list[SceneRef]
    tokenizer_from: str
    corpus_documents: int
    demo_stories: int
    model: dict[str, Any]
    """Architecture and size."""
    training: dict[str, Any]
    final_loss: Optional[float] = None
    packages: dict[str, str]
    created: str
    seconds: Optional[float] = None


TrainedManifest = Union[AdapterManifest, CheckpointManifest]


def write_manifest(manifest: TrainedManifest, folder: Path) -> None:
    write_text_atomic(folder / MANIFEST_NAME, manifest.model_dump_json(indent=2, exclude_none=True) + "\n")


def read_manifest(folder: Path) -> Optional[TrainedManifest]:
    """The evalkit manifest of an adapter or checkpoint folder; None when it has none."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise EvalkitError("expected a JSON object", where=str(path))
    model = CheckpointManifest if data.get("kind") == "checkpoint" else AdapterManifest
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path, exc) from None


def manifest_key(folder: Path) -> Optional[str]:
    """The content key a folder was trained for, or None (absent or unreadable: train it again)."""
    try:
        manifest = read_manifest(folder)
    except EvalkitError:
        return None
    return manifest.key if manifest is not None else None
