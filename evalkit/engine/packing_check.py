"""Whether shared-prefix packing scores this model right: checked once per kind of model, in float32.

Packing (`evalkit/engine/packing.py`) relies on the model honouring a 4-D attention mask and
explicit position ids. Models that do not - ALiBi biases taken from column indices (MPT), an
attention window the custom mask overrides (Mistral, Qwen2 and Gemma 2/3 with sliding windows,
GPT-Neo's local layers), state that ignores the mask (RWKV, RecurrentGemma) - score differently
packed. So a probe of the requests is scored packed in one pass, laid out as scoring lays them out, and
each as its own sequence, and every token's log-probability must agree.

The probe is the first requests (a few packs sharing a pass: a wrong mask or position shows) and
the longest one (a window shorter than it shows); a later call with a longer request than any
checked is checked again with it.

The check runs in float32 whatever the run's dtype. In bf16 the two layouts round differently by
as much as a broken layout errs (SmolLM2: median 0.009 nats per token, largest 0.12; a window of
16 ignored on a tiny Mistral: median 0.011, largest 0.087), so no bf16 tolerance tells them
apart; in float32 they differ by summation order alone (up to 1.5e-5 per token on SmolLM2,
2.9e-5 on Gemma 3's 262k vocabulary) and a token that sees the wrong tokens moves 1e-2 and more.
A lower-precision model is widened in place for the check and narrowed back exactly (every
bf16 or fp16 value is a float32 value); where that would not fit in free memory, the model is
scored unpacked.

Generation and prompt-end activations batch prompts left-padded, which a model must also
honour: `left_padding_respected` compares a padded prompt's next-token logits with the prompt's
alone (RWKV takes the padding into its state), and a model that fails is run one prompt at a time.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterator

from evalkit.engine.packing import (
    PACK_TOKENS,
    build_packs,
    forward_one_pass,
    forward_unpacked,
)
from evalkit.errors import first_line
from evalkit.files import stable_hash

log = logging.getLogger("evalkit")

# Largest per-token difference, packed against each request as its own sequence, in float32.
TOLERANCE = 1e-4


@dataclass
class Verdict:
    ok: bool
    longest: int
    """The longest request (context + continuation tokens) the check covered."""


Key = tuple[str, str, str, str, str]

# Per (model class, attention implementation, dtype, device type, config). A GPU's attention
# kernels are not a CPU's, so each device is checked; a checkpoint of the same class with another
# window is another config.
_VERDICTS: dict[Key, Verdict] = {}
_PADDING: dict[Key, bool] = {}  # does left padding leave the outputs as they are


def packing_key(model) -> Key:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = inner.config.to_json_string(use_diff=False) if hasattr(inner.config, "to_json_string") else ""
    return (type(inner).__name__, str(getattr(inner.config, "_attn_implementation", "")), str(inner.dtype),
            inner.device.type, stable_hash(config))


def verdicts() -> dict[Key, bool]:
    """What the checks of this process found, per kind of model."""
    return {key: v.ok for key, v in _VERDICTS.items()}


def layout(model) -> str:
    """How this process scored and generated for this kind of model, as far as it had to decide
    (a run whose scores all came from the cache decided nothing)."""
    key = packing_key(model)
    said = []
    if key in _VERDICTS:
        scoring = "shared-prefix packed" if _VERDICTS[key].ok else "unpacked, each request its own sequence"
        said.append(f"scoring {scoring}")
    if key in _PADDING:
        said.append(f"generation {'batched, left-padded' if _PADDING[key] else 'one prompt at a time'}")
    return ", ".join(said) or "not decided here (scores from the cache)"


def record_packing_failure(model, reason: str) -> None:
    key = packing_key(model)
    _VERDICTS[key] = Verdict(ok=False, longest=0)
    log.warning("shared-prefix scoring cannot run on %s (%s); scoring each request as its own sequence", key[0], reason)


def packing_verified(model, requests: list[tuple[list[int], list[int]]], pad_id: int, max_length: int) -> bool:
    """May these (context, continuation) requests be scored packed on `model`?"""
    key = packing_key(model)
    longest = max(requests, key=_length)
    known = _VERDICTS.get(key)
    if known is not None and (not known.ok or _length(longest) <= known.longest):
        return known.ok
    # Checked again for a longer request: that request alone (the layout passed already).
    probe = _probe(requests) if known is None else [longest]
    try:
        with _in_float32(model) as widened:
            if not widened:
                record_packing_failure(model, "no free memory to check it in float32")
                return False
            if key not in _PADDING:  # while the model is wide: generation will ask
                _PADDING[key] = _padding_respected(model, pad_id)
            packed = forward_one_pass(model, build_packs(probe, max_length), pad_id)
            plain = forward_unpacked(model, probe)
    except Exception as exc:  # Bloom, for one, builds its alibi from a 2-D mask and cannot take a 4-D one
        record_packing_failure(model, first_line(exc))
        return False
    differences = [abs(a - b) for i in range(len(probe))
                   for a, b in zip(packed[i].token_logprobs, plain[i].token_logprobs)]
    if not all(math.isfinite(d) for d in differences):  # not numbers: the run refuses the model (check_finite)
        return True
    worst = max(differences)
    ok = worst <= TOLERANCE
    if not ok:
        log.warning("shared-prefix scoring disagrees with one-sequence scoring on %s (up to %.2g nats per token "
                    "over %d requests, in float32); scoring each request as its own sequence",
                    key[0], worst, len(probe))
    _VERDICTS[key] = Verdict(ok=ok, longest=max(map(_length, probe)))
    return ok


def left_padding_respected(model, pad_id: int) -> bool:
    """Does generate() give a left-padded prompt the same next-token logits as the prompt alone?
    Once per kind of model, in float32 (with the packing check where that runs first). Where that
    cannot be checked (no memory to widen, a generate() that fails here), batches stay as they were."""
    key = packing_key(model)
    if key not in _PADDING:
        with _in_float32(model) as widened:
            _PADDING[key] = _padding_respected(model, pad_id) if widened else True
    return _PADDING[key]


def _padding_respected(model, pad_id: int) -> bool:
    import torch

    try:
        vocab = int(model.config.vocab_size)
        prompt = [(7 * k + 3) % vocab for k in range(1, 9)]
        device = next(model.parameters()).device
        alone = torch.tensor([prompt], device=device)
        padded = torch.tensor([[pad_id] * 4 + prompt], device=device)
        mask = torch.tensor([[0] * 4 + [1] * len(prompt)], device=device)
        with torch.no_grad():
            first = [model.generate(input_ids=ids, attention_mask=m, max_new_tokens=1, do_sample=False,
                                    output_scores=True, return_dict_in_generate=True, pad_token_id=pad_id).scores[0][0]
                     for ids, m in ((alone, torch.ones_like(alone)), (padded, mask))]
    except Exception as exc:  # the run's own generation says what is wrong with the model
        log.debug("left-padding check could not run: %s", first_line(exc))
        return True
    respected = float((first[0].float() - first[1].float()).abs().max()) <= 1e-3
    if not respected:
        log.warning("%s: left padding changes its outputs; it generates one prompt at a time", packing_key(model)[0])
    return respected


def _probe(requests: list[tuple[list[int], list[int]]]) -> list[tuple[list[int], list[int]]]:
    """The first requests, about two packs' worth of tokens, and the longest."""
    probe: list[tuple[list[int], list[int]]] = []
    tokens = 0
    for context, continuation in requests:
        tokens += len(context) + len(continuation)
        if probe and tokens > 2 * PACK_TOKENS:
            break
        probe.append((context, continuation))
    longest = max(requests, key=_length)
    return probe if longest in probe else [*probe, longest]


def _length(request: tuple[list[int], list[int]]) -> int:
    context, continuation = request
    return len(context) + len(continuation)


@contextmanager
def _in_float32(model) -> Iterator[bool]:
    """Within: every floating parameter and buffer of `model` in float32, narrowed back exactly
    on exit (each one converted as it goes: the widening takes 2 more bytes a bf16 value, where
    keeping the originals aside would take 4). Yields False (and changes nothing) where that would
    take more than half the free memory of the model's device."""
    import torch

    low = [(t, t.dtype) for t in {id(t): t for t in chain(model.parameters(), model.buffers())}.values()
           if t.is_floating_point() and t.dtype != torch.float32]
    device = next(model.parameters()).device
    if sum(t.numel() * (4 - t.element_size()) for t, _ in low) > _free_bytes(device) / 2:
        yield False
        return
    widened = []
    try:
        for t, dtype in low:  # each narrowed back below, even if a later one fails to widen
            t.data = t.data.float()
            widened.append((t, dtype))
        yield True
    finally:
        for t, dtype in widened:
            t.data = t.data.to(dtype)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the float32 copies' blocks, else counted as used by the next check


def _free_bytes(device) -> int:
    """Memory the device has free: on a GPU, what CUDA reports; on a CPU, Linux's MemAvailable,
    within the container's (cgroup v2) limit."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        free = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (OSError, ValueError):
            return 0
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        return min(free, int(limit) - used) if limit != "max" else free
    except (OSError, ValueError):
        return free
