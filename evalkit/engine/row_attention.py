"""Packed scoring without computing padding: only attention sees rows.

Packed scoring (`packing.py`) used to lay packs end to end in rows of one width and run the model
on the rows; the gaps the packs leave are padding that every layer computed (16% of the tokens of
SmolLM2's choice passes), and every token attended over its whole row (a pack of 70 tokens in a
row of 128 paid for 128). Of a decoder's layers only attention needs the packs apart; the matrix
products, norms and MLPs, which take most of the time, treat each token on its own. So the model is handed
the packs' tokens alone, as one sequence, and at each attention layer this gathers the queries,
keys and values of each pack into a row of its own, rows of one width together, runs the model's
own attention function (sdpa, flash, ...) on each group with the packs' masks, and puts the
outputs back in sequence order. On SmolLM2 with the real suites (this machine's 2 cores, the
fastest of 5 interleaved runs) choice scoring took 5.50 s so against 6.28 s in padded rows of 128
in bf16, 8.50 s against 8.75 s in fp32 (whose passes are half as long, so padded less); attention
over rows as wide as each pack rounded up to 16 tokens took 0.50 s of it, against 0.68 s.

It works through transformers' attention interface, so it applies to a model that dispatches
attention there (`_supports_attention_backend`) to an implementation registered in it; other
models are run on padded rows as before (`packing.forward_rows`).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator

NAME = "evalkit_rows"


@dataclass
class Rows:
    """Packs of one width: each a row of `width` slots, its tokens first, padding after."""

    gather: Any  # (rows * width,) the sequence index of each slot's token (padding: any token)
    mask: Any  # (rows, 1, width, width) additive mask: a pack's tokens see their ancestors, padding itself
    rows: int
    width: int


@dataclass
class _Layout:
    inner: str  # the attention implementation the model runs on the rows
    groups: list[Rows]
    slot: Any  # (tokens,) each sequence token's slot in the groups' rows, laid one after another
    calls: int = 0  # attention calls that used this layout


_CURRENT: ContextVar[_Layout] = ContextVar("evalkit_rows")


def supported(model) -> bool:
    """Does `model` dispatch attention through transformers' interface, to a registered implementation?"""
    from transformers import AttentionInterface

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = getattr(inner.config, "_attn_implementation", None)
    # Switched and restored as one name: a model whose parts run different ones keeps padded rows.
    parts = [part for key in getattr(inner.config, "sub_configs", {})
             if (part := getattr(inner.config, key, None)) is not None]
    # Llama 4 scales its queries by each token's index in the sequence it is given, not by its
    # position id: in one long sequence a token past `floor_scale` (8,192) would be scaled as if
    # that far in, and the packing check's short probe would not see it.
    by_index = any(getattr(c, "attn_temperature_tuning", False) for c in (inner.config, *parts))
    return (bool(getattr(type(inner), "_supports_attention_backend", False))
            and name in AttentionInterface._global_mapping and name != NAME and not by_index
            and all(getattr(part, "_attn_implementation", name) == name for part in parts))


def _attention_in_rows(module, query, key, value, attention_mask, **kwargs):
    """Attention over the sequence's tokens regathered into rows: (1, heads, tokens, dim) tensors
    in, (1, tokens, heads, dim) out, as transformers' implementations return it. The mask the
    model passes is not the packs' (the model never sees them); each group's own is used."""
    import torch
    from transformers import AttentionInterface

    layout = _CURRENT.get()
    layout.calls += 1
    attend = AttentionInterface._global_mapping[layout.inner]
    outputs = []
    for group in layout.groups:
        def in_rows(states, group=group):  # token-major, as the projections lay the states out
            heads, dim = states.shape[1], states.shape[3]
            picked = states[0].transpose(0, 1).index_select(0, group.gather)
            return picked.view(group.rows, group.width, heads, dim).transpose(1, 2)

        out, _ = attend(module, in_rows(query), in_rows(key), in_rows(value), group.mask, **kwargs)
        outputs.append(out.reshape(group.rows * group.width, *out.shape[2:]))
    return torch.cat(outputs).index_select(0, layout.slot)[None], None


@contextmanager
def attention_in_rows(model, groups: list[Rows], slot) -> Iterator[None]:
    """Within: `model` (where `supported`) takes the packs' tokens as one sequence, and each of its
    attention layers runs on `groups` of rows. Raises if a forward pass within used none of them."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, _attention_in_rows)
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    layout = _Layout(config._attn_implementation, groups, slot)
    token = _CURRENT.set(layout)
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = layout.inner
        _CURRENT.reset(token)
    if not layout.calls:
        raise RuntimeError("the model's attention did not go through transformers' attention interface")
