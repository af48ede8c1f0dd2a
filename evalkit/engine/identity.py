"""What identifies a model and a tokenizer: the keys the score cache, the general-text NLL cache
and the adapter-to-base check compare."""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

from evalkit.files import stable_hash


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
        if t.numel():
            h.update(t.view(torch.uint8).numpy())  # the buffer itself, not a copy of it
    return h.hexdigest()


# config.json keys that say how it was saved, not what the model computes.
_SAVING_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache")


def model_fingerprint(model, tokenizer, config: dict[str, Any]) -> str:
    """The weights, what config.json (`config`, as read) says the model computes with them (RoPE
    base, norm epsilon, sliding window, architecture) and the tokenizer: two models alike in one
    of these are different models, and an adapter or a cached score of one is never used for the other."""
    config = {k: v for k, v in config.items() if k not in _SAVING_KEYS}
    return stable_hash({"weights": weights_fingerprint(model), "config": config,
                        "tokenizer": tokenizer_key(tokenizer)})


# tokenizer -> (its size, its vocabulary key). A run asks once per model and per cache, and
# get_vocab() copies every entry out of the tokenizer: 70 ms a call on SmolLM2's 49,152, 0.8 s
# of a run over base + 5 adapters. Added tokens change the size, and so the key is recomputed.
_VOCABULARY_KEYS: "weakref.WeakKeyDictionary[Any, tuple[int, str]]" = weakref.WeakKeyDictionary()


def vocabulary_key(tokenizer) -> str:
    """Same key, same token ids: a subject's distributions compare with the reference's only then."""
    known = _VOCABULARY_KEYS.get(tokenizer)
    if known is None or known[0] != len(tokenizer):
        known = (len(tokenizer), stable_hash(sorted(tokenizer.get_vocab().items())))
        _VOCABULARY_KEYS[tokenizer] = known
    return known[1]


def tokenizer_key(tokenizer) -> str:
    """Everything of a tokenizer that changes scores: its vocabulary, special tokens and chat
    template (part of the score cache's key, beside the weights)."""
    return stable_hash({"vocabulary": vocabulary_key(tokenizer), "special": tokenizer.special_tokens_map,
                        "chat_template": getattr(tokenizer, "chat_template", None), "class": type(tokenizer).__name__})
