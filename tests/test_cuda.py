"""--device cuda, where torch sees a CUDA GPU (skipped elsewhere): the HF backend on the GPU gives
the CPU's scores, item by item, and the same verdicts, on a base with two adapters and every
shipped suite (choices, generation, KL/NLL along the reference, paraphrases)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from evalkit.engine.base import load_base
from evalkit.engine.runner import adapter_subject
from evalkit.inputs.scenes import load_scene
from evalkit.inputs.suites import load_suites
from evalkit.pipelines.evaluate import evaluate_subjects
from evalkit.settings import RunSettings, StatsSettings, TrainSettings
from evalkit.training.lora import train_adapter

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parent.parent


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (a is None and b is None) or math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-3)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_cuda_scores_match_the_cpu(tmp_path, world_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    eos = world_tokenizer.eos_token_id
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(world_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    world_tokenizer.save_pretrained(tmp_path / "base")
    base = load_base(tmp_path / "base")
    adapters = [train_adapter([load_scene(ROOT / "scenes" / scene)], base, tmp_path / scene, TrainSettings(steps=8),
                              log=lambda _: None) for scene in ("01-honesty.yaml", "02-courage.yaml")]
    suites = load_suites(sorted((ROOT / "probes").glob("*.yaml")))
    subjects = [adapter_subject(a) for a in adapters]
    settings = RunSettings(stats=StatsSettings(resamples=200))
    runs = {device: evaluate_subjects(load_base(tmp_path / "base", device=device), subjects, suites,
                                      settings.but(device=device), log=lambda _: None, use_cache=False)
            for device in ("cpu", "cuda")}
    for cpu, gpu in zip(runs["cpu"], runs["cuda"]):
        assert len(cpu.items) == len(gpu.items) > 0
        for a, b in zip(cpu.items, gpu.items):
            for side in ("reference", "subject"):
                first, second = getattr(a, side), getattr(b, side)
                assert first.keys() == second.keys(), a.item_id
                for key in first:
                    assert _same(first[key], second[key]), (a.suite, a.item_id, side, key, first[key], second[key])
        verdicts = [[(e.suite, e.metric, e.scope, e.significant) for e in run.effects] for run in (cpu, gpu)]
        assert verdicts[0] == verdicts[1]
