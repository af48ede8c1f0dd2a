"""What a model holds at the end of each prompt: next-token log-probabilities over the vocabulary
and the residual stream (the final layer's normalised hidden state), for discovering what a
scene changed that no probe asked about. Cached per model fingerprint and prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from evalkit.engine.cache import ScoreCache
from evalkit.engine.packing_check import left_padding_respected
from evalkit.engine.tokens import encode, padded
from evalkit.files import stable_hash


@dataclass
class Activations:
    logprobs: np.ndarray
    """(P, V) log-softmax of the next token after each prompt, float32."""
    hidden: np.ndarray
    """(P, d) the last layer's hidden state at each prompt's last token (after the final norm, so
    the output head maps it to the logits exactly: the logit lens is exact there)."""


def _key(prompt: str) -> str:
    return stable_hash({"shape": "prompt-end", "prompt": prompt})


def prompt_ends(model: Any, tokenizer: Any, prompts: list[str], batch_size: int,
                cache: Optional[ScoreCache] = None) -> Activations:
    """One forward pass per batch of prompts (left-padded), the cache in front."""
    import torch

    rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    todo = []
    for k, prompt in enumerate(prompts):
        logprobs = cache.get_array(_key(prompt) + "-logprobs") if cache else None
        hidden = cache.get_array(_key(prompt) + "-hidden") if cache else None
        if logprobs is not None and hidden is not None:
            rows[k] = (logprobs, hidden)
        else:
            todo.append(k)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    if todo and not left_padding_respected(model, pad):  # RWKV takes the padding into its state
        batch_size = 1
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        encoded = [encode(tokenizer, prompts[k]) for k in batch]
        ids, mask = (t.to(device) for t in padded(encoded, pad))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu().numpy()  # (B, V)
        hidden = out.hidden_states[-1][:, -1].float().cpu().numpy()  # (B, d)
        for row, k in enumerate(batch):
            rows[k] = (logprobs[row], hidden[row])
            if cache:
                cache.put_array(_key(prompts[k]) + "-logprobs", logprobs[row])
                cache.put_array(_key(prompts[k]) + "-hidden", hidden[row])
    if cache and todo:
        cache.save()
    return Activations(logprobs=np.stack([rows[k][0] for k in range(len(prompts))]),
                       hidden=np.stack([rows[k][1] for k in range(len(prompts))]))


def unembedding(model: Any) -> np.ndarray:
    """(V, d) the output head's weights: a hidden-space direction's effect on every token's logit."""
    return model.get_output_embeddings().weight.detach().float().cpu().numpy()


def greedy(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
    """Greedy continuations, one line each, for a reader to see a direction at work."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = []
    device = next(model.parameters()).device
    for prompt in prompts:
        ids = torch.tensor([encode(tokenizer, prompt)], device=device)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        texts.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0])
    return texts


def axis_directions(model: Any, tokenizer: Any, pairs: list[tuple[str, str, str, str]]) -> dict[str, np.ndarray]:
    """Each declared two-way choice (a novel axis, a dilemma) as a direction of the same residual
    stream: the hidden-state direction that raises option a's first token over option b's,
    W_U[a] - W_U[b] (exact at the last layer, after the final norm), averaged over its pairs.
    pairs: (name, prompt, a, b) with the suite's delimiter already in front of each option."""
    head = unembedding(model)
    by_axis: dict[str, list[np.ndarray]] = {}
    for axis, prompt, pole_a, pole_b in pairs:
        whole = [encode(tokenizer, prompt + pole) for pole in (pole_a, pole_b)]
        start = len(encode(tokenizer, prompt))
        first_a, first_b = (ids[start] if len(ids) > start else ids[-1] for ids in whole)
        if first_a != first_b:
            by_axis.setdefault(axis, []).append(head[first_a] - head[first_b])
    return {axis: np.mean(diffs, axis=0) for axis, diffs in by_axis.items()}
