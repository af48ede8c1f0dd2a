"""Shared-prefix scoring: every unique prompt computed once for all of its completions.

A multiple-choice item asks for log p(option | prompt) for each option. Run one sequence per
(prompt, option) pair, as lm-eval's HF path does, and the prompt is computed once per option.
Here the prompt and every option's tokens go into one packed row instead,

    prompt  | option 1[:-1] | option 2[:-1] | ...

with position ids that restart after the prompt for each option and a 4-D attention mask in
which an option's tokens see the prompt and their own earlier tokens, never another option's.
Each token is then computed once, and what each token sees is exactly what it sees in the
unpacked sequence, so the log-likelihoods are the same up to floating-point summation order.
Only the positions whose next-token logits are needed go through the output head.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Pack:
    """One packed row: a prompt and the completions (as branches) that follow it."""

    tokens: list[int]
    positions: list[int]
    branch: list[int]  # 0 for the prompt, k for the k-th branch in this row
    # (request index, continuation tokens, row positions whose logits predict them)
    requests: list[tuple[int, list[int], list[int]]] = field(default_factory=list)


def build_packs(requests: list[tuple[list[int], list[int]]], max_length: int) -> list[Pack]:
    """Group (context tokens, continuation tokens) requests by context; one row per context,
    split into several rows only where one would exceed `max_length`."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    for index, (context, _) in enumerate(requests):
        by_context.setdefault(tuple(context), []).append(index)
    packs = []
    for context, members in by_context.items():
        if not context:
            raise ValueError("a request with an empty context cannot be scored")
        pack = _new_pack(context)
        for index in members:
            continuation = requests[index][1]
            if not continuation:
                raise ValueError("a request with an empty continuation cannot be scored")
            branch = continuation[:-1]  # the last token is predicted, never fed
            if len(pack.tokens) + len(branch) > max_length and pack.requests:
                packs.append(pack)
                pack = _new_pack(context)
            if len(context) + len(branch) > max_length:
                raise ValueError(f"context and continuation ({len(context) + len(continuation)} tokens) "
                                 f"exceed the model's context of {max_length}")
            start = len(pack.tokens)
            k = len(pack.requests) + 1
            pack.tokens += branch
            pack.positions += list(range(len(context), len(context) + len(branch)))
            pack.branch += [k] * len(branch)
            # Token t of the continuation is predicted at the prompt's last position (t = 0),
            # else at the branch position holding token t - 1.
            predicted_at = [len(context) - 1] + list(range(start, start + len(branch)))
            pack.requests.append((index, list(continuation), predicted_at))
        packs.append(pack)
    return packs


def _new_pack(context: tuple[int, ...]) -> Pack:
    return Pack(tokens=list(context), positions=list(range(len(context))), branch=[0] * len(context))


def _supports_logits_to_keep(model) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


@dataclass
class PackedScore:
    logprob_sum: float
    greedy: bool  # every continuation token is the argmax
    token_logprobs: list[float]
    rows: "np.ndarray | None" = None  # (T, V) log-softmax at each continuation token, with keep_rows


def score_packs(model, packs: list[Pack], batch_size: int, pad_id: int, keep_rows: bool = False) -> dict[int, PackedScore]:
    """Request index -> its scores; packs batched by length (longest first)."""
    import torch

    results: dict[int, PackedScore] = {}
    order = sorted(range(len(packs)), key=lambda i: -len(packs[i].tokens))
    first = next(model.parameters())
    dtype, device = first.dtype, first.device
    keep_arg = _supports_logits_to_keep(model)
    for start in range(0, len(order), batch_size):
        batch = [packs[i] for i in order[start : start + batch_size]]
        width = len(batch[0].tokens)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        branch = torch.full((len(batch), width), -1, dtype=torch.long)
        for row, pack in enumerate(batch):
            n = len(pack.tokens)
            ids[row, :n] = torch.tensor(pack.tokens)
            positions[row, :n] = torch.tensor(pack.positions)
            branch[row, :n] = torch.tensor(pack.branch)
        needed = sorted({p for pack in batch for _, _, at in pack.requests for p in at})
        kwargs = {"logits_to_keep": torch.tensor(needed, device=device)} if keep_arg else {}
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=_attention_mask(branch, dtype).to(device),
                           position_ids=positions.to(device), use_cache=False, **kwargs).logits
        column = {p: (c if keep_arg else p) for c, p in enumerate(needed)}
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for row, pack in enumerate(batch):
            for index, continuation, at in pack.requests:
                rows = logprobs[row, [column[p] for p in at]]  # (T, V)
                target = torch.tensor(continuation)
                picked = rows[torch.arange(len(continuation)), target]
                results[index] = PackedScore(float(picked.sum()), bool((rows.argmax(dim=-1) == target).all()),
                                        picked.tolist(), rows.numpy() if keep_rows else None)
    return results


def _attention_mask(branch, dtype):
    """Additive (B, 1, L, L) mask: query i sees key j when j <= i and j is in the prompt or in
    i's own branch. Padding (branch -1) sees only itself, so no row is empty."""
    import torch

    length = branch.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    q, k = branch[:, :, None], branch[:, None, :]
    visible = causal & (((k == 0) & (q >= 0)) | (k == q))
    visible |= torch.eye(length, dtype=torch.bool)
    mask = torch.zeros(visible.shape, dtype=dtype)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[:, None]
