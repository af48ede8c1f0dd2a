"""Next-token distributions along a continuation, computed beside lm-eval on the same model.

lm-eval returns log-likelihoods of whole continuations, not the full next-token
distributions that KL(subject || reference) needs, so this module runs its own forward
pass over prompt + continuation, split into tokens exactly as lm-eval splits them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.engine.base import context_limit
from evalkit.engine.packing import build_packs, forward_packs
from evalkit.engine.tasks import continuation_tokens


@dataclass
class Along:
    """One continuation scored under one model."""

    token_ids: list[int]
    logprobs: np.ndarray  # (T, V) log-softmax at each continuation position, float32
    nll_sum: float
    token_logprobs: list[float]


def along_continuations(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int) -> list[Along]:
    """Log-softmax over the vocabulary at every continuation token of each (prompt, text).

    Evaluated with the same shared-prefix packing as lm-eval's requests (`evalkit/packing.py`):
    only the continuation positions go through the output head.
    """
    vocab = model.get_output_embeddings().weight.shape[0]
    requests, which = [], []
    for k, (prompt, text) in enumerate(pairs):
        cont = continuation_tokens(tokenizer, prompt, text) if text else []
        if cont:
            requests.append((tokenizer(prompt)["input_ids"], cont))
            which.append(k)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scored = forward_packs(model, build_packs(requests, context_limit(model, tokenizer)), batch_size, pad,
                         keep_rows=True)
    out = [Along([], np.zeros((0, vocab), dtype=np.float32), 0.0, []) for _ in pairs]
    for r, k in enumerate(which):
        s = scored[r]
        assert s.rows is not None  # asked for with keep_rows
        out[k] = Along(requests[r][1], s.rows.astype(np.float32), -s.logprob_sum, s.token_logprobs)
    return out


def mean_kl(subject: np.ndarray, reference: np.ndarray) -> float:
    """Mean over positions of KL(subject || reference) = sum_v p_s (log p_s - log p_r), in nats."""
    if subject.shape != reference.shape:
        raise ValueError(f"distributions differ in shape {subject.shape} vs {reference.shape}")
    if len(subject) == 0:
        return 0.0
    p = np.exp(subject.astype(np.float64))
    kl = (p * (subject.astype(np.float64) - reference.astype(np.float64))).sum(axis=1)
    return float(np.clip(kl, 0.0, None).mean())
