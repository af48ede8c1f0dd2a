"""A text's token ids as evalkit scores them: with what a tokenizer puts before every text (a BOS,
as lm-eval's contexts begin), without what some put after it (an EOS, a SEP).

A tokenizer that appends EOS to every encoding (a Llama tokenizer with `add_eos_token`, a
post-processor `$A </s>`) ends every prompt with EOS, so the model reads each prompt as a finished
document; and lm-eval's split of context and option (prompt + option encoded, minus the prompt's
length) then scores EOS in place of the option's first token. On a tiny Llama so built, lm-eval
scored 23 of the shipped 178 options as EOS alone, and every choice's log-likelihood was 0.5 nats
off the same model without it. evalkit drops the appended ids wherever it encodes a text to score
or continue; elsewhere the tokenizer is used as it came.
"""

from __future__ import annotations

import weakref
from contextlib import suppress
from typing import Any

_PROBE = "Hello world"
# Per tokenizer: (what its appending depends on, the ids it appends). Setting add_eos_token or
# add_bos_token rebuilds a fast tokenizer's post-processor: the ids are probed again.
_appended: "weakref.WeakKeyDictionary[Any, tuple[tuple, tuple[int, ...]]]" = weakref.WeakKeyDictionary()


def appended_ids(tokenizer: Any) -> tuple[int, ...]:
    """The ids `tokenizer` puts after every text on its own; () for most causal LMs' tokenizers,
    and where it cannot be told (the plain ids do not appear inside the full ones)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = (str(getattr(backend, "post_processor", None)), getattr(tokenizer, "add_bos_token", None),
             getattr(tokenizer, "add_eos_token", None))
    known = None
    with suppress(TypeError):  # a tokenizer that cannot be weakly referenced is probed at each call
        known = _appended.get(tokenizer)
    if known is not None and known[0] == state:
        return known[1]
    full = list(tokenizer(_PROBE)["input_ids"])
    plain = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    found: tuple[int, ...] = ()
    if plain:
        for start in range(len(full) - len(plain), -1, -1):  # the last match: what follows it was appended
            if full[start : start + len(plain)] == plain:
                found = tuple(full[start + len(plain) :])
                break
    with suppress(TypeError):
        _appended[tokenizer] = (state, found)
    return found


def strip_appended(tokenizer: Any, text: str, ids: list[int]) -> list[int]:
    """`ids` (an encoding of `text`) without the ids the tokenizer appended, if it did. Ids encoded
    without special tokens are left alone, even where the text ends in those ids itself ('</s>')."""
    tail = appended_ids(tokenizer)
    if not tail or tuple(ids[-len(tail) :]) != tail:
        return list(ids)
    if len(ids) < len(tokenizer(text, add_special_tokens=False)["input_ids"]) + len(tail):
        return list(ids)  # nothing was appended: the text ends in those ids itself
    return list(ids[: -len(tail)])


def encode(tokenizer: Any, text: str) -> list[int]:
    """`text`'s ids as lm-eval's HF class encodes a prompt, without what the tokenizer appends: with
    the tokenizer's special tokens (a BOS), except where the text already begins with the BOS's text
    (a rendered chat template), which would otherwise begin with two."""
    prefix = next((t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                   if t is not None), 0)  # lm-eval's prefix token; evalkit's class falls back to padding
    if text.startswith(tokenizer.decode(prefix)):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return strip_appended(tokenizer, text, list(tokenizer(text)["input_ids"]))


def padded(rows: list[list[int]], pad: int, left: bool = True):
    """Rows of ids as one padded batch (a tensor) and its attention mask."""
    import torch

    width = max(map(len, rows))
    fill = [width - len(r) for r in rows]
    ids = [[pad] * n + r if left else r + [pad] * n for r, n in zip(rows, fill)]
    mask = [[0] * n + [1] * len(r) if left else [1] * len(r) + [0] * n for r, n in zip(rows, fill)]
    return torch.tensor(ids), torch.tensor(mask)
