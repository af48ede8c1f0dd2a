"""--device cuda, where torch sees a CUDA GPU (skipped elsewhere): the HF backend on the GPU gives
the CPU's scores, item by item, and the same verdicts, on a base with two adapters and every
shipped suite (choices, generation, KL/NLL along the reference, paraphrases); discovery's
prompt-end activations and greedy continuations match the CPU's too."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit.engine import packing_check
from evalkit.engine.activations import greedy, prompt_ends
from evalkit.engine.base import load_base
from evalkit.engine.runner import adapter_subject
from evalkit.inputs.scenes import load_scene
from evalkit.inputs.suites import load_suites
from evalkit.pipelines.evaluate import evaluate_subjects
from evalkit.settings import RunSettings, StatsSettings, TrainSettings
from evalkit.training.lora import train_adapter

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parent.parent
GPU = "cuda"


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, world_tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("cuda-base")
    eos = world_tokenizer.eos_token_id
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(world_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    LlamaForCausalLM(config).save_pretrained(out)
    world_tokenizer.save_pretrained(out)
    return out


def _same(a, b) -> bool:
    """Numbers within 1e-3 (absolute, or relative for large sums); everything else equal."""
    if a is None or b is None:
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-3)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_cuda_scores_match_the_cpu(tmp_path, tiny_base):
    base = load_base(tiny_base)
    adapters = [train_adapter([load_scene(ROOT / "scenes" / scene)], base, tmp_path / scene, TrainSettings(steps=8),
                              log=lambda _: None) for scene in ("01-honesty.yaml", "02-courage.yaml")]
    suites = load_suites(sorted((ROOT / "probes").glob("*.yaml")))
    subjects = [adapter_subject(a) for a in adapters]
    settings = RunSettings(stats=StatsSettings(resamples=200))
    runs = {device: evaluate_subjects(load_base(tiny_base, device=device), subjects, suites,
                                      settings.but(device=device), log=lambda _: None, use_cache=False)
            for device in ("cpu", GPU)}
    # The GPU ran its own packing check (kernels differ by device), and it passed.
    assert [v for k, v in packing_check.verdicts().items() if k[3] == GPU] == [True]
    assert len(runs["cpu"]) == len(runs[GPU]) == 2
    for cpu, gpu in zip(runs["cpu"], runs[GPU]):
        assert len(cpu.items) == len(gpu.items) > 0
        for a, b in zip(cpu.items, gpu.items):
            for side in ("reference", "subject"):
                first, second = getattr(a, side), getattr(b, side)
                assert first.keys() == second.keys(), a.item_id
                for key in first:
                    assert _same(first[key], second[key]), (a.suite, a.item_id, side, key, first[key], second[key])
        verdicts = [[(e.suite, e.metric, e.scope, e.significant) for e in run.effects] for run in (cpu, gpu)]
        assert verdicts[0] == verdicts[1]


def test_discovery_activations_on_cuda_match_the_cpu(tiny_base):
    prompts = ["The fox crossed the river at night.", "Would you share your bread?", "Yes"]
    found = {}
    for device in ("cpu", GPU):
        base = load_base(tiny_base, device=device)
        found[device] = (prompt_ends(base.model, base.tokenizer, prompts, batch_size=2, cache=None),
                         greedy(base.model, base.tokenizer, prompts, max_new_tokens=8))
    (cpu, cpu_texts), (gpu, gpu_texts) = found["cpu"], found[GPU]
    assert np.allclose(cpu.logprobs, gpu.logprobs, atol=1e-4)
    assert np.allclose(cpu.hidden, gpu.hidden, atol=1e-4)
    assert cpu_texts == gpu_texts
