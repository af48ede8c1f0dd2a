"""evalkit's lm-eval model class: lm-eval's own HFLM around an already-loaded model, with
log-likelihood requests scored by shared-prefix packing (`evalkit/engine/packing.py`) where
the packing check (`evalkit/engine/packing_check.py`) found it right for the model.

Everything else - request building, tokenisation (`_encode_pair`), generation, filters,
metrics - is HFLM's code. Progress bars are silenced; evalkit prints its own request counts.
"""

from __future__ import annotations

import logging
from typing import Any

from evalkit.offline import go_offline

go_offline()  # before lm-eval (and through it the hub client and datasets) is imported

from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from evalkit.engine.multi_lora import can_group, grouped  # noqa: E402
from evalkit.engine.packing import build_packs, forward_packs  # noqa: E402
from evalkit.engine.packing_check import left_padding_respected, packing_verified  # noqa: E402
from evalkit.engine.tokens import appended_ids, padded, strip_appended  # noqa: E402


class _AccountedFor(logging.Filter):
    """lm-eval warns when it is handed a loaded model instead of a name. evalkit does that on
    purpose: it attaches adapters itself and records which one is active in every run record."""

    WARNINGS = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.WARNINGS)


logging.getLogger("lm_eval.models.huggingface").addFilter(_AccountedFor())

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

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        """lm-eval's encoding without what the tokenizer appends to every text (`tokens`): an
        appended EOS would end every prompt and be scored in place of each option's first token."""
        ids = strip_appended(self.tokenizer, string, super().tok_encode(string, add_special_tokens, **kwargs))
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_batch_encode(self, strings: list[str], padding_side: str = "left", left_truncate_len: int | None = None,
                         truncation: bool = False):
        """lm-eval's batch encoding (generation prompts), without what the tokenizer appends."""
        ids, mask = super().tok_batch_encode(strings, padding_side=padding_side, truncation=truncation)
        if appended_ids(self.tokenizer):
            rows = [strip_appended(self.tokenizer, text, row[keep.bool()].tolist())
                    for text, row, keep in zip(strings, ids, mask)]
            ids, mask = padded(rows, self.tokenizer.pad_token_id or 0, left=padding_side == "left")
        if left_truncate_len:
            ids, mask = ids[:, -left_truncate_len:], mask[:, -left_truncate_len:]
        return ids, mask

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood(requests, disable_tqdm=True)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return super().generate_until(requests, disable_tqdm=True)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if not (self.backend == "causal" and requests):
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)
        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        if not packing_verified(self.model, pairs, self._pad_id(), self.max_length):
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
        if not left_padding_respected(self.model, self._pad_id()):
            return self._generate_one_by_one(context, max_length, stop, **generation_kwargs)
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

    def _generate_one_by_one(self, context, max_length: int, stop: list[str], **generation_kwargs):
        """Each row without its left padding, laid out as the batch would have been: the padded
        prompt, then the new tokens, padded after as generate() pads a row that stopped early."""
        import torch

        mask = generation_kwargs.pop("attention_mask", None)
        width, new_tokens = context.shape[1], max_length - context.shape[1]
        out = torch.full((context.shape[0], max_length), self._pad_id(), dtype=context.dtype, device=context.device)
        out[:, :width] = context
        for r in range(context.shape[0]):
            prompt = context[r][mask[r].bool()][None] if mask is not None else context[r][None]
            row = super()._model_generate(prompt, prompt.shape[1] + new_tokens, stop,
                                          attention_mask=torch.ones_like(prompt), **generation_kwargs)
            produced = row[0, prompt.shape[1]:]
            out[r, width : width + len(produced)] = produced
        return out

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
