"""Shared fixtures: tiny models built inside the tests (no download, not the demo base)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import evalkit  # noqa: F401  (sets the offline variables before anything else imports the hub)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory) -> Path:
    """Every cache (demo base, reference scores) goes to a per-session temp folder."""
    path = tmp_path_factory.mktemp("evalkit-cache")
    os.environ["EVALKIT_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def world_tokenizer():
    from evalkit.training import world
    from evalkit.training.demo_base import train_tokenizer

    return train_tokenizer(world.corpus(600, seed=7), vocab_size=400)


def build_tiny(arch: str, tokenizer, out: Path, seed: int = 0, layers: int = 2, hidden: int = 16) -> Path:
    """A randomly initialised causal LM (by default of hidden size 16 with 2 layers), saved as an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoConfig, GPTNeoXConfig, LlamaConfig

    torch.manual_seed(seed)
    vocab, eos = len(tokenizer), tokenizer.eos_token_id
    common = dict(vocab_size=vocab, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    if arch == "llama":
        config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
                             num_key_value_heads=2, max_position_embeddings=128, **common)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=2, n_positions=128, **common)
    elif arch == "gpt_neox":
        config = GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
                               max_position_embeddings=128, **common)
    elif arch == "gpt_neo":  # attention not through transformers' attention interface
        config = GPTNeoConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers, num_heads=2,
                              attention_types=[[["global"], layers]], max_position_embeddings=128, **common)
    else:
        raise ValueError(arch)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, world_tokenizer) -> Path:
    return build_tiny("llama", world_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def other_tiny_llama(tmp_path_factory, world_tokenizer) -> Path:
    """Same architecture, other weights: adapters trained on tiny_llama must be refused here."""
    return build_tiny("llama", world_tokenizer, tmp_path_factory.mktemp("other-llama"), seed=1)


@pytest.fixture(scope="session")
def honesty_adapter(tmp_path_factory, tiny_llama) -> Path:
    """An adapter trained in-process on tiny_llama (a few steps: for tests of the plumbing)."""
    from evalkit import api
    from evalkit.settings import TrainSettings

    out = tmp_path_factory.mktemp("adapters") / "honesty"
    (path,) = api.train(ROOT / "scenes" / "01-honesty.yaml", base=tiny_llama, out=out, settings=TrainSettings(steps=5))
    return path


@pytest.fixture(scope="session")
def sentencepiece_tokenizer():
    """A Llama-style tokenizer (Metaspace '▁' word starts, BOS added): decoding a continuation on
    its own drops its leading space, as Llama's and SmolLM2's SentencePiece tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from evalkit.training import world

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(world.corpus(600, seed=7), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


@pytest.fixture(scope="session")
def sentencepiece_llama(tmp_path_factory, sentencepiece_tokenizer) -> Path:
    return build_tiny("llama", sentencepiece_tokenizer, tmp_path_factory.mktemp("sp-llama"), seed=3)
