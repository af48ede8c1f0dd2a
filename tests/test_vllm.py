"""--backend vllm, where a GPU and vllm are present (skipped elsewhere): lm-eval's vLLM class with
LoRA requests gives the HF backend's numbers on the same adapters."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from evalkit.engine.base import load_base
from evalkit.engine.runner import adapter_subject
from evalkit.inputs.scenes import load_scene
from evalkit.inputs.suites import load_suites
from evalkit.pipelines.evaluate import evaluate_subjects
from evalkit.settings import RunSettings, StatsSettings, TrainSettings
from evalkit.training.lora import train_adapter


def _gpu() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


pytestmark = pytest.mark.skipif(not _gpu(), reason="needs vllm and a CUDA GPU")
ROOT = Path(__file__).resolve().parent.parent


def test_vllm_backend_matches_the_hf_backend(tmp_path, world_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    eos = world_tokenizer.eos_token_id
    # head_dim 64: the smallest that vLLM's attention kernels take.
    config = LlamaConfig(vocab_size=len(world_tokenizer), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    world_tokenizer.save_pretrained(tmp_path / "base")
    base = load_base(tmp_path / "base")
    adapter = train_adapter([load_scene(ROOT / "scenes" / "01-honesty.yaml")], base, tmp_path / "honesty",
                            TrainSettings(steps=8), log=lambda _: None)
    suites = load_suites([ROOT / "probes" / "tension.yaml"])
    settings = RunSettings(device="cuda", stats=StatsSettings(resamples=200))
    (hf,) = evaluate_subjects(load_base(tmp_path / "base", device="cuda"), [adapter_subject(adapter)], suites, settings,
                         log=lambda _: None, use_cache=False)
    (vllm,) = evaluate_subjects(load_base(tmp_path / "base", device="cuda"), [adapter_subject(adapter)], suites,
                           settings.but(backend="vllm"), log=lambda _: None, use_cache=False)
    for a, b in zip(hf.items, vllm.items):
        for side in ("reference", "subject"):
            assert getattr(b, side)["margin"] == pytest.approx(getattr(a, side)["margin"], abs=1e-2), a.item_id
