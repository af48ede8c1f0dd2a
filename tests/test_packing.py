"""Shared-prefix scoring against lm-eval's own unpacked HF path, request by request."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny
from lm_eval.models.huggingface import HFLM

from evalkit.engine import packing_check, row_attention
from evalkit.engine.base import load_base
from evalkit.engine.lm import EvalkitLM
from evalkit.engine.packing import build_packs, forward_packs
from evalkit.inputs.suites import load_suites

ROOT = Path(__file__).resolve().parent.parent
SUITES = load_suites([ROOT / "probes"])


@pytest.fixture(scope="module")
def arch_models(tmp_path_factory, world_tokenizer):
    root = tmp_path_factory.mktemp("packing")
    return {arch: build_tiny(arch, world_tokenizer, root / arch, seed=3)
            for arch in ("llama", "gpt2", "gpt_neox", "gpt_neo")}


def suite_requests(lm: HFLM) -> list:
    """Every (prompt, option) of the shipped suites as lm-eval encodes it."""
    requests = []
    for s in SUITES:
        for c in s.spec.choices():
            for option in c.options:
                context, continuation = c.prompt, s.spec.delimiter + option
                requests.append(((context, continuation), *lm._encode_pair(context, continuation)))
    return requests


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gpt_neo"])
def test_packed_scores_equal_lm_eval_unpacked(arch, arch_models, monkeypatch):
    monkeypatch.setattr(packing_check, "_VERDICTS", {})  # this architecture's check runs here
    base = load_base(arch_models[arch])
    # Packs' tokens alone with attention in rows where the model's attention allows; else padded rows.
    assert row_attention.supported(base.model) == (arch != "gpt_neo")
    lm = EvalkitLM(pretrained=base.model, tokenizer=base.tokenizer, batch_size=8)
    requests = suite_requests(lm)
    packed = lm._loglikelihood_tokens(requests)
    plain = HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)
    assert len(packed) == len(plain) == len(requests) > 150
    for (p_sum, p_greedy), (u_sum, u_greedy) in zip(packed, plain):
        assert p_sum == pytest.approx(u_sum, abs=1e-5, rel=1e-6)  # summation order, over up to ~50 tokens
        assert p_greedy == u_greedy
    # The packed path was used, not the fallback: the one-time check passed for this model.
    assert list(packing_check.verdicts().values()) == [True]
    # Packing did share: fewer tokens went through the model than lm-eval feeds it.
    pairs = [(ctx, cont) for _, ctx, cont in requests]
    assert sum(len(p.tokens) for p in build_packs(pairs, 10_000)) < 0.7 * sum(len(c) + len(t) - 1 for c, t in pairs)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_unpacked_scores_equal_lm_eval_unpacked(arch, arch_models, monkeypatch):
    """The fallback and the packing check's reference: requests of similar length share a pass,
    right-padded with no mask, and score as lm-eval scores each."""
    from evalkit.engine import packing
    from evalkit.engine.packing import forward_unpacked

    base = load_base(arch_models[arch])
    lm = EvalkitLM(pretrained=base.model, tokenizer=base.tokenizer, batch_size=8)
    requests = suite_requests(lm)[:60]
    plain = HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)
    passes = []
    score = packing._score
    monkeypatch.setattr(packing, "_score", lambda model, inputs, spans, keep: passes.append(spans) or score(
        model, inputs, spans, keep))
    ours = forward_unpacked(base.model, [(list(c), list(t)) for _, c, t in requests], batch_size=4)
    lengths = {k: len(c) + len(t) for k, (_, c, t) in enumerate(requests)}
    assert any(len({lengths[k] for k, _, _ in spans}) > 1 for spans in passes)  # a pass with padded rows
    for k, (u_sum, u_greedy) in enumerate(plain):
        assert ours[k].logprob_sum == pytest.approx(u_sum, abs=1e-5)
        assert ours[k].greedy == u_greedy


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packs_alone_score_as_padded_rows_do(arch_models, dtype):
    """The packs' tokens as one sequence, attending in rows of several widths, against the same
    packs in padded rows: the same numbers (float32: up to summation order), and the model's
    attention implementation is its own again afterwards."""
    import random

    from evalkit.engine import packing

    rng = random.Random(0)
    base = load_base(arch_models["llama"], dtype=dtype)
    vocab = base.model.config.vocab_size
    requests = [([rng.randrange(1, vocab) for _ in range(rng.randint(1, 90))],
                 [rng.randrange(1, vocab) for _ in range(rng.randint(1, 4))]) for _ in range(40)]
    packs = build_packs(requests, 128)
    assert len({-(-len(p.tokens) // packing.ROW_STEP) for p in packs}) > 2  # rows of several widths
    alone = packing.forward_unpadded(base.model, packs)
    padded = packing.forward_rows(base.model, packing.fill_rows(packs, packing.row_width(packs)), pad_id=0)
    assert base.model.config._attn_implementation == "sdpa"
    tolerance = 1e-5 if dtype == "float32" else 0.25  # bf16: the widths round attention differently
    for k in range(len(requests)):
        assert alone[k].token_logprobs == pytest.approx(padded[k].token_logprobs, abs=tolerance)
        if dtype == "float32":
            assert alone[k].greedy == padded[k].greedy


def test_a_model_whose_attention_bypasses_the_interface_is_not_scored_alone(arch_models, monkeypatch, caplog):
    """Where a model said to dispatch its attention does not (here a Llama whose layers call sdpa
    whatever the config says), the packs' tokens as one sequence would attend across packs: the
    pass refuses (no attention call came), the check records it, and the model is scored
    unpacked, as lm-eval scores it."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama import modeling_llama

    class Bypassed:
        def get_interface(self, name, default):
            return sdpa_attention_forward

    base = load_base(arch_models["llama"])
    monkeypatch.setattr(modeling_llama, "ALL_ATTENTION_FUNCTIONS", Bypassed())
    monkeypatch.setattr(packing_check, "_VERDICTS", {})
    lm = EvalkitLM(pretrained=base.model, tokenizer=base.tokenizer, batch_size=8)
    requests = suite_requests(lm)[:40]
    with caplog.at_level(logging.WARNING, logger="evalkit"):
        ours = lm._loglikelihood_tokens(requests)
    assert "did not go through transformers' attention interface" in caplog.text
    assert list(packing_check.verdicts().values()) == [False]
    assert base.model.config._attn_implementation == "sdpa"
    plain = HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)
    assert [s for s, _ in ours] == pytest.approx([s for s, _ in plain], abs=1e-5)


def test_a_model_that_scales_queries_by_sequence_index_keeps_padded_rows():
    """Llama 4's layers without rotary embeddings scale queries by the token's index in the
    sequence given (past floor_scale), not by its position id: one long sequence of packs would
    scale later packs' tokens wrongly, past what the check's short probe sees. Such a model
    keeps padded rows, which score as each request alone."""
    import random

    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    from evalkit.engine.packing import forward_unpacked

    config = Llama4TextConfig(vocab_size=300, hidden_size=16, intermediate_size=32, intermediate_size_mlp=32,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                              num_local_experts=1, moe_layers=[], no_rope_layers=[0, 1], attention_chunk_size=None,
                              floor_scale=256, attn_scale=0.1, max_position_embeddings=512,
                              pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = Llama4ForCausalLM(config).eval()
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():  # sharper attention than a fresh init, so a wrong scale shows
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    assert not row_attention.supported(model)
    rng = random.Random(0)
    requests = [([rng.randrange(3, 300) for _ in range(rng.randint(20, 60))], [rng.randrange(3, 300) for _ in range(3)])
                for _ in range(40)]
    packed = forward_packs(model, build_packs(requests, 512), batch_size=512, pad_id=0)
    alone = forward_unpacked(model, requests)
    for k in range(len(requests)):
        assert packed[k].token_logprobs == pytest.approx(alone[k].token_logprobs, abs=1e-4)


def test_greedy_is_lm_evals_argmax_where_logits_tie():
    """torch's argmax (lm-eval's greedy test) takes the first of tied largest logits; so must the
    blockwise argmax packed scoring uses, across block boundaries too."""
    import torch

    from evalkit.engine.packing import _normaliser_and_argmax

    logits = torch.randint(0, 6, (400, 50), generator=torch.Generator().manual_seed(0)).float()  # ties
    normaliser, best = _normaliser_and_argmax(logits)
    assert torch.equal(best, logits.argmax(dim=-1))
    assert torch.allclose(normaliser, torch.logsumexp(logits, dim=-1))
    assert int((logits == logits.amax(dim=-1, keepdim=True)).sum(dim=-1).gt(1).sum()) > 300  # most rows tie


def test_rows_split_at_the_context_limit_score_the_same(arch_models):
    base = load_base(arch_models["llama"])
    context = base.tokenizer("Mira found a coin near the market, and she")["input_ids"]
    endings = [" went home to rest by the river.", " ran to the harbor before the rain came.",
               " gave it to the baker at the stall.", " kept it."]
    options = [base.tokenizer(e)["input_ids"] for e in endings]
    requests = [(context, o) for o in options]
    limit = len(context) + 2 * max(len(o) for o in options)
    packs = build_packs(requests, limit)
    assert len(packs) > 1 and all(len(p.tokens) <= limit for p in packs)
    split = forward_packs(base.model, packs, batch_size=2, pad_id=0)
    whole = forward_packs(base.model, build_packs(requests, 10_000), batch_size=2, pad_id=0)
    for i in range(len(requests)):
        assert split[i].logprob_sum == pytest.approx(whole[i].logprob_sum, abs=1e-5)


def test_a_model_that_ignores_the_packed_mask_falls_back_to_lm_eval(arch_models, monkeypatch):
    """An architecture that drops custom masks and position ids would score packed options
    wrongly; the one-time check notices and lm-eval's unpacked path is used instead."""
    import torch

    base = load_base(arch_models["llama"])
    with torch.no_grad():  # sharper attention than a fresh init, so seeing the wrong tokens shows
        for p in base.model.parameters():
            p.mul_(4.0)
    forward = type(base.model).forward

    def ignores_mask(self, *args, attention_mask=None, position_ids=None, **kwargs):
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(base.model), "forward", ignores_mask)
    monkeypatch.setattr(packing_check, "_VERDICTS", {})
    lm = EvalkitLM(pretrained=base.model, tokenizer=base.tokenizer, batch_size=8)
    # One continuation per context, contexts sharing only an opening: still shared in the tree.
    opening = "Mira walked along the harbor in the early morning, and"
    lambada = [(opening + ending, " home") for ending in (" she", " the baker", " a gull", " her friend")]
    lambada = [((c, t), *lm._encode_pair(c, t)) for c, t in lambada]
    lm._loglikelihood_tokens(lambada)
    assert list(packing_check.verdicts().values()) == [False]
    requests = suite_requests(lm)
    ours = lm._loglikelihood_tokens(requests)
    plain = HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)
    assert list(packing_check.verdicts().values()) == [False]
    assert [round(s, 6) for s, _ in ours] == [round(s, 6) for s, _ in plain]
    # Continuations' distributions (KL, NLL) are then scored unpacked too.
    from evalkit.engine.distributions import along_continuations

    along = along_continuations(base.model, base.tokenizer, [(list(c), list(t)) for _, c, t in requests[:20]], 8)
    assert [-a.nll_sum for a in along] == pytest.approx([s for s, _ in plain[:20]], abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_bfloat16_runs_the_output_head_in_float32(arch, arch_models):
    """bf16 logits round a logit of 12 to 1/16 nat; the head is kept in float32 (from the stored
    weights), also after lm-eval re-ties embeddings, and packed bf16 scores stay near fp32's."""
    import torch

    fp32 = load_base(arch_models[arch])
    bf16 = load_base(arch_models[arch], dtype="bfloat16")
    lm = EvalkitLM(pretrained=bf16.model, tokenizer=bf16.tokenizer, batch_size=8)  # calls tie_weights()
    head = bf16.model.get_output_embeddings()
    assert head.weight.dtype == torch.float32 and bf16.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert torch.equal(head.weight, fp32.model.get_output_embeddings().weight)
    requests = suite_requests(lm)
    low = lm._loglikelihood_tokens(requests)
    full = EvalkitLM(pretrained=fp32.model, tokenizer=fp32.tokenizer, batch_size=8)._loglikelihood_tokens(requests)
    per_token = [abs(a - b) / len(r[2]) for (a, _), (b, _), r in zip(low, full, requests)]
    assert max(per_token) < 0.05


def test_bfloat16_adapters_run_in_the_base_dtype(arch_models, tmp_path):
    """peft loads adapter weights in float32 onto a bf16 base; evalkit casts them to bf16 (no
    up- and down-cast in every LoRA layer), and the adapter's scores stay near fp32's."""
    import torch
    from peft import get_peft_model

    from evalkit.engine.adapters import AttachedAdapters, lora_config
    from evalkit.settings import TrainSettings

    fp32 = load_base(arch_models["llama"])
    peft_model = get_peft_model(fp32.model, lora_config(fp32, TrainSettings()))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would not change the model
            param.data = torch.randn(param.shape, generator=torch.Generator().manual_seed(0)) * 0.5
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    fp32.model = peft_model.unload()
    scores = {}
    for dtype in ("float32", "bfloat16"):
        adapters = AttachedAdapters(load_base(arch_models["llama"], dtype=dtype), {"a": tmp_path / "adapter"})
        adapters.activate("a")
        lora = [p for n, p in adapters.model.named_parameters() if "lora_" in n]
        assert lora and all(p.dtype == getattr(torch, dtype) for p in lora)
        lm = EvalkitLM(pretrained=adapters.model, tokenizer=fp32.tokenizer, batch_size=8)
        requests = suite_requests(lm)
        scores[dtype] = [s / len(r[2]) for (s, _), r in zip(lm._loglikelihood_tokens(requests), requests)]
    assert scores["float32"] != scores["bfloat16"]
    assert max(abs(a - b) for a, b in zip(*scores.values())) < 0.05  # per token


def _sequence_seen(pack, at: int) -> list[int]:
    """The tokens position `at` of a pack sees, first to last, following parents."""
    chain = []
    while at >= 0:
        chain.append(at)
        at = pack.parent[at]
    return [pack.tokens[i] for i in reversed(chain)]


@pytest.mark.parametrize("seed", range(5))
def test_every_request_sees_exactly_its_own_tokens(seed, monkeypatch):
    """Random requests over a small vocabulary (so they share openings at every depth), packs
    capped small: each prediction point sees its request's own tokens at its own positions,
    every request is scored once, and no pack is over the cap."""
    import random

    from evalkit.engine import packing

    rng = random.Random(seed)
    monkeypatch.setattr(packing, "PACK_TOKENS", rng.choice([4, 16, 64]))
    requests = [([rng.randrange(3) for _ in range(rng.randint(1, 12))], [rng.randrange(3) for _ in range(rng.randint(1, 5))])
                for _ in range(200)]
    packs = build_packs(requests, max_length=40)
    assert all(len(p.tokens) <= 40 for p in packs)  # max_length
    scored = sorted(r[0] for p in packs for r in p.requests)
    assert scored == list(range(len(requests)))
    for pack in packs:
        for index, continuation, at in pack.requests:
            context, _ = requests[index]
            fed = context + continuation[:-1]
            assert continuation == requests[index][1]
            for t, position in enumerate(at):
                depth = len(context) + t
                assert _sequence_seen(pack, position) == fed[:depth]
                assert pack.positions[position] == depth - 1
    assert sum(len(p.tokens) for p in packs) < sum(len(c) + len(t) - 1 for c, t in requests)


def test_items_sharing_an_opening_compute_it_once():
    opening, a, b = list(range(100, 140)), [7, 8, 9], [5, 6]
    requests = [(opening + a, [1, 2]), (opening + a, [3]), (opening + b, [4, 4, 4])]
    packs = build_packs(requests, max_length=1000)
    assert len(packs) == 1
    assert len(packs[0].tokens) == len(opening) + len(a) + 1 + len(b) + 2


def test_a_long_shared_context_is_split_without_recursion():
    """A context thousands of tokens deep, shared by options too long to fit one pack together."""
    context = [11] * 3000
    requests = [(context, [k] * 200) for k in range(5)]
    packs = build_packs(requests, max_length=3400)
    assert len(packs) > 1 and all(len(p.tokens) <= 3199 for p in packs)
    assert sorted(r[0] for p in packs for r in p.requests) == list(range(5))


def test_options_after_a_passage_longer_than_a_pack_share_it():
    passage = list(range(1000, 2000))
    requests = [(passage, [k] * 10) for k in range(4)]
    packs = build_packs(requests, max_length=4096)
    assert len(packs) == 1 and len(packs[0].tokens) == 1000 + 4 * 9


def test_a_model_that_cannot_take_the_packed_layout_is_scored_unpacked(world_tokenizer, tmp_path, monkeypatch,
                                                                         caplog):
    """Bloom builds its alibi from a 2-D mask, so a packed 4-D mask raises inside it: choices fall
    back to lm-eval's unpacked path and continuations' distributions to their own sequences,
    with one warning, and the numbers are the unpacked ones."""

    import torch
    from transformers import AutoModelForCausalLM, BloomConfig

    from evalkit.engine.distributions import along_continuations

    eos = world_tokenizer.eos_token_id
    torch.manual_seed(0)
    config = BloomConfig(vocab_size=len(world_tokenizer), hidden_size=16, n_layer=2, n_head=2,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "bloom")
    world_tokenizer.save_pretrained(tmp_path / "bloom")
    base = load_base(tmp_path / "bloom")
    monkeypatch.setattr(packing_check, "_VERDICTS", {})
    lm = EvalkitLM(pretrained=base.model, tokenizer=base.tokenizer, batch_size=8)
    requests = suite_requests(lm)[:40]
    pairs = [(list(c), list(t)) for _, c, t in requests]
    with caplog.at_level(logging.WARNING, logger="evalkit"):
        along = along_continuations(base.model, base.tokenizer, pairs, batch_size=8)  # before any check
        ours = lm._loglikelihood_tokens(requests)
    assert "shared-prefix scoring cannot run on BloomForCausalLM" in caplog.text
    assert list(packing_check.verdicts().values()) == [False]
    plain = HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)
    assert [s for s, _ in ours] == pytest.approx([s for s, _ in plain], abs=1e-5)
    assert [-a.nll_sum for a in along] == pytest.approx([s for s, _ in plain], abs=1e-4)
    assert all(a.logprobs.shape == (len(t), len(world_tokenizer)) for a, (_, t) in zip(along, pairs))


def _sliding_window_mistral(tokenizer, folder: Path, window: int) -> Path:
    """A tiny Mistral whose attention sees only the last `window` tokens: a 4-D mask overrides that."""
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig

    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=2, sliding_window=window,
                           max_position_embeddings=512, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # sharper attention than a fresh init, so seeing the wrong tokens shows
        for p in model.parameters():
            p.mul_(4.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_bfloat16_model_with_an_adapter_passes_the_float32_check(tiny_llama, honesty_adapter, monkeypatch):
    """The common path: a bf16 Llama, its residual stream and head in float32, an adapter attached,
    widened for the check and narrowed back, is scored packed."""
    from evalkit.engine.adapters import AttachedAdapters

    base = load_base(tiny_llama, dtype="bfloat16")
    model = AttachedAdapters(base, {"honesty": honesty_adapter}).model
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    monkeypatch.setattr(packing_check, "_VERDICTS", {})
    lm = EvalkitLM(pretrained=model, tokenizer=base.tokenizer, batch_size=8)
    lm._loglikelihood_tokens(suite_requests(lm))
    assert list(packing_check.verdicts().values()) == [True]
    assert {name: p.dtype for name, p in model.named_parameters()} == dtypes


def test_the_float32_check_narrows_a_model_back_exactly(tiny_llama):
    """Widened for the check, every weight is back in its own dtype with its own values after it,
    even when the check fails inside."""
    import torch

    base = load_base(tiny_llama, dtype="bfloat16")
    before = {name: p.detach().clone() for name, p in base.model.named_parameters()}
    assert torch.bfloat16 in {p.dtype for p in before.values()}
    with pytest.raises(RuntimeError, match="inside"):
        with packing_check._in_float32(base.model) as widened:
            assert widened and {p.dtype for p in base.model.parameters()} == {torch.float32}
            raise RuntimeError("inside")
    after = dict(base.model.named_parameters())
    assert all(after[name].dtype == p.dtype and torch.equal(after[name], p) for name, p in before.items())


def test_a_sliding_window_in_bfloat16_is_caught_by_the_float32_check(world_tokenizer, tmp_path, monkeypatch,
                                                                      caplog):
    """bf16 rounds the two layouts apart by as much as an ignored window errs, so the check runs
    in float32 (widening the model for a moment): the window is caught and bf16 scores
    unpacked; the model comes back with every weight in its own dtype, unchanged."""
    import torch

    from evalkit.engine.packing import forward_unpacked

    base = load_base(_sliding_window_mistral(world_tokenizer, tmp_path / "mistral", window=8), dtype="bfloat16")
    before = {name: p.detach().clone() for name, p in base.model.named_parameters()}
    monkeypatch.setattr(packing_check, "_VERDICTS", {})
    lm = EvalkitLM(pretrained=base.model, tokenizer=base.tokenizer, batch_size=8)
    requests = suite_requests(lm)[:40]
    assert max(len(c) + len(t) for _, c, t in requests) > 8
    with caplog.at_level(logging.WARNING, logger="evalkit"):
        ours = lm._loglikelihood_tokens(requests)
    assert "disagrees with one-sequence scoring on MistralForCausalLM" in caplog.text  # caught, not failed to run
    assert list(packing_check.verdicts().values()) == [False]
    assert packing_check.layout(base.model).startswith("scoring unpacked")
    plain = forward_unpacked(base.model, [(list(c), list(t)) for _, c, t in requests])
    assert [s for s, _ in ours] == pytest.approx([plain[i].logprob_sum for i in range(len(requests))], abs=0.05)
    after = dict(base.model.named_parameters())
    assert {n: p.dtype for n, p in after.items()} == {n: p.dtype for n, p in before.items()}
    assert {p.dtype for p in after.values()} == {torch.bfloat16, torch.float32}  # norms and head stay float32
    assert all(torch.equal(after[n], p) for n, p in before.items())


def test_a_longer_request_than_the_check_saw_is_checked_again(world_tokenizer, tmp_path, monkeypatch):
    """A window longer than every request checked so far passes; a later request beyond it must not
    be scored packed on that verdict."""
    base = load_base(_sliding_window_mistral(world_tokenizer, tmp_path / "mistral", window=24))
    monkeypatch.setattr(packing_check, "_VERDICTS", {})
    words = base.tokenizer(" ".join(["Mira walked to the harbor and"] * 12))["input_ids"]
    short = [(words[:6], words[6:8]), (words[:6], words[6:9]), (words[:10], words[10:12])]
    assert packing_check.packing_verified(base.model, short, 0, 512)
    long = [*short, (words[:40], words[40:44])]
    assert not packing_check.packing_verified(base.model, long, 0, 512)
    assert list(packing_check.verdicts().values()) == [False]


def test_a_model_that_takes_left_padding_in_generates_one_prompt_at_a_time(world_tokenizer, tmp_path, monkeypatch):
    """RWKV ignores the attention mask: a left-padded prompt's padding goes into its state. The
    continuation suite's generations and discovery's prompt-end activations must be each prompt's
    own, as a batch of one gives them; a model with attention keeps its batches."""
    import torch
    from transformers import AutoModelForCausalLM, RwkvConfig

    from evalkit.engine.activations import prompt_ends

    torch.manual_seed(0)
    eos = world_tokenizer.eos_token_id
    config = RwkvConfig(vocab_size=len(world_tokenizer), hidden_size=16, num_hidden_layers=2, attention_hidden_size=16,
                        intermediate_size=32, context_length=256, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "rwkv")
    world_tokenizer.save_pretrained(tmp_path / "rwkv")
    monkeypatch.setattr(packing_check, "_PADDING", {})
    base = load_base(tmp_path / "rwkv")
    assert not packing_check.left_padding_respected(base.model, base.tokenizer.pad_token_id)
    prompts = [c.prompt for s in SUITES if s.name == "continuation" for c in s.spec.questions().values()][:6]
    lm = EvalkitLM(pretrained=base.model, tokenizer=base.tokenizer, batch_size=8)
    batched = lm.generate_until([_generation_request(p) for p in prompts])
    for prompt, text in zip(prompts, batched):
        ids = base.tokenizer(prompt, return_tensors="pt")["input_ids"]
        alone = base.model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=base.tokenizer.pad_token_id)
        expected = base.tokenizer.decode(alone[0, ids.shape[1]:]).split("\n")[0]
        assert text == expected.split(base.tokenizer.eos_token)[0]
    together, apart = prompt_ends(base.model, base.tokenizer, prompts, 8), prompt_ends(base.model, base.tokenizer,
                                                                                        prompts[:1], 1)
    assert np.allclose(together.logprobs[0], apart.logprobs[0], atol=1e-5)
    llama = load_base(build_tiny("llama", world_tokenizer, tmp_path / "llama"))
    assert packing_check.left_padding_respected(llama.model, llama.tokenizer.pad_token_id)


def _generation_request(prompt: str):
    from lm_eval.api.instance import Instance

    return Instance(request_type="generate_until", doc={}, idx=0,
                    arguments=(prompt, {"until": ["\n"], "max_gen_toks": 12, "do_sample": False}))
