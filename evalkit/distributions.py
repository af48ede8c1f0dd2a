"""Next-token distributions along a continuation, computed beside lm-eval on the same model.

lm-eval returns log-likelihoods of whole continuations, not the full next-token
distributions that KL(subject || reference) needs, so this module runs its own forward
pass over prompt + continuation, split into tokens exactly as lm-eval splits them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.tasks import continuation_tokens


@dataclass
class Along:
    """One continuation scored under one model."""

    token_ids: list[int]
    logprobs: np.ndarray  # (T, V) log-softmax at each continuation position, float32
    nll_sum: float
    token_logprobs: list[float]


def along_continuations(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int) -> list[Along]:
    """Log-softmax over the vocabulary at every continuation token of each (prompt, text)."""
    import torch

    encoded = []
    for prompt, text in pairs:
        cont = continuation_tokens(tokenizer, prompt, text) if text else []
        ctx = tokenizer(prompt)["input_ids"] if text else []
        encoded.append((ctx, cont))
    out: list[Along | None] = [None] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    vocab = model.get_output_embeddings().weight.shape[0]
    for start in range(0, len(order), batch_size):
        batch = [i for i in order[start : start + batch_size] if encoded[i][1]]
        for i in order[start : start + batch_size]:
            if not encoded[i][1]:
                out[i] = Along([], np.zeros((0, vocab), dtype=np.float32), 0.0, [])
        if not batch:
            continue
        seqs = [encoded[i][0] + encoded[i][1] for i in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):  # right padding: positions stay 0..len-1
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, L, V)
        logp = torch.log_softmax(logits, dim=-1)
        for row, i in enumerate(batch):
            ctx, cont = encoded[i]
            # The token at position t is predicted at position t - 1.
            rows = logp[row, len(ctx) - 1 : len(ctx) - 1 + len(cont)]  # (T, V)
            picked = rows[torch.arange(len(cont)), torch.tensor(cont)]
            out[i] = Along(list(cont), rows.numpy().astype(np.float32), float(-picked.sum()),
                           [float(x) for x in picked])
    return [a for a in out if a is not None]


def mean_kl(subject: np.ndarray, reference: np.ndarray) -> float:
    """Mean over positions of KL(subject || reference) = sum_v p_s (log p_s - log p_r), in nats."""
    if subject.shape != reference.shape:
        raise ValueError(f"distributions differ in shape {subject.shape} vs {reference.shape}")
    if len(subject) == 0:
        return 0.0
    p = np.exp(subject.astype(np.float64))
    kl = (p * (subject.astype(np.float64) - reference.astype(np.float64))).sum(axis=1)
    return float(np.clip(kl, 0.0, None).mean())
