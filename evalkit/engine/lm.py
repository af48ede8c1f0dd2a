"""evalkit's lm-eval model class: lm-eval's own HFLM around an already-loaded model, with
log-likelihood requests scored by shared-prefix packing (`evalkit/engine/packing.py`).

Everything else - request building, tokenisation (`_encode_pair`), generation, filters,
metrics - is HFLM's code. Progress bars are silenced; evalkit prints its own request counts.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from evalkit.offline import go_offline

go_offline()  # before lm-eval (and through it the hub client and datasets) is imported

from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from evalkit.engine.multi_lora import can_group, grouped  # noqa: E402
from evalkit.engine.packing import PACK_TOKENS, build_packs, forward_packs, forward_rows  # noqa: E402
from evalkit.errors import first_line  # noqa: E402

log = logging.getLogger("evalkit")


class _AccountedFor(logging.Filter):
    """lm-eval warns when it is handed a loaded model instead of a name. evalkit does that on
    purpose: it attaches adapters itself and records which one is active in every run record."""

    WARNINGS = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.WARNINGS)


logging.getLogger("lm_eval.models.huggingface").addFilter(_AccountedFor())

# Per (model class, attention implementation, dtype, device type): did packed scoring match
# unpacked scoring? A GPU's attention kernels are not a CPU's, so each device is checked.
_PACKING_VERIFIED: dict[tuple[str, str, str, str], bool] = {}


def packing_key(model) -> tuple[str, str, str, str]:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return (type(inner).__name__, str(getattr(inner.config, "_attn_implementation", "")), str(inner.dtype),
            inner.device.type)


def packing_failed(model) -> bool:
    """The packing check found packed scoring wrong, or unable to run, on this kind of model."""
    return _PACKING_VERIFIED.get(packing_key(model)) is False


def record_packing_failure(model, reason: str) -> None:
    _PACKING_VERIFIED[packing_key(model)] = False
    log.warning("shared-prefix scoring cannot run on %s (%s); scoring one sequence at a time",
                packing_key(model)[0], reason)


# KV cache one grouped generation call may hold: a group's size is what fits (at least one
# model). A decode step reads every weight once whatever the rows, so a call's cost is mostly
# fixed: SmolLM2 fp32 generated 12 rows in 2.0 s and 72 rows (six models) in 5.0 s. The budget
# is a quarter of the weights' bytes, at least 96 MiB: on the 26M benchmark model, eleven
# models at once cost 290 MiB more peak memory than one at a time and four kept most of the gain.
GROUP_KV_BYTES = 96 * 2**20
GROUP_KV_WEIGHT_SHARE = 0.25


def group_kv_budget(model) -> int:
    return max(GROUP_KV_BYTES, int(GROUP_KV_WEIGHT_SHARE * sum(p.nbytes for p in model.parameters())))


@register_model("evalkit-hf")
class EvalkitLM(HFLM):
    """With `schedule` set (the adapter names, None for the base, in the order they will be
    evaluated) and `current` naming the model being evaluated, each generation batch is
    computed for `current` and the next models of the schedule together (`multi_lora`); their
    outputs wait here until their own evaluation asks for the same batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        tokenizer = kwargs.get("tokenizer")
        if tokenizer is not None and tokenizer.bos_token_id is None and tokenizer.eos_token_id is None:
            # lm-eval decodes its prefix token (BOS, else end-of-text) to look for it at a prompt's
            # start; a tokenizer with neither gets its padding token (evalkit's prompts are never empty).
            kwargs.setdefault("prefix_token_id", tokenizer.pad_token_id or 0)
        super().__init__(*args, **kwargs)
        self.schedule: list[str | None] = []
        self.current: str | None = None
        self._ready: dict[tuple, object] = {}
        self.attach = lambda names: None  # puts a group's adapters on the model (the run's AttachedAdapters)
        self.generated_ids: dict[tuple[tuple[int, ...], int], list[int]] = {}
        """(prompt ids, new tokens allowed) -> the ids generate() produced after them, for the model
        being evaluated (two suites may share a prompt and differ in length)."""

    @property
    def eot_token_id(self) -> int:
        """lm-eval stops generations at the end-of-text token and decodes it up front; a tokenizer
        without one stops at its padding token (set by load_base), which a model never emits."""
        eos = self.tokenizer.eos_token_id
        return eos if eos is not None else (self.tokenizer.pad_token_id or 0)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood(requests, disable_tqdm=True)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return super().generate_until(requests, disable_tqdm=True)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if not (self.backend == "causal" and requests):
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)
        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        if not self._packing_matches(requests):
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)
        scored = forward_packs(self.model, build_packs(pairs, self.max_length), self._batch(), self._pad_id())
        results = [(scored[i].logprob_sum, scored[i].greedy) for i in range(len(requests))]
        for (request_str, _, _), answer in zip(requests, results):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return results

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        mask = generation_kwargs.get("attention_mask")
        out = self._generate(context, max_length, stop, **generation_kwargs)
        self._remember(context, mask, out, max_length - context.shape[1])
        return out

    def _remember(self, context, mask, out, new_tokens: int) -> None:
        """Keep each row's prompt ids and generated ids: KL and NLL are scored on these, not on
        the decoded text lm-eval returns."""
        width = context.shape[1]
        for r in range(context.shape[0]):
            prompt = context[r] if mask is None else context[r][mask[r].bool()]
            self.generated_ids[(tuple(prompt.tolist()), new_tokens)] = out[r, width:].tolist()

    def _generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        key = _batch_key(context, generation_kwargs.get("attention_mask"), max_length, stop, generation_kwargs)
        if (self.current, key) in self._ready:
            return self._ready.pop((self.current, key))
        group = self._group(context.shape[0], max_length)
        if len(group) == 1:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        rows = context.shape[0]
        generation_kwargs["attention_mask"] = generation_kwargs["attention_mask"].repeat(len(group), 1)
        self.attach(group)
        with grouped(self.model, group):
            out = super()._model_generate(context.repeat(len(group), 1), max_length, stop, **generation_kwargs)
        for k, name in enumerate(group[1:], start=1):
            self._ready[(name, key)] = out[k * rows : (k + 1) * rows]
        return out[:rows]

    def _group(self, rows: int, max_length: int) -> list[str | None]:
        """The current model and the ones after it in the schedule, as many as fit group_kv_budget."""
        if self.current not in self.schedule or not can_group(self.model):
            return [self.current]
        start = self.schedule.index(self.current)
        fits = group_kv_budget(self.model) // max(1, rows * _kv_bytes_per_token(self.model) * max_length)
        return self.schedule[start : start + max(1, fits)]

    def _batch(self) -> int:
        return self.batch_size if isinstance(self.batch_size, int) else 16

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.eot_token_id

    def _packing_matches(self, requests) -> bool:
        """Once per architecture and dtype: the first requests, packed into one row as scoring
        packs them, against lm-eval's unpacked scores, compared on every request that sees some
        other request's tokens in that row (the ones a model that ignored the custom mask or
        position ids would get wrong). fp32 must agree on each; bf16 rounds differently in a
        different layout (per token: median 0.007 nats, 1 in 100 over 0.1 on SmolLM2), so there
        the median is held to the tolerance."""
        key = packing_key(self.model)
        if key in _PACKING_VERIFIED:
            return _PACKING_VERIFIED[key]
        probe: list[tuple[list[int], list[int]]] = []
        tokens = 0
        for _, context, continuation in requests:  # about two packs' worth of tokens
            tokens += len(context) + len(continuation)
            if probe and tokens > 2 * PACK_TOKENS:
                break
            probe.append((list(context), list(continuation)))
        packs = build_packs(probe, self.max_length)
        exposed = [index for k, pack in enumerate(packs) for index, _, at in pack.requests
                   if k > 0 or any(pack.parent[j] != j - 1 for j in range(at[-1] + 1))]
        if not exposed:
            return True  # every request is a straight run from its row's start: nothing to get wrong
        try:
            scored = forward_rows(self.model, [packs], self._pad_id())
        except Exception as exc:  # Bloom, for one, builds its alibi from a 2-D mask and cannot take a 4-D one
            record_packing_failure(self.model, first_line(exc))
            return False
        plain = super()._loglikelihood_tokens([requests[i] for i in exposed], disable_tqdm=True)
        per_token = sorted(abs(scored[i].logprob_sum - unpacked) / len(requests[i][2])
                           for i, (unpacked, _) in zip(exposed, plain))
        fp32 = str(self.model.dtype) == "torch.float32"
        worst = per_token[-1] if fp32 else per_token[len(per_token) // 2]
        # fp32 differs by summation order alone: up to 1.5e-5 per token on SmolLM2, 2.9e-5 on Gemma 3
        # (a 262k vocabulary); a token that sees another request's, or the wrong position, moves 1e-2 and more
        ok = worst <= (1e-4 if fp32 else 5e-2)
        if not math.isfinite(worst):  # the model's outputs are not numbers: the run refuses it (check_finite)
            return True
        if not ok:
            log.warning("shared-prefix scoring disagrees with lm-eval's for %s (%s %.2g nats per token over %d "
                        "requests); using lm-eval's unpacked path", key[0], "largest" if fp32 else "median",
                        worst, len(per_token))
        _PACKING_VERIFIED[key] = ok
        return ok


def _kv_bytes_per_token(model) -> int:
    """Key and value cache bytes one token of one row takes, over all layers. A model without
    attention heads in its config (Mamba, RWKV: a fixed state, no cache per token) is counted as
    if it kept one hidden-size key and value per layer, which overstates it: groups stay small."""
    config = model.config
    hidden: int = getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or 1024
    layers: int = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 1
    heads = getattr(config, "num_attention_heads", None)
    if not heads:
        return 2 * layers * hidden * next(model.parameters()).element_size()
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return 2 * layers * kv_heads * head_dim * next(model.parameters()).element_size()


def _batch_key(context, attention_mask, max_length: int, stop: list[str], kwargs: dict) -> tuple:
    """What a generation batch's output depends on, besides the model."""
    rest = sorted((k, repr(v)) for k, v in kwargs.items() if k != "attention_mask")
    mask = attention_mask.cpu().numpy().tobytes() if attention_mask is not None else b""
    return context.cpu().numpy().tobytes(), mask, max_length, tuple(stop), tuple(rest)
