"""The active LoRA adapter folded into the weights (or into the product) for some forward passes.

peft runs a LoRA layer as base(x) + lora_B(lora_A(x)) * scaling: two more matmuls of rank r and
two elementwise passes over every output, in every layer, for every token. Scoring many tokens
with one adapter (choices, KL along a continuation) is cheaper on W + scaling * B @ A, computed
once: on SmolLM2 with an adapter on all seven projections, fp32 choice scoring took 8.49 s
merged against 9.23 s through peft's path (the base alone: 8.60 s).

The merged weights are new parameters swapped in for the base layer's and swapped back on exit,
so the base's own weights are never changed (peft's merge/unmerge adds and subtracts in place,
which leaves rounding behind) and a weight tied to another module (a head tied to the input
embedding) stays as it is there. That holds a second copy of every adapted weight while it
lasts, so an adapter whose weights would take more than FOLD_MAX_BYTES is not folded.

In bf16 (or fp16), W + delta would round a small trained update away (bf16 keeps 3 significant
digits of W), so nothing is folded: the layer computes base(x), then adds (x A^T)(scaling B)^T
into that output inside the rank-r matrix product (`addmm_`, accumulated in float32 and rounded
once), instead of peft's four operations, each rounded to bf16 (A, B, the scaling, the sum). On
SmolLM2 in bf16, peft's path made an adapter's choice scoring 0.55 s slower than the base's.

Plain LoRA on linear layers only; anything else (DoRA and the other variants, a LoRA bias,
embeddings, several active adapters, adapters disabled, an adapter whose weights are not in the
base's dtype) keeps peft's path.
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
        if len(active) != 1 or active[0] not in module.lora_A or active[0] not in module.lora_B:
            continue
        name = active[0]
        if module.use_dora.get(name, False) or name in module.lora_variant or module.lora_bias.get(name, False):
            continue
        base = module.get_base_layer()
        if base.weight.dtype != torch.float32 and not (
                isinstance(base, torch.nn.Linear)  # not GPT-2's Conv1D, whose weight is stored transposed
                and module.lora_A[name].weight.dtype == module.lora_B[name].weight.dtype == base.weight.dtype):
            continue
        layers.append(module)
    folded = [m for m in layers if m.get_base_layer().weight.dtype == torch.float32]
    if sum(m.get_base_layer().weight.nbytes for m in folded) > FOLD_MAX_BYTES:
        return [m for m in layers if m not in folded]
    return layers


@contextmanager
def folded_lora(model):
    """Inside, every foldable LoRA layer of `model` runs its base layer on merged weights (float32)
    or with the adapter's product added inside it (lower precision)."""
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
                if original.dtype == torch.float32:
                    base.weight = torch.nn.Parameter(original + module.get_delta_weight(name).to(original.dtype),
                                                     requires_grad=False)
                else:
                    base.forward = _with_lora_added(base, module.lora_A[name].weight,
                                                    module.lora_B[name].weight * module.scaling[name])
                module.merged_adapters.append(name)  # peft's forward then runs the base layer only
        yield
    finally:
        for module, name, original in swapped:  # every weight back first, whatever peft did inside
            base = module.get_base_layer()
            base.weight = original
            base.__dict__.pop("forward", None)
        for module, name, _ in swapped:
            if name in module.merged_adapters:
                module.merged_adapters.remove(name)


def _with_lora_added(base, lora_a, scaled_b):
    """`base`'s forward with (x A^T)(scaled B)^T added into its output by the rank-r product."""
    import torch

    def forward(x):
        out = torch.nn.functional.linear(x, base.weight, base.bias)
        low = torch.nn.functional.linear(x, lora_a)
        out.view(-1, out.shape[-1]).addmm_(low.reshape(-1, low.shape[-1]), scaled_b.t())
        return out

    return forward
