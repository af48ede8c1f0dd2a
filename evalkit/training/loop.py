"""The one training loop: seeded random windows of a token stream, AdamW, a loss per step.
LoRA adapters and models trained from scratch both run through it."""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Optional

from evalkit.errors import EvalkitError

# Early stopping looks at the mean loss of this many last steps (one step's loss is noisy).
STOP_WINDOW = 5


def leading_token(tokenizer: Any) -> Optional[int]:
    """The BOS id when the tokenizer puts one before every text it encodes (Gemma, Llama's
    SentencePiece tokenizers), as lm-eval's contexts then begin; None where it does not (SmolLM2)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return bos if bos is not None and len(ids) > 0 and ids[0] == bos else None


def _prepends(data: Any, start: int, lead: Optional[int]) -> bool:
    """Whether the window from `start` gets `lead` (the BOS a tokenizer puts before every text it
    encodes) put first, as every evaluated context begins: Gemma reads text without it 2
    nats/token worse, and an adapter would spend itself learning to do without."""
    return lead is not None and int(data[start]) != lead


def _take(seq: Any, start: int, block: int, first: Optional[int]) -> Any:
    """block + 1 entries of `seq` from `start`, or `first` and then block of them."""
    import torch

    if first is None:
        return seq[start : start + block + 1]
    return torch.cat([torch.tensor([first], dtype=seq.dtype), seq[start : start + block]])


def window_batch(data: Any, block: int, batch_size: int, rng: random.Random, lead: Optional[int] = None) -> Any:
    """A seeded batch of random windows of the token stream: (batch_size, block + 1) token ids."""
    import torch

    starts = [rng.randrange(0, len(data) - block) for _ in range(batch_size)]
    return torch.stack([_take(data, i, block, lead if _prepends(data, i, lead) else None) for i in starts])


def masked_batch(data: Any, mask: Any, block: int, batch_size: int, rng: random.Random,
                 lead: Optional[int] = None) -> tuple[Any, Any]:
    """Windows that each hold some loss-carrying tokens, and their labels (-100 where no loss)."""
    import torch

    def targets(s: int) -> Any:  # the tokens a window from s predicts: data[s:] when led, else data[s + 1:]
        first = s if _prepends(data, s, lead) else s + 1
        return mask[first : first + block]

    starts = [s for s in range(len(data) - block) if bool(targets(s).any())]
    picked = [rng.choice(starts) for _ in range(batch_size)]
    led = [_prepends(data, i, lead) for i in picked]
    batch = torch.stack([_take(data, i, block, lead if p else None) for i, p in zip(picked, led)])
    marks = torch.stack([_take(mask, i, block, 0 if p else None) for i, p in zip(picked, led)])
    return batch, batch.masked_fill(marks == 0, -100)


def train_loop(model: Any, params: list, data: Any, *, block: int, batch_size: int, steps: int,
               learning_rate: float, rng: random.Random, weight_decay: float = 0.0,
               schedule: Optional[Callable[[int], float]] = None, clip: Optional[float] = None,
               on_step: Optional[Callable[[int, float], None]] = None, stop_loss: Optional[float] = None,
               autocast: Optional[Any] = None, mask: Optional[Any] = None, lead: Optional[int] = None,
               keep_going: Optional[Callable[[list[float]], bool]] = None) -> list[float]:
    """Train `params` of `model` on windows of `data` (a 1-D tensor of token ids); the loss of
    every step, rounded to 5 decimals. `schedule(step)` sets the learning rate of each step
    (constant without it); `clip` caps the gradient norm; `stop_loss` ends training once the mean
    loss of the last 5 steps is below it; `autocast` (a torch dtype) runs forward and backward
    under CPU autocast; `mask` (0/1 per token of `data`) keeps the loss to the tokens marked 1;
    `lead` begins every window (see `_prepends`); `keep_going(losses)`, asked after every step,
    ends training when it answers False.
    Seed torch and `rng` before calling: the model's initialisation draws
    from torch's generator too."""
    import torch

    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        if schedule is not None:
            for group in opt.param_groups:
                group["lr"] = schedule(step)
        if mask is None:
            batch = labels = window_batch(data, block, batch_size, rng, lead)  # (B, block + 1)
        else:
            batch, labels = masked_batch(data, mask, block, batch_size, rng, lead)
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            loss = model(input_ids=batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if not math.isfinite(loss.item()):  # diverged: every later step, and the adapter, would be NaN
            raise EvalkitError(f"training diverged: the loss is {loss.item()} at step {step + 1}",
                               hint="lower the learning rate or LoRA alpha")
        losses.append(round(loss.item(), 5))
        if on_step is not None:
            on_step(step, losses[-1])
        if keep_going is not None and not keep_going(losses):
            break
        recent = losses[-STOP_WINDOW:]
        if stop_loss is not None and len(recent) == STOP_WINDOW and sum(recent) / STOP_WINDOW < stop_loss:
            break
    model.eval()
    return losses
