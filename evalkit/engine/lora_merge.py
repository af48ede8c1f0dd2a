"""The active LoRA adapter folded into the weights for the length of some forward passes.

peft runs a LoRA layer as base(x) + lora_B(lora_A(x)) * scaling: two more matmuls of rank r and
two elementwise passes over every output, in every layer, for every token. Scoring many tokens
with one adapter (choices, KL along a continuation) is cheaper on W + scaling * B @ A, computed
once: on SmolLM2 with an adapter on all seven projections, fp32 choice scoring took 8.49 s
merged against 9.23 s through peft's path (the base alone: 8.60 s).

The merged weights are new parameters swapped in for the base layer's and swapped back on exit,
so the base's own weights are never changed (peft's merge/unmerge adds and subtracts in place,
which leaves rounding behind) and a weight tied to another module (a head tied to the input
embedding) stays as it is there. That holds a second copy of every adapted weight while it
lasts, so an adapter whose weights would take more than FOLD_MAX_BYTES is not folded. Float32
only: in bf16, W + delta rounds a small trained update away (bf16 keeps 3 significant digits of
W). Plain LoRA on linear layers only; anything else (DoRA and the other variants, a LoRA bias,
embeddings, several active adapters, adapters disabled) keeps peft's path.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

# The second copy of the adapted weights a fold holds, at most (SmolLM2 with every projection
# adapted: 0.43 GB in fp32; a 7B model's would be 24 GB, where peft's path is the better deal).
FOLD_MAX_BYTES = 2 * 2**30


def _foldable(model) -> list:
    import torch
    from peft.tuners.lora import Linear

    layers: list[Any] = []  # peft LoRA layers (untyped: their base layer's weight is what is read)
    for module in model.modules():
        if not isinstance(module, Linear) or module.disable_adapters or module.merged:
            continue
        active = module.active_adapters
        if len(active) != 1 or active[0] not in module.lora_A:
            continue
        name = active[0]
        if module.use_dora.get(name, False) or name in module.lora_variant or module.lora_bias.get(name, False):
            continue
        if module.get_base_layer().weight.dtype != torch.float32:
            continue
        layers.append(module)
    size = sum(m.get_base_layer().weight.nbytes for m in layers)
    return layers if size <= FOLD_MAX_BYTES else []


@contextmanager
def folded_lora(model):
    """Inside, every foldable LoRA layer of `model` runs its base layer on merged weights."""
    import torch

    layers = _foldable(model) if hasattr(model, "disable_adapter") else []
    swapped = []
    try:
        with torch.no_grad():
            for module in layers:
                name = module.active_adapters[0]
                base = module.get_base_layer()
                original = base.weight
                swapped.append((module, name, original))
                base.weight = torch.nn.Parameter(original + module.get_delta_weight(name).to(original.dtype),
                                                 requires_grad=False)
                module.merged_adapters.append(name)  # peft's forward then runs the base layer only
        yield
    finally:
        for module, name, original in swapped:  # every weight back first, whatever peft did inside
            module.get_base_layer().weight = original
        for module, name, _ in swapped:
            if name in module.merged_adapters:
                module.merged_adapters.remove(name)
