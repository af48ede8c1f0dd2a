"""Next-token distributions along a continuation, computed beside lm-eval on the same model.

lm-eval returns log-likelihoods of whole continuations, not the full next-token
distributions that KL(subject || reference) needs, so this module runs its own forward
pass over the token ids of a prompt and of a greedy continuation, exactly as generate() saw
and produced them. (Re-encoding the decoded text is not the same thing: a SentencePiece
tokenizer drops the leading space of a decoded continuation, and a greedy model may produce a
split the tokenizer would not.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.engine.base import context_limit
from evalkit.engine.packing import build_packs, forward_packs, forward_unpacked
from evalkit.engine.packing_check import packing_verified, record_packing_failure
from evalkit.errors import first_line

# What a decoder shows for the bytes of a character it has only part of.
PARTIAL = "\ufffd"


@dataclass
class Along:
    """One continuation scored under one model."""

    token_ids: list[int]
    logprobs: np.ndarray  # (T, V) log-softmax at each continuation position, float32
    nll_sum: float
    token_logprobs: list[float]


def along_continuations(model, tokenizer, pairs: list[tuple[list[int], list[int]]], batch_size: int) -> list[Along]:
    """Log-softmax over the vocabulary at every continuation token of each (prompt ids, continuation ids).

    Scored with the same shared-prefix packing as lm-eval's requests (`evalkit/engine/packing.py`):
    only the continuation positions go through the output head. A model on which packing failed
    its check, or cannot run, is scored unpacked: each request its own sequence.
    """
    vocab = model.get_output_embeddings().weight.shape[0]
    requests = [(list(prompt), list(cont)) for prompt, cont in pairs if cont]
    which = [k for k, (_, cont) in enumerate(pairs) if cont]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scored = None
    limit = context_limit(model, tokenizer)
    if requests and packing_verified(model, requests, pad, limit):
        try:
            scored = forward_packs(model, build_packs(requests, limit), batch_size, pad, keep_rows=True)
        except Exception as exc:  # a model that cannot take the packed layout after all
            record_packing_failure(model, first_line(exc))
    if scored is None:
        scored = forward_unpacked(model, requests, batch_size, keep_rows=True)
    out = [Along([], np.zeros((0, vocab), dtype=np.float32), 0.0, []) for _ in pairs]
    for r, k in enumerate(which):
        s = scored[r]
        assert s.rows is not None  # asked for with keep_rows
        out[k] = Along(requests[r][1], s.rows.astype(np.float32), -s.logprob_sum, s.token_logprobs)
    return out


def kept_tokens(tokenizer, produced: list[int], text: str) -> list[int]:
    """The ids generate() produced that make up `text` (lm-eval's decoded generation, cut at its
    stop sequences): the longest prefix, before an end-of-text or padding id, that decodes to
    whole characters lying within `text`. A token that straddles a stop sequence is not part of
    the text, so it is not kept; a character split over several byte tokens is kept whole."""
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    kept = 0
    for k, token in enumerate(produced, start=1):
        if token in stops:
            break
        decoded = tokenizer.decode(produced[:k], skip_special_tokens=True)
        if not text.startswith(decoded.rstrip(PARTIAL)):
            break
        if not decoded.endswith(PARTIAL):  # a prefix that ends inside a character is not a boundary
            kept = k
    return list(produced[:kept])


def mean_kl(subject: np.ndarray, reference: np.ndarray) -> float:
    """Mean over positions of KL(subject || reference) = sum_v p_s (log p_s - log p_r), in nats."""
    if subject.shape != reference.shape:
        raise ValueError(f"distributions differ in shape {subject.shape} vs {reference.shape}")
    if len(subject) == 0:
        return 0.0
    p = np.exp(subject.astype(np.float64))
    kl = (p * (subject.astype(np.float64) - reference.astype(np.float64))).sum(axis=1)
    return float(np.clip(kl, 0.0, None).mean())
