"""Adapters on a loaded base, in one place: which modules LoRA targets, the checks an adapter
must pass before a run uses it, and attaching, switching and detaching adapters with peft."""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from evalkit.engine.base import Base
from evalkit.engine.peft_patterns import match_patterns
from evalkit.errors import EvalkitError, first_line
from evalkit.files import read_json
from evalkit.record import MANIFEST_NAME, AdapterManifest, read_manifest
from evalkit.settings import TrainSettings

log = logging.getLogger("evalkit")

# LoRA targets per architecture family; other models fall back to every linear layer but the head.
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "mamba": ["in_proj", "x_proj", "dt_proj"],  # peft refuses out_proj in Mamba models
}


def lora_targets(model) -> list[str]:
    """LoRA target module names for this architecture (table above, else every linear layer)."""
    model_type = getattr(model.config, "model_type", "")
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    names = adaptable_names(model)
    if not names:
        raise EvalkitError(f"no linear layers found to put LoRA on in a '{model_type}' model")
    return sorted(names)


def adaptable_names(model) -> set[str]:
    """Last parts of the names of the linear layers LoRA may go on: not the output head, and not
    a name some other module also has (peft matches a name against every module's last part;
    CTRL's MLP layers are `0` and `2`, and so are its blocks)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    linear: set[str] = set()
    other: set[str] = set()
    for name, module in model.named_modules():
        adaptable = isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
        (linear if adaptable else other).add(name.rsplit(".", 1)[-1])
    return linear - other


def uses_conv1d(model) -> bool:
    """GPT-2 style layers store weights transposed; LoRA must know (peft's fan_in_fan_out)."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def lora_config(base: Base, settings: TrainSettings) -> Any:
    """peft's LoraConfig for this base: the settings' targets, else those of its architecture;
    GPT-2's Conv1D handled."""
    from peft import LoraConfig

    targets = settings.targets or lora_targets(base.model)
    leaves = {name.rsplit(".", 1)[-1] for name, _ in base.model.named_modules()}
    adaptable = adaptable_names(base.model)
    for target in targets:
        if target not in leaves:
            raise EvalkitError(f"field 'targets': the base has no module '{target}'", where=base.path)
        if target not in adaptable:  # norms, embeddings, the output head: nothing evalkit runs LoRA on
            raise EvalkitError(f"field 'targets': '{target}' is not (only) a linear layer of the model's blocks; "
                               f"LoRA goes on those ({', '.join(sorted(adaptable)[:8])})", where=base.path)
    alpha: Any = settings.alpha  # peft annotates it int; a float scales the same way
    return LoraConfig(r=settings.rank, lora_alpha=alpha, lora_dropout=settings.dropout, target_modules=targets,
                      task_type="CAUSAL_LM", fan_in_fan_out=uses_conv1d(base.model))


# peft settings that save whole modules, skip or replicate layers, or switch the adapter on only
# after some tokens: the adapter would then not be its LoRA weights on the base as loaded.
UNSUPPORTED_FIELDS = ("modules_to_save", "trainable_token_indices", "layers_to_transform", "layers_pattern",
                      "layer_replication", "exclude_modules", "alora_invocation_tokens")

# LoRA variants other than DoRA, and LoRA on bare parameters: any value but null turns them on
# (an empty `kasa_config: {}` truncates the base's weights to a lower rank when attached).
VARIANT_FIELDS = ("kasa_config", "velora_config", "monteclora_config", "arrow_config", "use_bdlora", "use_qalora",
                  "target_parameters", "megatron_config")

# Initialisations that subtract the adapter's starting point from the base (PiSSA, OLoRA, CorDA,
# LoRA-GA) or quantise it (LoftQ): peft redoes that when attaching, and the saved weights are relative
# to that changed base. (Gaussian, EVA, orthogonal, MiCA leave the base as it is; an initialisation
# this list does not know that changes the base is caught when attached, see _check_base_kept.)
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "lora_ga", "loftq")

# What cannot be checked about an adapter trained by another tool (no evalkit manifest).
UNVERIFIED = ("trained without evalkit: its base could not be verified by weight fingerprint (checked: a LoRA "
              "config, target modules that exist in the base, weights of the right shapes)")


def adapter_manifest(adapter_dir: Path, trained_elsewhere: bool = False) -> Optional[AdapterManifest]:
    """An adapter's manifest. Required unless `trained_elsewhere` (the base was named with --base):
    then a plain peft folder is accepted, checked for what can be checked, and None is returned."""
    if not adapter_dir.is_dir():
        raise EvalkitError("no such adapter folder", where=str(adapter_dir))
    if not (adapter_dir / "adapter_config.json").is_file():
        raise EvalkitError("not a peft adapter folder (no adapter_config.json)", where=str(adapter_dir))
    manifest = read_manifest(adapter_dir)
    if manifest is None:
        if trained_elsewhere:
            return None
        raise EvalkitError("no evalkit manifest, so its base cannot be checked", where=str(adapter_dir / MANIFEST_NAME),
                           hint="name its base with --base to run an adapter trained by another tool")
    if not isinstance(manifest, AdapterManifest):
        raise EvalkitError("field 'kind': this folder holds a checkpoint, not an adapter",
                           where=str(adapter_dir / MANIFEST_NAME))
    return manifest


def check_adapter_base(adapter_dir: Path, manifest: AdapterManifest, base: Base) -> None:
    """Refuse an adapter trained on another base: its numbers would mean nothing."""
    trained_on = manifest.base.fingerprint
    if trained_on != base.fingerprint:
        raise EvalkitError(
            f"field 'base.fingerprint': adapter was trained on base {trained_on[:12]} "
            f"({manifest.base.path}), "
            f"but the loaded base is {base.fingerprint[:12]} ({base.path})",
            where=str(adapter_dir / MANIFEST_NAME), hint="pass --base with the base it was trained on",
        )


def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    config = read_json(path)
    if not isinstance(config, dict):
        raise EvalkitError("expected a JSON object", where=str(path))
    if config.get("peft_type") != "LORA":
        raise EvalkitError(f"field 'peft_type': {config.get('peft_type')!r} is not LORA (evalkit runs LoRA adapters)",
                           where=str(path))
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise EvalkitError(f"field 'r': {rank!r} is not a positive whole number", where=str(path))
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1e6:
        raise EvalkitError(f"field 'lora_alpha': {alpha!r} is not a number between 0 and 1e6", where=str(path))
    dropout = config.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise EvalkitError(f"field 'lora_dropout': {dropout!r} is not a number in [0, 1)", where=str(path))
    for name in UNSUPPORTED_FIELDS:
        if config.get(name):
            raise EvalkitError(f"field '{name}': {config[name]!r}: evalkit runs plain LoRA layers on the base's "
                               "modules as they are, not this", where=str(path))
    defaults = _lora_defaults()
    for name in (*VARIANT_FIELDS, *_declared_variants()):
        value = config.get(name)
        # peft saves target_parameters as [] for transformers 5's fused-expert (MoE) models: nothing targeted
        if value not in (None, False, defaults.get(name)) and not (name == "target_parameters" and value == []):
            raise EvalkitError(f"field '{name}': {value!r} turns on a LoRA variant evalkit does not run "
                               "(plain LoRA and DoRA only); null or absent is plain LoRA", where=str(path))
    init = config.get("init_lora_weights", True)
    if not isinstance(init, (bool, str)):
        raise EvalkitError(f"field 'init_lora_weights': {init!r} is not true, false or a method name", where=str(path))
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        raise EvalkitError(f"field 'init_lora_weights': {init!r}: peft would change the base's weights when "
                           "attaching this adapter, and its weights are relative to that changed base; save it "
                           "converted to plain LoRA (peft: path_initial_model_for_weight_conversion), or set true "
                           "if its weights are plain LoRA already", where=str(path))
    for name in ("use_rslora", "use_dora", "fan_in_fan_out", "lora_bias"):
        if not isinstance(config.get(name, False), bool):
            raise EvalkitError(f"field '{name}': {config[name]!r} is not true or false", where=str(path))
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise EvalkitError(f"field 'bias': {config.get('bias')!r}: evalkit runs LoRA adapters without biases",
                           where=str(path))
    for name in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(name) or {}
        values = list(pattern.values()) if isinstance(pattern, dict) else [None]
        if not all(not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < 1e6 for v in values):
            raise EvalkitError(f"field '{name}': {pattern!r} is not module names with numbers between 0 and 1e6",
                               where=str(path))
    targets = config.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and targets
                                         and all(isinstance(t, str) for t in targets))):
        raise EvalkitError(f"field 'target_modules': {targets!r} is not a module name list", where=str(path))
    return config


@cache
def _declared_variants() -> tuple[str, ...]:
    """The variant switches this peft declares (a newer one may have more), DoRA aside."""
    import dataclasses

    from peft import LoraConfig

    return tuple(f.name for f in dataclasses.fields(LoraConfig)
                 if f.metadata.get("is_lora_variant") and f.name != "use_dora")


@cache
def _lora_defaults() -> dict[str, Any]:
    """This peft's LoraConfig defaults: a field at its default is off, whatever that default is."""
    import dataclasses

    from peft import LoraConfig

    return {f.name: f.default for f in dataclasses.fields(LoraConfig) if f.default is not dataclasses.MISSING}


def _targeted(names: set[str], targets: str | list[str], regex_matches: dict[tuple[str, str], set[str]]) -> set[str]:
    """peft's rule: a list names module suffixes; a string is a regular expression over full names."""
    if isinstance(targets, str):
        return names & regex_matches["target_modules", targets]
    return {name for name in names if any(name == t or name.endswith(f".{t}") for t in targets)}


def check_adapter_weights(adapter_dir: Path, model: Any) -> None:
    """An adapter is attached only when its turn comes, so everything about its files is checked
    before the run starts: the config is LoRA and well-formed, the weights are safetensors (a
    pickle is never loaded), readable, of the config's rank, and cover exactly the modules the
    config targets - which must exist in the base. (An edited target_modules otherwise runs a
    partial adapter without a word.)"""
    from safetensors import SafetensorError, safe_open

    config = _adapter_config(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        if (adapter_dir / "adapter_model.bin").is_file():
            raise EvalkitError("adapter_model.bin is a pickle, which evalkit never loads; save the adapter as "
                               "safetensors (peft's save_pretrained does by default)", where=str(adapter_dir))
        raise EvalkitError("no adapter weights (adapter_model.safetensors)", where=str(adapter_dir))
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
            for key in f.keys():  # LoRA weights are small: every one is read, so none is NaN or not a float
                tensor = f.get_tensor(key)
                if not tensor.is_floating_point():
                    raise EvalkitError(f"weights '{key}' are {tensor.dtype}, not floating point", where=str(weights))
                if not bool(tensor.isfinite().all()):
                    raise EvalkitError(f"weights '{key}' hold NaN or infinite values", where=str(weights))
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise EvalkitError(f"unreadable adapter weights: {first_line(exc)}", where=str(weights)) from None
    # keys look like base_model.model.<module path>.lora_A.weight
    dora = (".lora_magnitude_vector", ".lora_magnitude_vector.weight") if config.get("use_dora") else ()
    allowed = (".lora_A.weight", ".lora_B.weight", *dora)
    foreign = [k for k in shapes if not k.endswith(allowed)]
    if foreign:  # a full module (a head, an embedding) would replace the base's own, for every model of the run
        raise EvalkitError(f"weights '{foreign[0]}' are not LoRA weights ({len(foreign)} such)", where=str(weights))
    if dora and not any(k.endswith(dora) for k in shapes):
        raise EvalkitError("field 'use_dora': true, but the weights hold no DoRA magnitudes", where=str(weights))

    def modules_with(part: str) -> set[str]:
        return {k.split(part)[0].removeprefix("base_model.model.") for k in shapes if part in k}

    trained = modules_with(".lora_A")
    # Every adapted module has all its parts: peft fills a missing one with its initial values, without a word.
    for part in (".lora_B", *([".lora_magnitude_vector"] if dora else [])):
        lacking = sorted(trained - modules_with(part)) or sorted(modules_with(part) - trained)
        if lacking:
            half = part if lacking[0] in trained else ".lora_A"
            raise EvalkitError(f"weights for '{lacking[0]}' have no {half.lstrip('.')} ({len(lacking)} such modules)",
                               where=str(weights))
    where = str(adapter_dir / "adapter_config.json")
    regex_matches = match_patterns(config, [name for name, _ in model.named_modules()], where)
    modules = {name for name, module in model.named_modules() if not list(module.children())}
    targeted = _targeted(modules, config["target_modules"], regex_matches)
    if not targeted:
        raise EvalkitError(f"field 'target_modules': the base has no module {config['target_modules']!r}", where=where)
    missing, extra = sorted(targeted - trained), sorted(trained - targeted)
    if missing:
        raise EvalkitError(f"field 'target_modules': '{missing[0]}' is targeted but has no weights in "
                           f"adapter_model.safetensors ({len(missing)} such modules)", where=where)
    if extra:
        raise EvalkitError(f"field 'target_modules': adapter_model.safetensors has weights for '{extra[0]}', which "
                           f"is not targeted or not in the base ({len(extra)} such modules)", where=where)
    ranks = {shape[0] for k, shape in shapes.items() if ".lora_A" in k}
    if not config.get("rank_pattern") and ranks != {config["r"]}:
        raise EvalkitError(f"field 'r': {config['r']} but the weights have rank {sorted(ranks)}", where=where)
    named = dict(model.named_modules())
    for key, shape in shapes.items():
        name = key.split(".lora_")[0].removeprefix("base_model.model.")
        size_in, size_out = _sizes(named[name]) if name in named else (None, None)
        expected = size_in if ".lora_A" in key else size_out if ".lora_B" in key else None
        side = 1 if ".lora_A" in key else 0
        if expected is not None and len(shape) == 2 and shape[side] != expected:
            raise EvalkitError(f"weights '{key}' have shape {list(shape)}, but the base's module takes "
                               f"{expected} features there: the adapter is for another model", where=str(weights))


def _sizes(module: Any) -> tuple[int | None, int | None]:
    """(in, out) features of a linear layer, GPT-2's Conv1D (stored transposed) included."""
    if hasattr(module, "in_features"):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    return (int(weight.shape[0]), int(weight.shape[1])) if weight is not None and weight.dim() == 2 else (None, None)


@contextmanager
def _attaching(path: Path) -> Iterator[None]:
    """peft's own refusal of an adapter the checks above let through (a rank pattern, layers to
    transform, ...) as one line naming the folder; what peft warns of while attaching (a setting
    it overrides, such as fan_in_fan_out on plain Linear layers) as one note naming the folder,
    not a Python warning with its source line."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            yield
    except EvalkitError:
        raise
    except Exception as exc:  # whatever peft raises on a folder it cannot attach
        said = " ".join(str(exc).split())  # peft's size errors name the weight on their second line
        raise EvalkitError(f"peft cannot attach this adapter: {said[:300] or type(exc).__name__}",
                           where=str(path)) from None
    for w in caught:
        if issubclass(w.category, UserWarning) and f"{os.sep}peft{os.sep}" in w.filename:
            log.warning("%s: peft: %s", path, " ".join(str(w.message).split()))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _base_weights(model: Any) -> dict[str, tuple[int, int, int]]:
    """Each base weight by its name in the bare base: which tensor, where its data lies, and its
    in-place write count."""
    return {name.removeprefix("base_model.model.").replace(".base_layer.", "."): (id(w), w.data_ptr(), w._version)
            for name, w in model.named_parameters() if "lora_" not in name}


def _check_base_kept(before: dict[str, tuple[int, int, int]], model: Any, path: Path) -> None:
    """Attaching adds LoRA beside the base's weights; an adapter whose attaching changed one (a
    peft initialisation or variant the config checks did not know) would change every model of
    the run, the reference's too."""
    after = _base_weights(model)
    changed = [name for name, state in before.items() if after.get(name) != state]
    if changed:
        raise EvalkitError(f"attaching this adapter changed the base's weight '{changed[0]}' ({len(changed)} such); "
                           "evalkit runs adapters that leave the base as it is", where=str(path))


class AttachedAdapters:
    """A run's adapters on its one base, each attached when first needed and detached once it is
    scored, so a run over hundreds of adapters holds only the few it is working on.

    peft's attach walks every module of the model, the attached adapters' own too, so holding
    all N made attaching O(N^2) and kept every adapter's weights in memory to the end.
    The base weights are shared: switching is `activate(name)`, and the reference is
    `with model.disable_adapter():`. (HFLM's `peft=` argument is ignored for model objects.)
    """

    def __init__(self, base: Base, paths: dict[str, Path]):
        from peft import PeftModel

        self.paths = paths
        first = next(iter(paths))
        before = _base_weights(base.model)
        with _attaching(paths[first]):
            self.model = PeftModel.from_pretrained(base.model, str(paths[first]), adapter_name=first,
                                                   is_trainable=False)
        _check_base_kept(before, self.model, paths[first])
        self.model.eval()
        self._in_model_dtype(first)
        self.attached = [first]
        self._finished: set[str] = set()

    def _in_model_dtype(self, name: str) -> None:
        """peft keeps adapter weights in float32 on a bf16 base, which casts every LoRA layer's
        input up and its update back down on every call (a quarter of a bf16 forward here)."""
        from peft.tuners.lora import LoraLayer

        dtype: Any = self.model.get_base_model().dtype
        for module in self.model.modules():
            if isinstance(module, LoraLayer) and name in module.lora_A:
                module.lora_A[name].to(dtype)
                module.lora_B[name].to(dtype)

    def attach(self, names: Iterable[str | None]) -> None:
        """Make sure the named adapters (None, the base, is skipped) are on the model."""
        for name in names:
            if name is not None and name not in self.attached:
                before = _base_weights(self.model)
                with _attaching(self.paths[name]):
                    self.model.load_adapter(str(self.paths[name]), adapter_name=name, is_trainable=False)
                _check_base_kept(before, self.model, self.paths[name])
                self._in_model_dtype(name)
                self.attached.append(name)

    def activate(self, name: str) -> None:
        """Attach and switch to `name`; adapters already scored are detached."""
        self.attach([name])
        self.model.set_adapter(name)
        for done in [n for n in self.attached if n in self._finished and n != name]:
            self.model.delete_adapter(done)
            self.attached.remove(done)

    def finish(self, name: str) -> None:
        """`name` is scored; it goes at the next switch."""
        self._finished.add(name)
