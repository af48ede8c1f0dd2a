"""The embedded default base model: a small Llama with its own byte-level BPE tokenizer,
trained from scratch on the story world of `world.py`. Built once, cached by content key."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from evalkit import world
from evalkit.files import atomic_directory, stable_hash, write_json_atomic
from evalkit.paths import cache_root

# Bump when the recipe changes in a way the settings below do not capture.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class DemoBaseSettings:
    n_stories: int = 14000
    corpus_seed: int = 1234
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 352
    num_layers: int = 4
    num_heads: int = 4
    context: int = 256
    block: int = 128
    batch_size: int = 32
    steps: int = 260
    learning_rate: float = 3e-3
    warmup: int = 20
    train_seed: int = 0

    def key(self) -> str:
        return stable_hash({"recipe": RECIPE_VERSION, **asdict(self)})[:16]


def demo_base_dir(settings: DemoBaseSettings = DemoBaseSettings()) -> Path:
    return cache_root() / "demo-base" / settings.key()


def ensure_demo_base(settings: DemoBaseSettings = DemoBaseSettings(), log=print) -> Path:
    """Return the cached demo base, building it first when it is missing."""
    out = demo_base_dir(settings)
    if (out / "evalkit-base.json").exists():
        log(f"demo base: reusing {out}")
        return out
    log(f"demo base: building {out} (once; later runs reuse it)")
    with atomic_directory(out) as tmp:
        _build(settings, tmp, log)
    return out


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`, wrapped for transformers."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>",
    )


def _build(s: DemoBaseSettings, out: Path, log) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    started = time.time()
    docs = world.corpus(s.n_stories, s.corpus_seed)
    tok = train_tokenizer(docs, s.vocab_size)
    eos = tok.eos_token_id
    ids: list[int] = []
    for doc in docs:  # documents separated by the end-of-text token, as GPT-2 does
        ids.extend(tok(doc)["input_ids"])
        ids.append(eos)
    data = torch.tensor(ids, dtype=torch.long)
    log(f"demo base: corpus of {len(docs)} documents, {len(ids)} tokens")

    torch.manual_seed(s.train_seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_heads, max_position_embeddings=s.context,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=0.01)
    rng = random.Random(s.train_seed)
    losses = []
    model.train()
    for step in range(s.steps):
        lr = s.learning_rate * min(1.0, (step + 1) / s.warmup) * 0.5 * (1 + math.cos(math.pi * step / s.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = [rng.randrange(0, len(data) - s.block - 1) for _ in range(s.batch_size)]
        batch = torch.stack([data[i : i + s.block] for i in starts])  # (B, T)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(round(loss.item(), 4))
        if step % 50 == 0 or step == s.steps - 1:
            log(f"demo base: step {step + 1}/{s.steps} loss {loss.item():.3f}")
    model.eval()
    model.generation_config.pad_token_id = eos
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_json_atomic(out / "evalkit-base.json", {
        "kind": "evalkit demo base", "recipe_version": RECIPE_VERSION, "settings": asdict(s),
        "parameters": sum(p.numel() for p in model.parameters()), "corpus_tokens": len(ids),
        "final_loss": losses[-1], "loss_curve": losses, "seconds": round(time.time() - started, 1),
    })
    (out / "corpus-sample.txt").write_text("\n\n".join(docs[:20]) + "\n", encoding="utf-8")
