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

Short packs then share a row, laid end to end as in packed training, each seeing only itself:
rows padded out to the longest pack in their batch were a third padding on the shipped suites.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

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
    for prompt, members in by_context.items():
        context = list(prompt)
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


def _new_pack(context: Sequence[int]) -> Pack:
    return Pack(tokens=list(context), positions=list(range(len(context))), branch=[0] * len(context))


def _supports_logits_to_keep(model) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


@dataclass
class PackedLogprobs:
    logprob_sum: float
    greedy: bool  # every continuation token is the argmax
    token_logprobs: list[float]
    rows: "np.ndarray | None" = None  # (T, V) log-softmax at each continuation token, with keep_rows


# Rows are at least this many tokens wide, so that short packs share a row instead of each
# padding out to the longest: attention over 128 keys costs a few percent of a token's work.
MIN_ROW_TOKENS = 128


def fill_rows(packs: list[Pack], width: int) -> list[list[Pack]]:
    """First-fit decreasing: packs, longest first, each into the first row with room for it."""
    rows: list[list[Pack]] = []
    room: list[int] = []
    for pack in sorted(packs, key=lambda p: -len(p.tokens)):
        at = next((r for r, free in enumerate(room) if free >= len(pack.tokens)), None)
        if at is None:
            rows.append([])
            room.append(width)
            at = len(rows) - 1
        rows[at].append(pack)
        room[at] -= len(pack.tokens)
    return rows


def forward_packs(model, packs: list[Pack], batch_size: int, pad_id: int,
                keep_rows: bool = False) -> dict[int, PackedLogprobs]:
    """Request index -> its scores. Packs share rows of max(longest pack, MIN_ROW_TOKENS) tokens,
    and each forward pass takes as many tokens as `batch_size` rows of the longest pack would."""
    if not packs:
        return {}
    longest = max(len(p.tokens) for p in packs)
    width = max(longest, MIN_ROW_TOKENS)
    rows = fill_rows(packs, width)
    per_forward = max(1, batch_size * longest // width)
    results: dict[int, PackedLogprobs] = {}
    for start in range(0, len(rows), per_forward):
        results.update(forward_rows(model, rows[start : start + per_forward], pad_id, keep_rows))
    return results


def forward_rows(model, rows: list[list[Pack]], pad_id: int, keep_rows: bool = False) -> dict[int, PackedLogprobs]:
    """One forward pass over `rows`, each a list of packs laid end to end; a pack sees only itself."""
    import torch

    first = next(model.parameters())
    dtype, device = first.dtype, first.device
    width = max(sum(len(p.tokens) for p in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # which pack of the row; -1 padding
    branch = torch.zeros((len(rows), width), dtype=torch.long)
    placed = []  # (row, offset, pack)
    for r, row in enumerate(rows):
        offset = 0
        for s, pack in enumerate(row):
            end = offset + len(pack.tokens)
            ids[r, offset:end] = torch.tensor(pack.tokens)
            positions[r, offset:end] = torch.tensor(pack.positions)
            segment[r, offset:end] = s
            branch[r, offset:end] = torch.tensor(pack.branch)
            placed.append((r, offset, pack))
            offset = end
    needed = sorted({offset + p for _, offset, pack in placed for _, _, at in pack.requests for p in at})
    keep_arg = _supports_logits_to_keep(model)
    kwargs = {"logits_to_keep": torch.tensor(needed, device=device)} if keep_arg else {}
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=_attention_mask(segment, branch, dtype).to(device),
                       position_ids=positions.to(device), use_cache=False, **kwargs).logits
    column = {p: (c if keep_arg else p) for c, p in enumerate(needed)}
    logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
    results: dict[int, PackedLogprobs] = {}
    for r, offset, pack in placed:
        for index, continuation, at in pack.requests:
            picked_rows = logprobs[r, [column[offset + p] for p in at]]  # (T, V)
            target = torch.tensor(continuation)
            picked = picked_rows[torch.arange(len(continuation)), target]
            results[index] = PackedLogprobs(float(picked.sum()), bool((picked_rows.argmax(dim=-1) == target).all()),
                                         picked.tolist(), picked_rows.numpy() if keep_rows else None)
    return results


def _attention_mask(segment, branch, dtype):
    """Additive (B, 1, L, L) mask: query i sees key j when j <= i, both are in the same pack,
    and j is in that pack's prompt or in i's own branch. Padding (segment -1) sees only itself,
    so no row of the mask is empty."""
    import torch

    length = segment.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same_pack = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0)
    q, k = branch[:, :, None], branch[:, None, :]
    visible = causal & same_pack & ((k == 0) | (k == q))
    visible |= torch.eye(length, dtype=torch.bool)
    mask = torch.zeros(visible.shape, dtype=dtype)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[:, None]
