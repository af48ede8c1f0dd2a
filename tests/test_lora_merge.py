"""Scoring with the active adapter folded into the weights: the same scores as peft's LoRA path,
the base's weights untouched afterwards, and in bf16 the adapter added inside the product instead."""

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


def test_nothing_is_folded_when_disabled(model_and_adapter):
    path, adapter = model_and_adapter
    adapters = AttachedAdapters(load_base(path), {"a": adapter})
    adapters.activate("a")
    with adapters.model.disable_adapter():
        assert _foldable(adapters.model) == []


def test_in_bfloat16_the_adapter_is_added_inside_the_product_not_folded(model_and_adapter, monkeypatch):
    """W + delta would round the update away in bf16: the weights stay as they are and the rank-r
    product adds into the layer's output, rounded once; the scores are as close to float32's as
    peft's path (whose A, B, scaling and sum each round to bf16) brings them."""
    path, adapter = model_and_adapter
    pairs = None
    scores = {}
    for dtype, fold in (("float32", False), ("bfloat16", True), ("bfloat16", False)):
        monkeypatch.setattr(packing, "FOLD_MIN_TOKENS", 0 if fold else 10**9)
        adapters = AttachedAdapters(load_base(path, dtype=dtype), {"a": adapter})
        adapters.activate("a")
        model = adapters.model
        lm = EvalkitLM(pretrained=model, tokenizer=load_base(path).tokenizer, batch_size=8)
        pairs = pairs or [(ctx, cont) for _, ctx, cont in suite_requests(lm)]
        before = {n: p for n, p in model.named_parameters()}
        values = {n: p.detach().clone() for n, p in model.named_parameters()}
        layers = _foldable(model)
        assert len(layers) == 14
        added: list[bool] = []
        hook = layers[0].register_forward_hook(lambda m, args, out: added.append("forward" in m.__dict__))
        scored = packing.forward_packs(model, packing.build_packs(pairs, 10_000), 8, 0)
        hook.remove()
        assert added and all(added) == (dtype == "bfloat16" and fold) and any(added) == all(added)
        assert dict(model.named_parameters()) == before  # the same Parameter objects, values unchanged
        assert all(torch.equal(values[n], p) for n, p in model.named_parameters())
        assert not any("forward" in m.__dict__ or m.merged for m in layers)
        scores[(dtype, fold)] = torch.tensor([scored[i].logprob_sum for i in range(len(pairs))])
    exact = scores[("float32", False)]
    inside, peft_path = (scores[("bfloat16", f)] - exact for f in (True, False))
    assert 0 < inside.abs().mean() <= 1.25 * peft_path.abs().mean()
    assert inside.abs().max() < 0.05


def test_in_bfloat16_disabling_or_switching_adapters_inside_leaves_the_base_as_it_was(model_and_adapter):
    """peft unmerges a merged adapter from the base's own weights when adapters are disabled or
    switched; the bf16 path never says merged, so that cannot happen, and a disabled adapter
    gives the base's own outputs inside as outside."""
    path, adapter = model_and_adapter
    adapters = AttachedAdapters(load_base(path, dtype="bfloat16"), {"a": adapter})
    adapters.activate("a")
    model = adapters.model
    ids = torch.tensor([[5, 9, 14, 3, 7, 21]])
    values = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits
        with folded_lora(model):
            with model.disable_adapter():
                assert torch.equal(model(input_ids=ids).logits, base_logits)
            model.set_adapter("a")
            model(input_ids=ids)
    assert all(torch.equal(values[n], p) for n, p in model.named_parameters())
    assert not any("forward" in m.__dict__ for m in _foldable_layers(model))


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
