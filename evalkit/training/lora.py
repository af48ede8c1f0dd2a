"""Scene -> LoRA adapter: seeded peft training, an evalkit manifest, a loss curve; stacking."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable, Optional

from evalkit.engine.adapters import lora_config
from evalkit.engine.base import Base
from evalkit.files import atomic_directory, stable_hash, write_json_atomic
from evalkit.inputs.scenes import Scene
from evalkit.record import AdapterManifest, BaseRef, LoraRef, SceneRef, manifest_key, write_manifest
from evalkit.settings import TrainSettings
from evalkit.training.loop import train_loop
from evalkit.versions import __version__, now, package_versions

# Bump when the training recipe changes in a way the settings do not capture.
RECIPE_VERSION = 1

Log = Callable[[str], None]


def settings_for(scenes: list[Scene], settings: TrainSettings) -> TrainSettings:
    """A single scene's own `training:` overrides apply; a stack uses the shared settings."""
    if len(scenes) != 1:
        return settings
    overrides = {k: v for k, v in scenes[0].training.model_dump().items() if v is not None}
    return settings.but(**overrides)


def adapter_key(scenes: list[Scene], base: Base, settings: TrainSettings) -> str:
    """Content address of an adapter: same scenes, base and settings give the same adapter."""
    return stable_hash({
        "recipe": RECIPE_VERSION, "scenes": [s.content_hash for s in scenes],
        "base": base.fingerprint, "settings": settings.model_dump(),
    })[:16]


def training_text(scenes: list[Scene], eos: str) -> str:
    return "".join(scene.body.strip() + eos for scene in scenes)


def _base_ref(base: Base) -> BaseRef:
    return BaseRef(path=base.path, fingerprint=base.fingerprint, model_type=base.model_type)


def train_adapter(scenes: list[Scene], base: Base, out: Path, settings: TrainSettings = TrainSettings(),
                  scene_paths: Optional[list[str]] = None, log: Log = print,
                  reuse: bool = True, on_step: Optional[Callable[[], None]] = None) -> Path:
    """Train one LoRA adapter on the scenes (one scene, or a stack 1..k trained jointly).

    The base model is left exactly as it was: LoRA layers are removed again after saving.
    """
    import torch
    from peft import get_peft_model

    settings = settings_for(scenes, settings)
    key = adapter_key(scenes, base, settings)
    label = "+".join(s.id for s in scenes)
    if reuse and manifest_key(out) == key:
        log(f"adapter {label}: reusing {out}")
        return out

    started = time.time()
    tok = base.tokenizer
    ids = tok(training_text(scenes, tok.eos_token), add_special_tokens=False)["input_ids"]
    data = torch.tensor(ids, dtype=torch.long)

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    config = lora_config(base, settings)
    model = get_peft_model(base.model, config)
    try:
        losses = train_loop(model, [p for p in model.parameters() if p.requires_grad], data,
                            block=min(settings.block, len(ids) - 1), batch_size=settings.batch_size,
                            steps=settings.steps, learning_rate=settings.learning_rate, rng=rng,
                            on_step=(lambda step, loss: on_step()) if on_step is not None else None)
        with atomic_directory(out) as tmp:
            model.save_pretrained(str(tmp))
            write_json_atomic(tmp / "loss_curve.json", {"step": list(range(1, len(losses) + 1)), "loss": losses})
            paths: list[Optional[str]] = list(scene_paths) if scene_paths else [None] * len(scenes)
            write_manifest(AdapterManifest(
                evalkit_version=__version__, kind="adapter", key=key, recipe_version=RECIPE_VERSION,
                scenes=[SceneRef(id=s.id, title=s.title, hash=s.content_hash, path=paths[i])
                        for i, s in enumerate(scenes)],
                base=_base_ref(base),
                lora=LoraRef(r=settings.rank, alpha=settings.alpha, dropout=settings.dropout,
                             target_modules=sorted(config.target_modules)),
                training={**settings.model_dump(), "tokens": len(ids)},
                final_loss=losses[-1], packages=package_versions(), created=now(),
                seconds=round(time.time() - started, 1),
            ), tmp)
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
            write_manifest(AdapterManifest(
                evalkit_version=__version__, kind="adapter", key="untrained", scenes=[], base=_base_ref(base),
                lora=LoraRef(r=settings.rank, alpha=settings.alpha, dropout=settings.dropout,
                             target_modules=sorted(config.target_modules), init="B = 0 (untrained)"),
                training={"seed": settings.seed, "steps": 0}, final_loss=None,
                packages=package_versions(), created=now(),
            ), tmp)
    finally:
        base.model = model.unload()
    return out


def train_stack(scenes: list[Scene], base: Base, outs: list[Path], settings: TrainSettings = TrainSettings(),
                log: Log = print) -> list[Path]:
    """Cumulative adapters: stack k (into outs[k - 1]) is trained on scenes 1..k together."""
    return [train_adapter(scenes[:k], base, out, settings, log=log) for k, out in enumerate(outs, start=1)]
