"""Several LoRA adapters in one batch: rows [k*R, (k+1)*R) run the k-th model of a group.

Greedy decoding reads every weight of the model at every step for a handful of rows, so one
step over eleven models' rows costs far less than eleven steps. Inside `grouped`, peft's LoRA
layers run their base layer only (adapters disabled), on all rows at once, and a forward hook
on each LoRA layer adds each row group's own low-rank update, computed as peft computes it:
lora_B(lora_A(dropout(x))) * scaling on that group's rows. A group's model is an adapter
name, or None for the base (no update). peft's own mixed-batch path (`adapter_names=`) gives
the same numbers but gathers rows by index in every layer, which costs most of the gain.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial


def _lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def can_group(model) -> bool:
    """Plain, unmerged LoRA on linear layers only (DoRA, embeddings and convolutions differ)."""
    from peft.tuners.lora import Linear

    layers = _lora_layers(model) if hasattr(model, "disable_adapter") else []
    return bool(layers) and all(isinstance(m, Linear) and not m.merged and not any(m.use_dora.values())
                                for m in layers)


def _add_updates(module, args, output, groups: list[str | None], rows: int):
    x = args[0]
    for k, name in enumerate(groups):
        if name is None:
            continue
        part = x[k * rows : (k + 1) * rows]
        lora_a, lora_b = module.lora_A[name], module.lora_B[name]
        part = part.to(lora_a.weight.dtype)
        update = lora_b(lora_a(module.lora_dropout[name](part))) * module.scaling[name]
        output[k * rows : (k + 1) * rows] += update.to(output.dtype)
    return output


@contextmanager
def grouped(model, groups: list[str | None], rows: int):
    """Within: a batch of len(groups) * rows rows runs groups[k] on its k-th block of rows."""
    handles = []
    with model.disable_adapter():
        try:
            for layer in _lora_layers(model):
                handles.append(layer.register_forward_hook(partial(_add_updates, groups=groups, rows=rows)))
            yield
        finally:
            for handle in handles:
                handle.remove()
