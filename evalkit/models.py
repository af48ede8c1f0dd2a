"""Load a base once, fingerprint it, and put adapters on it (peft), checked against their manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError

MANIFEST_NAME = "evalkit.json"

# LoRA targets per architecture family; other models fall back to every linear layer but the head.
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


@dataclass
class Base:
    """A loaded base model with its tokenizer and the fingerprint adapters are checked against."""

    model: Any
    tokenizer: Any
    path: str
    fingerprint: str
    model_type: str


def weights_fingerprint(model) -> str:
    """sha256 over every parameter and buffer name, dtype, shape and bytes, in name order.

    Content, not file, identity: the same weights give the same fingerprint whatever
    format or folder they were saved in.
    """
    import torch

    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def quiet_transformers() -> None:
    import warnings

    import transformers

    # peft still probes this deprecated attribute on every wrap; the warning is not ours to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_base(path: Path, dtype: str = "float32", device: str = "cpu") -> Base:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    path = Path(path).resolve()
    if not (path / "config.json").is_file():
        raise EvalkitError("not a Hugging Face model folder (no config.json)", where=str(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        # Load as stored, fingerprint, then cast: the fingerprint names the weights on disk, so an
        # adapter trained on the fp32 base is still accepted when run in bfloat16.
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto")
    except (OSError, ValueError) as exc:
        raise EvalkitError(f"cannot load the model: {str(exc).splitlines()[0]}", where=str(path)) from None
    fingerprint = weights_fingerprint(model)
    head = model.get_output_embeddings()
    kept = float32_head(head, device) if dtype != "float32" and isinstance(head, torch.nn.Linear) else None
    model = model.to(device=device, dtype=getattr(torch, dtype))
    if kept is not None:
        model.config.tie_word_embeddings = False  # else lm-eval's tie_weights() puts the bf16 embedding back
        model.set_output_embeddings(kept)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Base(model=model, tokenizer=tokenizer, path=str(path), fingerprint=fingerprint,
                model_type=model.config.model_type)


def float32_head(head, device: str):
    """A float32 copy of the output head (made before the model is cast) that casts its input up.

    bfloat16 logits carry 8 bits of mantissa: a logit near 12 is rounded to 1/16 of a nat,
    which was most of the bf16-vs-fp32 difference in per-item margins on the demo (median
    0.019 nats with a bf16 head, 0.004 with this one). The head is the cheapest layer to keep:
    only the positions being scored go through it.
    """
    import torch

    kept = torch.nn.Linear(head.in_features, head.out_features, bias=head.bias is not None,
                           device=device, dtype=torch.float32)
    with torch.no_grad():
        kept.weight.copy_(head.weight)
        if head.bias is not None:
            kept.bias.copy_(head.bias)
    kept.register_forward_pre_hook(lambda _, args: (args[0].float(), *args[1:]))
    return kept.requires_grad_(False)


def context_limit(model, tokenizer) -> int:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(getattr(tokenizer, "model_max_length", 2048))


def lora_targets(model) -> list[str]:
    """LoRA target module names for this architecture (table above, else every linear layer)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    model_type = getattr(model.config, "model_type", "")
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    head = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
    }
    if not names:
        raise EvalkitError(f"no linear layers found to put LoRA on in a '{model_type}' model")
    return sorted(names)


def uses_conv1d(model) -> bool:
    """GPT-2 style layers store weights transposed; LoRA must know (peft's fan_in_fan_out)."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def load_manifest(folder: Path) -> dict[str, Any] | None:
    """The evalkit manifest of an adapter or checkpoint folder; None when it has none."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise EvalkitError(f"not valid JSON: {exc}", where=str(path)) from None
    if not isinstance(data, dict):
        raise EvalkitError("expected a JSON object", where=str(path))
    return data


def manifest_key(folder: Path) -> str | None:
    """The content key a folder was trained for, or None (absent or unreadable: train it again)."""
    try:
        return (load_manifest(folder) or {}).get("key")
    except EvalkitError:
        return None


def read_manifest(adapter_dir: Path) -> dict[str, Any]:
    """An adapter's manifest, required: without it the adapter's base cannot be checked."""
    if not adapter_dir.is_dir():
        raise EvalkitError("no such adapter folder", where=str(adapter_dir))
    if not (adapter_dir / "adapter_config.json").is_file():
        raise EvalkitError("not a peft adapter folder (no adapter_config.json)", where=str(adapter_dir))
    manifest = load_manifest(adapter_dir)
    if manifest is None:
        raise EvalkitError("no evalkit manifest, so its base cannot be checked", where=str(adapter_dir / MANIFEST_NAME),
                           hint="train it with 'evalkit train'")
    return manifest


def check_adapter_base(adapter_dir: Path, manifest: dict[str, Any], base: Base) -> None:
    """Refuse an adapter trained on another base: its numbers would mean nothing."""
    trained_on = manifest.get("base", {}).get("fingerprint")
    if trained_on != base.fingerprint:
        raise EvalkitError(
            f"field 'base.fingerprint': adapter was trained on base {str(trained_on)[:12]} "
            f"({manifest.get('base', {}).get('path', '?')}), "
            f"but the loaded base is {base.fingerprint[:12]} ({base.path})",
            where=str(adapter_dir / MANIFEST_NAME), hint="pass --base with the base it was trained on",
        )


def check_adapter_weights(adapter_dir: Path) -> None:
    """An adapter is attached only when its turn comes, so unreadable weights must be caught
    before the run starts, not after half of it."""
    from safetensors import SafetensorError, safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        if (adapter_dir / "adapter_model.bin").is_file():
            return
        raise EvalkitError("no adapter weights (adapter_model.safetensors)", where=str(adapter_dir))
    try:
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
    except (OSError, SafetensorError) as exc:
        raise EvalkitError(f"unreadable adapter weights: {str(exc).splitlines()[0]}", where=str(weights)) from None


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
        self.model = PeftModel.from_pretrained(base.model, str(paths[first]), adapter_name=first, is_trainable=False)
        self.model.eval()
        self._in_model_dtype(first)
        self.attached = [first]
        self._finished: set[str] = set()

    def _in_model_dtype(self, name: str) -> None:
        """peft keeps adapter weights in float32 on a bf16 base, which casts every LoRA layer's
        input up and its update back down on every call (a quarter of a bf16 forward here)."""
        from peft.tuners.lora import LoraLayer

        dtype = self.model.get_base_model().dtype
        for module in self.model.modules():
            if isinstance(module, LoraLayer) and name in module.lora_A:
                module.lora_A[name].to(dtype)
                module.lora_B[name].to(dtype)

    def attach(self, names) -> None:
        """Make sure the named adapters (None, the base, is skipped) are on the model."""
        for name in names:
            if name is not None and name not in self.attached:
                self.model.load_adapter(str(self.paths[name]), adapter_name=name, is_trainable=False)
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
