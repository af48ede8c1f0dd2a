"""Scoring with the active adapter folded into the weights: the same scores as peft's LoRA path,
the base's weights untouched afterwards, and nothing folded where it would lose precision."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny
from lm_eval.models.huggingface import HFLM
from peft import get_peft_model
from test_packing import suite_requests

from evalkit.engine import packing
from evalkit.engine.adapters import AttachedAdapters, lora_config
from evalkit.engine.base import load_base
from evalkit.engine.lm import EvalkitLM
from evalkit.engine.lora_merge import _foldable, folded_lora
from evalkit.settings import TrainSettings


@pytest.fixture(scope="module")
def model_and_adapter(tmp_path_factory, world_tokenizer):
    root = tmp_path_factory.mktemp("fold")
    path = build_tiny("llama", world_tokenizer, root / "base", seed=11)
    base = load_base(path)
    peft_model = get_peft_model(base.model, lora_config(base, TrainSettings()))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would not change the model
            param.data = torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.5
    peft_model.save_pretrained(str(root / "adapter"))
    return path, root / "adapter"


def test_folded_scores_equal_peft_and_leave_the_base_as_it_was(model_and_adapter, monkeypatch):
    monkeypatch.setattr(packing, "FOLD_MIN_TOKENS", 0)
    path, adapter = model_and_adapter
    adapters = AttachedAdapters(load_base(path), {"a": adapter})
    adapters.activate("a")
    model = adapters.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lm = EvalkitLM(pretrained=model, tokenizer=load_base(path).tokenizer, batch_size=8)
    requests = suite_requests(lm)
    folded = lm._loglikelihood_tokens(requests)  # after the one-time packing check, forward_packs folds
    seen: list[bool] = []
    hook = _foldable(model)[0].register_forward_pre_hook(lambda module, args: seen.append(module.merged))
    assert lm._loglikelihood_tokens(requests) == folded
    hook.remove()
    assert seen and all(seen)
    monkeypatch.setattr(packing, "FOLD_MIN_TOKENS", 10**9)  # a pass too short to be worth folding
    seen.clear()
    hook = _foldable(model)[0].register_forward_pre_hook(lambda module, args: seen.append(module.merged))
    short = lm._loglikelihood_tokens(requests[:4])
    assert [s for s, _ in short] == pytest.approx([s for s, _ in folded[:4]], abs=1e-5)
    hook.remove()
    assert seen and not any(seen)
    plain = HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)  # peft's own LoRA path
    assert len(_foldable(model)) == 14  # 7 projections x 2 layers
    for (f_sum, f_greedy), (p_sum, p_greedy) in zip(folded, plain):
        assert f_sum == pytest.approx(p_sum, abs=1e-5)
        assert f_greedy == p_greedy
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not any(m.merged for m in _foldable(model))


def test_nothing_is_folded_when_disabled_or_in_bfloat16(model_and_adapter):
    path, adapter = model_and_adapter
    adapters = AttachedAdapters(load_base(path), {"a": adapter})
    adapters.activate("a")
    with adapters.model.disable_adapter():
        assert _foldable(adapters.model) == []
    low = AttachedAdapters(load_base(path, dtype="bfloat16"), {"a": adapter})
    low.activate("a")
    assert _foldable(low.model) == []
    with folded_lora(low.model):
        assert not any(getattr(m, "merged", False) for m in low.model.modules())


def test_an_error_inside_leaves_the_model_as_it_was(model_and_adapter):
    path, adapter = model_and_adapter
    adapters = AttachedAdapters(load_base(path), {"a": adapter})
    adapters.activate("a")
    before = {n: p for n, p in adapters.model.named_parameters()}
    with pytest.raises(RuntimeError, match="inside"):
        with folded_lora(adapters.model):
            assert all(m.merged for m in _foldable_layers(adapters.model))
            raise RuntimeError("inside")
    assert dict(adapters.model.named_parameters()) == before  # the same Parameter objects
    assert not any(m.merged for m in _foldable_layers(adapters.model))


def _foldable_layers(model) -> list:
    from peft.tuners.lora import Linear

    return [m for m in model.modules() if isinstance(m, Linear)]
