"""Train a small Llama-architecture causal LM from scratch: the demo base, and `evalkit scratch`
checkpoints on chosen scenes (plus an optional corpus). The result is a plain HF model folder."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional

from evalkit.errors import EvalkitError
from evalkit.files import atomic_directory, read_text, stable_hash, write_json_atomic
from evalkit.inputs.scenes import Scene
from evalkit.record import CheckpointManifest, SceneRef, write_manifest
from evalkit.settings import ScratchSettings
from evalkit.training.loop import leading_token, train_loop
from evalkit.versions import __version__, now, package_versions

Log = Callable[[str], None]
OnStep = Optional[Callable[[], None]]


def token_stream(texts: list[str], tokenizer: Any) -> list[int]:
    """Documents joined by the end-of-text token, as GPT-2 was trained."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return ids


def train_causal_lm(ids: list[int], tokenizer: Any, s: ScratchSettings, out: Path, log: Log = print,
                    label: str = "scratch", on_step: OnStep = None) -> dict:
    """Seeded AdamW with warm-up and cosine decay on random windows; saves model + tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    eos = tokenizer.eos_token_id
    data = torch.tensor(ids, dtype=torch.long)
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads, num_key_value_heads=s.num_heads,
        max_position_embeddings=s.context, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)

    def schedule(step: int) -> float:
        return s.learning_rate * min(1.0, (step + 1) / s.warmup) * 0.5 * (1 + math.cos(math.pi * step / s.steps))

    def step_done(step: int, loss: float) -> None:
        if on_step is not None:
            on_step()
        if step % 50 == 0 or step == s.steps - 1:
            log(f"{label}: step {step + 1}/{s.steps} loss {loss:.3f}")

    losses = train_loop(model, list(model.parameters()), data, block=min(s.block, len(ids) - 1),
                        batch_size=s.batch_size, steps=s.steps, learning_rate=s.learning_rate, rng=rng,
                        weight_decay=0.01, schedule=schedule, clip=1.0, on_step=step_done,
                        lead=leading_token(tokenizer))
    model.generation_config.pad_token_id = eos
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_json_atomic(out / "loss_curve.json", {"step": list(range(1, len(losses) + 1)), "loss": losses})
    return {"parameters": sum(p.numel() for p in model.parameters()), "tokens": len(ids), "final_loss": losses[-1]}


def read_corpus(path: Path) -> list[str]:
    """Paragraphs of a .txt file, or of the .txt files of a folder (not its sub-folders)."""
    if not path.exists():
        raise EvalkitError("no such corpus file or folder", where=str(path))
    files = sorted(f for f in path.glob("*.txt") if f.is_file()) if path.is_dir() else [path]
    for f in files:
        if not f.is_file():  # a pipe or a device would block or never end
            raise EvalkitError("not a plain file", where=str(f))
    return [t for f in files for t in read_text(f).split("\n\n") if t.strip()]


def scratch_key(scenes: list[Scene], tokenizer_dir: Path, settings: ScratchSettings, corpus: list[str] | None,
                demo_stories: int, lead: Optional[int] = None) -> str:
    """Content address of a scratch checkpoint: same scenes, corpus, tokenizer and settings (and,
    for a BOS-adding tokenizer, windows led by BOS: checkpoints made before that differ)."""
    return stable_hash({"scenes": [s.content_hash for s in scenes], "corpus": stable_hash(corpus or []),
                        "demo_stories": demo_stories, "tokenizer": str(tokenizer_dir),
                        "settings": settings.model_dump(), **({"lead": lead} if lead is not None else {})})[:16]


def train_scratch(scenes: list[Scene], tokenizer_dir: Path, out: Path, settings: ScratchSettings,
                  corpus: list[str] | None = None, demo_stories: int = 0,
                  log: Log = print, on_step: OnStep = None) -> Path:
    """A checkpoint trained from scratch on the scenes (+ corpus), with the tokenizer of `tokenizer_dir`
    so its scores share a vocabulary with that base (KL stays defined)."""
    from transformers import AutoTokenizer

    from evalkit.training import world

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    texts = [s.body.strip() for s in scenes] + list(corpus or [])
    if demo_stories:
        texts += world.corpus(demo_stories, seed=settings.seed + 1)
    ids = token_stream(texts, tokenizer)
    key = scratch_key(scenes, tokenizer_dir, settings, corpus, demo_stories, leading_token(tokenizer))
    started = time.time()
    with atomic_directory(out, [tokenizer_dir], kind="checkpoint") as tmp:
        info = train_causal_lm(ids, tokenizer, settings, tmp, log, label=f"scratch {out.name}", on_step=on_step)
        write_manifest(CheckpointManifest(
            evalkit_version=__version__, kind="checkpoint", key=key,
            scenes=[SceneRef(id=s.id, title=s.title, hash=s.content_hash) for s in scenes],
            tokenizer_from=str(tokenizer_dir), corpus_documents=len(corpus or []), demo_stories=demo_stories,
            model={"architecture": "llama", **settings.model_dump(), "parameters": info["parameters"]},
            training={"seed": settings.seed, "steps": settings.steps, "tokens": info["tokens"]},
            final_loss=info["final_loss"], packages=package_versions(), created=now(),
            seconds=round(time.time() - started, 1),
        ), tmp)
    return out
