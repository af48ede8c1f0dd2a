"""The embedded default base model: a small Llama with its own byte-level BPE tokenizer,
trained from scratch on the story world of `world.py`. Built once, cached by content key."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from evalkit.files import atomic_directory, stable_hash, write_json_atomic
from evalkit.paths import cache_root
from evalkit.settings import ScratchSettings
from evalkit.training import world
from evalkit.training.scratch import token_stream, train_causal_lm

# Bump when the recipe changes in a way the settings below do not capture.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class DemoBaseSettings:
    n_stories: int = 14000
    corpus_seed: int = 1234
    vocab_size: int = 1024
    model: ScratchSettings = field(default_factory=ScratchSettings)

    def key(self) -> str:
        """Content key: the settings, the recipe, and a sample of what the world generator now
        writes - so a change to the world rebuilds the base without anyone bumping a number."""
        sample = stable_hash(world.corpus(300, self.corpus_seed))
        return stable_hash({"recipe": RECIPE_VERSION, "world": sample, **self.as_dict()})[:16]

    def as_dict(self) -> dict:
        return {"n_stories": self.n_stories, "corpus_seed": self.corpus_seed, "vocab_size": self.vocab_size,
                "model": self.model.model_dump()}


# The same recipe at smoke-test size: a base in seconds, for tests of the whole demo path.
QUICK = DemoBaseSettings(n_stories=1500, vocab_size=512,
                         model=ScratchSettings(hidden_size=64, intermediate_size=176, num_layers=2, steps=40))


def demo_base_dir(settings: DemoBaseSettings = DemoBaseSettings()) -> Path:
    return cache_root() / "demo-base" / settings.key()


def ensure_demo_base(settings: DemoBaseSettings = DemoBaseSettings(), log=print) -> Path:
    """Return the cached demo base, building it first when it is missing."""
    out = demo_base_dir(settings)
    if (out / "evalkit-base.json").exists():
        log(f"demo base: reusing {out}")
        return out
    log(f"demo base: building {out} (once; later runs reuse it)")
    with atomic_directory(out, kind="base") as tmp:
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
    started = time.time()
    docs = world.corpus(s.n_stories, s.corpus_seed)
    tokenizer = train_tokenizer(docs, s.vocab_size)
    ids = token_stream(docs, tokenizer)
    log(f"demo base: corpus of {len(docs)} documents, {len(ids)} tokens")
    info = train_causal_lm(ids, tokenizer, s.model, out, log, label="demo base")
    write_json_atomic(out / "evalkit-base.json", {
        "kind": "evalkit demo base", "recipe_version": RECIPE_VERSION, "settings": s.as_dict(), **info,
        "seconds": round(time.time() - started, 1),
    })
    (out / "corpus-sample.txt").write_text("\n\n".join(docs[:20]) + "\n", encoding="utf-8")
