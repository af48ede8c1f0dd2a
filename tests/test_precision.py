"""What a bfloat16 run keeps in float32: the residual stream and the normalisation layers, while
the matrix products stay bf16; and a model where that cannot work runs in plain bf16."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import build_tiny

from evalkit.engine.base import load_base
from evalkit.engine.lm import EvalkitLM
from evalkit.engine.precision import _decoder_layers, _is_norm, float32_residual
from evalkit.inputs.suites import load_suites

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def arch_models(tmp_path_factory, world_tokenizer):
    root = tmp_path_factory.mktemp("precision")
    return {arch: build_tiny(arch, world_tokenizer, root / arch, seed=5) for arch in ("llama", "gpt2", "gpt_neox")}


def _dtypes_seen(model, ids) -> dict[str, set]:
    """The dtypes that reach the last layer's input, the final norm's input and every Linear's input."""
    seen: dict[str, set] = {"layer input": set(), "final norm input": set(), "matmul input": set()}
    final = [m for m in model.modules() if _is_norm(m)][-1]
    hooks = [_decoder_layers(model)[-1].register_forward_pre_hook(
                 lambda _, args, kwargs: seen["layer input"].add((args[0] if args else kwargs["hidden_states"]).dtype),
                 with_kwargs=True),
             # prepend: what reaches the norm, before its own cast to float32
             final.register_forward_pre_hook(lambda _, args: seen["final norm input"].add(args[0].dtype),
                                             prepend=True)]
    head = model.get_output_embeddings()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            hooks.append(module.register_forward_pre_hook(lambda _, args: seen["matmul input"].add(args[0].dtype)))
    # GPT-2's projections are Conv1D, which is a matmul on the weight's dtype too.
    for module in model.modules():
        if type(module).__name__ == "Conv1D":
            hooks.append(module.register_forward_pre_hook(lambda _, args: seen["matmul input"].add(args[0].dtype)))
    with torch.no_grad():
        model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_bfloat16_keeps_the_residual_stream_in_float32(arch, arch_models):
    model = load_base(arch_models[arch], dtype="bfloat16").model
    seen = _dtypes_seen(model, torch.tensor([[5, 6, 7, 8]]))
    assert seen == {"layer input": {torch.float32}, "final norm input": {torch.float32},
                    "matmul input": {torch.bfloat16}}
    assert all(p.dtype == torch.float32 for m in model.modules() if _is_norm(m) for p in m.parameters())


def test_float32_residual_scores_nearer_float32(world_tokenizer, tmp_path, monkeypatch):
    """On a deeper model (8 layers, where rounding the running sum adds up) bf16 with the float32
    residual stream is nearer fp32 than plain bf16, over every option of the shipped suites."""
    from evalkit.engine import base as base_module

    deep = build_tiny("llama", world_tokenizer, tmp_path / "deep", seed=7, layers=8, hidden=64)
    with monkeypatch.context() as patch:
        patch.setattr(base_module, "float32_residual", lambda model: False)
        plain = load_base(deep, dtype="bfloat16")
    scores = {}
    for name, base in (("fp32", load_base(deep)), ("bf16", plain), ("bf16+residual", load_base(deep, dtype="bfloat16"))):
        lm = EvalkitLM(pretrained=base.model, tokenizer=base.tokenizer, batch_size=8)
        requests = [((c.prompt, s.spec.delimiter + o), *lm._encode_pair(c.prompt, s.spec.delimiter + o))
                    for s in load_suites([ROOT / "probes"]) for c in s.spec.choices() for o in c.options]
        scores[name] = torch.tensor([score for score, _ in lm._loglikelihood_tokens(requests)])
    plain_error = (scores["bf16"] - scores["fp32"]).abs().mean()
    kept_error = (scores["bf16+residual"] - scores["fp32"]).abs().mean()
    assert kept_error < 0.75 * plain_error


def test_a_model_that_cannot_take_it_runs_in_plain_bfloat16(arch_models, caplog):
    """If the test forward fails (here: a layer that refuses float32 input), the hooks come off,
    the norms go back to bf16 and the model still runs."""
    base = load_base(arch_models["llama"])
    model = base.model.to(torch.bfloat16)

    def refuse(_, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.dtype == torch.float32:
            raise RuntimeError("expected bfloat16 input")

    _decoder_layers(model)[-1].register_forward_pre_hook(refuse, with_kwargs=True)
    with caplog.at_level(logging.WARNING, logger="evalkit"):
        assert float32_residual(model) is False
    assert "residual stream stays in bfloat16 (expected bfloat16 input)" in caplog.text
    assert all(p.dtype == torch.bfloat16 for m in model.modules() if _is_norm(m) for p in m.parameters())
    seen = _dtypes_seen(model, torch.tensor([[5, 6, 7]]))
    assert seen["layer input"] == {torch.bfloat16}
