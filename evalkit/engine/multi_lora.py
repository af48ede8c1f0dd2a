"""Several LoRA adapters in one batch: rows [k*R, (k+1)*R) run the k-th model of a group.

Greedy decoding reads every weight of the model at every step for a handful of rows, so one
step over eleven models' rows costs far less than eleven steps. Inside `grouped`, peft's LoRA
layers run their base layer only (adapters disabled), on all rows at once, and a forward hook
on each LoRA layer adds each row group's own low-rank update, lora_B(lora_A(x)) * scaling,
for all groups in two batched matmuls. A group's model is an adapter name, or None for the
base (no update). peft's own mixed-batch path (`adapter_names=`) gives
the same numbers but gathers rows by index in every layer, which costs most of the gain.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch


def _lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def can_group(model) -> bool:
    """Plain, unmerged LoRA on linear layers only (DoRA and the other variants, LoRA biases,
    embeddings and convolutions differ)."""
    from peft.tuners.lora import Linear

    layers = _lora_layers(model) if hasattr(model, "disable_adapter") else []
    return bool(layers) and all(isinstance(m, Linear) and not m.merged and not getattr(m, "lora_variant", {})
                                and not any(m.use_dora.values()) and not any(getattr(m, "lora_bias", {}).values())
                                for m in layers)


def _stacked_updates(module, groups: list[str | None]) -> tuple:
    """Every group's A^T and (B * scaling)^T, stacked for one batched matmul: zeros for the
    base, and lower ranks padded with zeros to the highest (which adds nothing)."""
    names = [g for g in groups if g is not None]
    rank = max(module.lora_A[n].weight.shape[0] for n in names)
    like = module.lora_A[names[0]].weight
    a = torch.zeros((len(groups), module.in_features, rank), dtype=like.dtype, device=like.device)
    b = torch.zeros((len(groups), rank, module.out_features), dtype=like.dtype, device=like.device)
    for k, name in enumerate(groups):
        if name is not None:
            r = module.lora_A[name].weight.shape[0]
            a[k, :, :r] = module.lora_A[name].weight.T
            b[k, :r] = module.lora_B[name].weight.T * module.scaling[name]
    return a, b


def _add_updates(module, args, output, stacked: tuple):
    """output += x A^T (B * scaling)^T, each block of rows with its own group's A and B.
    Dropout is left out: it is the identity in eval mode, and models are evaluated in eval mode."""
    a, b = stacked
    x = args[0].to(a.dtype)
    update = torch.bmm(torch.bmm(x.reshape(a.shape[0], -1, x.shape[-1]), a), b)
    output += update.reshape(output.shape).to(output.dtype)
    return output


@contextmanager
def grouped(model, groups: list[str | None]):
    """Within: a batch of len(groups) equal blocks of rows runs groups[k] on its k-th block."""
    handles = []
    with model.disable_adapter():
        try:
            for layer in _lora_layers(model):
                stacked = _stacked_updates(layer, groups)
                handles.append(layer.register_forward_hook(partial(_add_updates, stacked=stacked)))
            yield
        finally:
            for handle in handles:
                handle.remove()
