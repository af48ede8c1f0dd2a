"""Scene -> LoRA adapter: seeded peft training, an evalkit manifest, a loss curve; stacking."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from evalkit import __version__
from evalkit.files import atomic_directory, stable_hash, write_json_atomic
from evalkit.models import MANIFEST_NAME, Base, lora_targets, manifest_key, uses_conv1d
from evalkit.scene import Scene
from evalkit.scratch import window_batch
from evalkit.versions import now, package_versions

# Bump when the training recipe changes in a way the settings do not capture.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 60
    learning_rate: float = 2e-3
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    batch_size: int = 8
    block: int = 96
    seed: int = 0

    def for_scenes(self, scenes: list[Scene]) -> "TrainSettings":
        """A single scene's overrides apply; a stack uses the shared settings."""
        if len(scenes) != 1:
            return self
        overrides = {k: v for k, v in scenes[0].training.model_dump().items() if v is not None}
        return replace(self, **overrides)


def adapter_key(scenes: list[Scene], base: Base, settings: TrainSettings) -> str:
    """Content address of an adapter: same scenes, base and settings give the same adapter."""
    return stable_hash({
        "recipe": RECIPE_VERSION, "scenes": [s.content_hash for s in scenes],
        "base": base.fingerprint, "settings": asdict(settings),
    })[:16]


def training_text(scenes: list[Scene], eos: str) -> str:
    return "".join(scene.body.strip() + eos for scene in scenes)


def lora_config(base: Base, settings: TrainSettings):
    """peft's LoraConfig for this base: targets inferred per architecture, GPT-2's Conv1D handled."""
    from peft import LoraConfig

    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=lora_targets(base.model), task_type="CAUSAL_LM",
                      fan_in_fan_out=uses_conv1d(base.model))


def train_adapter(scenes: list[Scene], base: Base, out: Path, settings: TrainSettings = TrainSettings(),
                  scene_paths: list[str] | None = None, log: Callable[[str], None] = print,
                  reuse: bool = True, on_step: Callable[[], None] | None = None) -> Path:
    """Train one LoRA adapter on the scenes (one scene, or a stack 1..k trained jointly).

    The base model is left exactly as it was: LoRA layers are removed again after saving.
    """
    import torch
    from peft import get_peft_model

    settings = settings.for_scenes(scenes)
    key = adapter_key(scenes, base, settings)
    label = "+".join(s.id for s in scenes)
    if reuse and manifest_key(out) == key:
        log(f"adapter {label}: reusing {out}")
        return out

    started = time.time()
    tok = base.tokenizer
    ids = tok(training_text(scenes, tok.eos_token), add_special_tokens=False)["input_ids"]
    block = min(settings.block, len(ids) - 1)
    data = torch.tensor(ids, dtype=torch.long)

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    config = lora_config(base, settings)
    model = get_peft_model(base.model, config)
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
        model.train()
        losses: list[float] = []
        for _ in range(settings.steps):
            batch = window_batch(data, block, settings.batch_size, rng)  # (B, block + 1)
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(round(loss.item(), 5))
            if on_step is not None:
                on_step()
        model.eval()
        with atomic_directory(out) as tmp:
            model.save_pretrained(str(tmp))
            write_json_atomic(tmp / "loss_curve.json", {"step": list(range(1, len(losses) + 1)), "loss": losses})
            write_json_atomic(tmp / MANIFEST_NAME, {
                "evalkit_version": __version__,
                "kind": "adapter",
                "key": key,
                "recipe_version": RECIPE_VERSION,
                "scenes": [{"id": s.id, "title": s.title, "hash": s.content_hash,
                            "path": (scene_paths or [None] * len(scenes))[i]} for i, s in enumerate(scenes)],
                "base": {"path": base.path, "fingerprint": base.fingerprint, "model_type": base.model_type},
                "lora": {"r": settings.rank, "alpha": settings.alpha, "dropout": settings.dropout,
                         "target_modules": sorted(config.target_modules)},
                "training": {**asdict(settings), "tokens": len(ids)},
                "final_loss": losses[-1],
                "packages": package_versions(),
                "created": now(),
                "seconds": round(time.time() - started, 1),
            })
    finally:
        # Strip the LoRA layers so the next adapter (and the evaluation) starts from the clean base.
        base.model = model.unload()
        for p in base.model.parameters():
            p.requires_grad_(False)
    log(f"adapter {label}: trained {settings.steps} steps, final loss {losses[-1]:.3f} -> {out}")
    return out


def untrained_adapter(base: Base, out: Path, settings: TrainSettings = TrainSettings()) -> Path:
    """A LoRA adapter as peft initialises it: B = 0, so base+adapter must equal the base exactly.
    The null subject of `evalkit calibrate`."""
    from peft import get_peft_model

    config = lora_config(base, settings)
    model = get_peft_model(base.model, config)
    try:
        with atomic_directory(out) as tmp:
            model.save_pretrained(str(tmp))
            write_json_atomic(tmp / MANIFEST_NAME, {
                "evalkit_version": __version__, "kind": "adapter", "key": "untrained", "scenes": [],
                "base": {"path": base.path, "fingerprint": base.fingerprint, "model_type": base.model_type},
                "lora": {"r": settings.rank, "alpha": settings.alpha, "dropout": settings.dropout,
                         "target_modules": sorted(config.target_modules), "init": "B = 0 (untrained)"},
                "training": {"seed": settings.seed, "steps": 0}, "final_loss": None,
                "packages": package_versions(), "created": now(),
            })
    finally:
        base.model = model.unload()
    return out


def train_stack(scenes: list[Scene], base: Base, out_root: Path, settings: TrainSettings = TrainSettings(),
                log: Callable[[str], None] = print) -> list[Path]:
    """Cumulative adapters: stack k is trained on scenes 1..k together (the folder's name order)."""
    outs = []
    for k in range(1, len(scenes) + 1):
        out = out_root / f"stack-{k:02d}-{scenes[k - 1].id}"
        outs.append(train_adapter(scenes[:k], base, out, settings, log=log))
    return outs
