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
into that output inside the rank-r matrix product (`addmm_`: the product accumulated in float32
and added before the one rounding of the sum), where peft rounds lora_B's output, its scaling and
the sum each to bf16. On SmolLM2 in bf16, peft's path made an adapter's choice scoring 0.55 s
slower than the base's. The layer's forward is replaced for the while, not its base layer's:
peft is not told the adapter is merged, so nothing inside can unmerge it from the base's weights.

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
        if not isinstance(module, Linear) or module.disable_adapters or module.merged or module.training:
            continue
        active = module.active_adapters
        if len(active) != 1 or active[0] not in module.lora_A or active[0] not in module.lora_B:
            continue
        name = active[0]
        if module.use_dora.get(name, False) or name in module.lora_variant or module.lora_bias.get(name, False):
            continue
        if module.get_base_layer().weight.dtype != torch.float32 and not _can_add_inside(module, name):
            continue
        layers.append(module)
    folded = {id(m) for m in layers if m.get_base_layer().weight.dtype == torch.float32}
    if sum(m.get_base_layer().weight.nbytes for m in layers if id(m) in folded) > FOLD_MAX_BYTES:
        return [m for m in layers if id(m) not in folded]
    return layers


def _can_add_inside(module, name: str) -> bool:
    """May a lower-precision layer's adapter be added inside its base's product? The base is a
    plain Linear (not GPT-2's Conv1D, whose weight is stored transposed, nor a subclass with a
    forward of its own), nothing hooks it (offloading does), and the adapter is in its dtype."""
    import torch

    base = module.get_base_layer()
    return (type(base) is torch.nn.Linear
            and not (base._forward_hooks or base._forward_pre_hooks or "forward" in base.__dict__)
            and module.lora_A[name].weight.dtype == module.lora_B[name].weight.dtype == base.weight.dtype)


@contextmanager
def folded_lora(model):
    """Inside, every foldable LoRA layer of `model` runs faster with the same adapter: a float32
    one on merged weights, a lower-precision one with the adapter's product added inside."""
    import torch

    layers = _foldable(model) if hasattr(model, "disable_adapter") else []
    merged, added = [], []
    try:
        with torch.no_grad():
            for module in layers:
                name = module.active_adapters[0]
                base = module.get_base_layer()
                if base.weight.dtype == torch.float32:
                    merged.append((module, name, base.weight))
                    base.weight = torch.nn.Parameter(base.weight + module.get_delta_weight(name).to(torch.float32),
                                                     requires_grad=False)
                    module.merged_adapters.append(name)  # peft's forward then runs the base layer only
                else:
                    added.append((module, module.__dict__.get("forward")))
                    module.forward = _with_lora_added(module, name)
        yield
    finally:
        for module, name, original in merged:  # every weight back first, whatever peft did inside
            module.get_base_layer().weight = original
        for module, name, _ in merged:
            if name in module.merged_adapters:
                module.merged_adapters.remove(name)
        for module, own in added:
            if own is None:
                del module.forward
            else:
                module.forward = own


def _with_lora_added(module, name: str):
    """The forward of `module` (peft's LoRA layer) with (x A^T)(scaling B)^T added into the base
    layer's output by the rank-r product itself. The layer's own forward runs instead wherever the
    layer is no longer as it was when this was made (adapters disabled or switched, merged,
    arguments beyond the input)."""
    import torch

    peft_forward = module.forward
    base = module.get_base_layer()
    lora_a = module.lora_A[name].weight
    scaled_b = (module.lora_B[name].weight * module.scaling[name]).t()  # exact for a power-of-two scaling

    def forward(x, *args, **kwargs):
        if args or kwargs or module.disable_adapters or module.merged or list(module.active_adapters) != [name]:
            return peft_forward(x, *args, **kwargs)
        out = torch.nn.functional.linear(x, base.weight, base.bias)
        low = torch.nn.functional.linear(x, lora_a)
        out.view(-1, out.shape[-1]).addmm_(low.reshape(-1, low.shape[-1]), scaled_b)
        return out

    return forward
