"""Scene -> LoRA adapter: seeded peft training, an evalkit manifest, a loss curve; stacking."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from evalkit.engine.adapters import lora_config
from evalkit.engine.base import Base, context_limit
from evalkit.engine.identity import tokenizer_key
from evalkit.errors import EvalkitError
from evalkit.files import atomic_directory, sha256_text, stable_hash, write_json_atomic
from evalkit.inputs.scenes import Scene
from evalkit.paths import bundled, cache_root
from evalkit.record import AdapterManifest, BaseRef, LoraRef, SceneRef, manifest_key, write_manifest
from evalkit.settings import TrainSettings
from evalkit.training.loop import leading_token, train_loop
from evalkit.versions import __version__, now, package_versions

# Bump when the training recipe changes in a way the settings do not capture.
RECIPE_VERSION = 3  # 3: windows begin with BOS where the tokenizer adds one

Log = Callable[[str], None]
OnStep = Optional[Callable[[int, int, float], None]]  # (step, steps, loss)

# Models at least this large are pretrained models with a vocabulary of real English, and get
# the recipe below; smaller ones (the demo base) keep the one they were tuned with.
PRETRAINED_PARAMETERS = 20_000_000
# Measured on SmolLM2-135M (see README, Real models): lr 2e-3 memorised a 5-sentence scene (loss
# 6e-5) and raised the NLL of general English by 3 nats/token; at 2e-4 general English is
# untouched until the scene's loss is about 1.5 and damaged past it. Stopping at 1.7 keeps the
# worst real scene (the neutral control, whose text is most like general English) at +0.10.
# A loss level does not carry to other models: Gemma 3 270M learns the same scene in a third of
# the steps and its general English is +0.317 worse by the time the loss is at 1.7 (+0.012 four
# steps before). So the recipe also holds the damage within the warning's line, measured as it trains.
# Warnings after training: the scene is memorised, or general text got worse by this much.
MEMORISED_LOSS = 0.1
DAMAGE_NATS = 0.15
PRETRAINED_RECIPE = TrainSettings(learning_rate=2e-4, steps=40, batch_size=4, block=64, stop_loss=1.7,
                                  damage_budget=DAMAGE_NATS)


def recipe_for(base: Base) -> tuple[TrainSettings, str]:
    """The default recipe for this base's size, and its name."""
    parameters = sum(p.numel() for p in base.model.parameters())
    if parameters < PRETRAINED_PARAMETERS:
        return TrainSettings(), "small-model recipe"
    return PRETRAINED_RECIPE, "pretrained-model recipe"


def settings_for(scenes: list[Scene], base: Base, given: Optional[TrainSettings] = None,
                 plan: Mapping[str, Any] = {}, command_line: Mapping[str, Any] = {}
                 ) -> tuple[TrainSettings, dict[str, str]]:
    """The settings one adapter trains with, and where each came from. Later layers win: the
    recipe for the base's size (or `given` settings), an experiment plan's `training:`, a single
    scene's own `training:` (a stack uses the shared settings), the command line."""
    start, label = (given, "given") if given is not None else recipe_for(base)
    values = start.model_dump()
    source = {k: label for k in values}
    scene = scenes[0].training.model_dump() if len(scenes) == 1 else {}
    for layer, overrides in (("plan", plan), ("scene", scene), ("command line", command_line)):
        for key, value in overrides.items():
            if value is not None:
                values[key], source[key] = value, layer
    return TrainSettings(**values), source


def adapter_key(scenes: list[Scene], base: Base, settings: TrainSettings) -> str:
    """Content address of an adapter: same scenes, base and settings give the same adapter."""
    return stable_hash({
        "recipe": RECIPE_VERSION, "scenes": [s.content_hash for s in scenes],
        "base": base.fingerprint, "settings": settings.model_dump(),
    })[:16]


def training_tokens(scenes: list[Scene], tokenizer: Any,
                    files: Optional[list[Optional[str]]] = None) -> tuple[list[int], Optional[list[int]]]:
    """The token stream a stack of scenes trains on, and which tokens carry the loss (None: all).

    Prose scenes are their text, each ended by end-of-text. A chat scene is rendered with the
    tokenizer's chat template; only the assistant's turns carry the loss, so the adapter learns
    how to answer, not how to ask. Errors name each scene's file where `files` gives it.
    """
    where = {s.id: (f or s.id) for s, f in zip(scenes, files or [None] * len(scenes))}
    special = set(tokenizer.all_special_ids)
    for scene in scenes:
        if scene.chat is None and set(tokenizer(scene.body, add_special_tokens=False)["input_ids"]) <= special:
            raise EvalkitError(f"field 'text': this tokenizer reads the scene's text as special tokens only "
                               f"({scene.body.strip()[:40]!r}): there is no text to learn", where=where[scene.id])
    if not any(s.chat for s in scenes):
        end = tokenizer.eos_token or "\n\n"  # a tokenizer without an end-of-text token: a paragraph break
        return tokenizer(training_text(scenes, end), add_special_tokens=False)["input_ids"], None
    if not getattr(tokenizer, "chat_template", None):
        raise EvalkitError("field 'turns': a chat scene needs a model whose tokenizer has a chat template",
                           where=next(where[s.id] for s in scenes if s.chat))
    ids: list[int] = []
    mask: list[int] = []
    for scene in scenes:
        if scene.chat is None:
            part = tokenizer(scene.body.strip() + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            ids += part
            mask += [1] * len(part)
            continue
        messages = [t.model_dump() for t in scene.chat]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        spans = []  # character spans of the assistant's turns in the rendered text
        for k, turn in enumerate(scene.chat):
            if turn.role == "assistant":
                before = len(tokenizer.apply_chat_template(messages[:k], tokenize=False)) if k else 0
                content = turn.content.strip()  # templates may trim what they render
                start = text.find(content, before)
                if start < 0:
                    raise EvalkitError(f"field 'turns.{k}.content': the model's chat template renders this turn in "
                                       "a way its text cannot be found in", where=where[scene.id])
                spans.append((start, start + len(content)))
        try:
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:
            raise EvalkitError("a chat scene needs a fast tokenizer (with character offsets)",
                               where=where[scene.id]) from None
        ids += encoded["input_ids"]
        mask += [int(any(a <= begin < b for a, b in spans)) for begin, _ in encoded["offset_mapping"]]
    return ids, mask


def training_text(scenes: list[Scene], eos: str) -> str:
    return "".join(scene.body.strip() + eos for scene in scenes)


def _base_ref(base: Base) -> BaseRef:
    return BaseRef(path=base.path, fingerprint=base.fingerprint, model_type=base.model_type)


def general_nll(model: Any, tokenizer: Any, autocast: Optional[Any] = None) -> float:
    """Mean NLL (nats/token) of the shipped sample of general English, in windows the model's
    context holds: what a scene must not make worse. `autocast` as in training."""
    import torch

    ids = tokenizer(bundled("general.txt").read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    lead = leading_token(tokenizer)
    width = min(512, context_limit(model, tokenizer)) - (lead is not None)
    total = count = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        for start in range(0, len(ids) - 1, width):  # each window begins as an evaluated context does
            window = torch.tensor([([lead] if lead is not None else []) + ids[start : start + width]])
            if window.shape[1] < 2:
                continue
            n = window.shape[1] - 1
            total += model(input_ids=window, labels=window).loss.item() * n
            count += n
    return total / count


def base_general_nll(model: Any, base: Base, autocast: Optional[Any]) -> float:
    """`general_nll` of the base alone (the adapter of `model` disabled), kept in the cache by the
    base's fingerprint, the sample and the dtype: every adapter on one base compares with the same
    number, and only the first pays for it."""
    key = stable_hash({"base": base.fingerprint, "sample": sha256_text(bundled("general.txt").read_text("utf-8")),
                       "autocast": str(autocast), "weights": str(next(base.model.parameters()).dtype),
                       "tokenizer": tokenizer_key(base.tokenizer), "windows": "led by BOS"})[:24]
    path = cache_root() / "general-nll" / f"{key}.json"
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["nll"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not there yet, or unreadable: compute it again
    with model.disable_adapter():
        nll = general_nll(model, base.tokenizer, autocast)
    try:
        write_json_atomic(path, {"nll": nll})
    except EvalkitError:
        pass  # a cache that cannot be written costs the next run one pass, nothing more
    return nll


def train_adapter(scenes: list[Scene], base: Base, out: Path, settings: Optional[TrainSettings] = None, *,
                  plan: Mapping[str, Any] = {}, command_line: Mapping[str, Any] = {},
                  scene_paths: Optional[list[str]] = None, log: Log = print,
                  reuse: bool = True, on_step: OnStep = None) -> Path:
    """Train one LoRA adapter on the scenes (one scene, or a stack 1..k trained jointly).

    Settings: see `settings_for`. After training, the NLL of general English is compared under
    base and base+adapter; a memorised scene or damaged general text is a warning line and is
    written to the manifest. The base model is left exactly as it was: LoRA layers are removed
    again after saving.
    """
    import torch
    from peft import get_peft_model

    settings, sources = settings_for(scenes, base, settings, plan, command_line)
    key = adapter_key(scenes, base, settings)
    label = "+".join(s.id for s in scenes)
    if reuse and manifest_key(out) == key:
        log(f"adapter {label}: reusing {out}")
        return out

    started = time.time()
    tok = base.tokenizer
    ids, mask = training_tokens(scenes, tok, list(scene_paths) if scene_paths else None)
    data = torch.tensor(ids, dtype=torch.long)

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    config = lora_config(base, settings)
    model = get_peft_model(base.model, config)
    autocast = torch.bfloat16 if settings.dtype == "bfloat16" else None
    try:
        guard = (DamageGuard(model, base, settings.damage_budget, settings.steps, autocast)
                 if settings.damage_budget else None)
        losses = train_loop(model, [p for p in model.parameters() if p.requires_grad], data,
                            block=min(settings.block, len(ids) - 1), batch_size=settings.batch_size,
                            steps=settings.steps, learning_rate=settings.learning_rate, rng=rng,
                            on_step=(lambda step, loss: on_step(step, settings.steps, loss)) if on_step else None,
                            stop_loss=settings.stop_loss, mask=torch.tensor(mask) if mask is not None else None,
                            autocast=autocast, lead=leading_token(tok), keep_going=guard)
        if guard is None:
            base_nll, adapter_nll = base_general_nll(model, base, autocast), general_nll(model, tok, autocast)
        else:
            base_nll = guard.base_nll
            losses, adapter_nll, note = guard.settle(losses, lambda: general_nll(model, tok, autocast))
            if note:
                log(f"adapter {label}: {note}")
        damage = {"base_nll": round(base_nll, 4), "adapter_nll": round(adapter_nll, 4),
                  "increase": round(adapter_nll - base_nll, 4)}
        warnings = training_warnings(losses[-1], damage["increase"])
        for warning in warnings:
            log(f"warning: adapter {label}: {warning}")
        with atomic_directory(out, [Path(base.path)], kind="adapter") as tmp:
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
                training={**settings.model_dump(), "tokens": len(ids), "steps_run": len(losses)},
                final_loss=losses[-1], packages=package_versions(), created=now(),
                seconds=round(time.time() - started, 1), settings_from=sources, damage=damage, warnings=warnings,
            ), tmp)
    finally:
        # Strip the LoRA layers so the next adapter (and the evaluation) starts from the clean base.
        base.model = model.unload()
        for p in base.model.parameters():
            p.requires_grad_(False)
    log(f"adapter {label}: trained {len(losses)} steps, final loss {losses[-1]:.3f}, general-text NLL "
        f"{damage['increase']:+.3f} nats/token -> {out}")
    return out


class DamageGuard:
    """train_loop's `keep_going` for a damage budget. Once the mean loss of the last steps is 35%
    below the first step's (on SmolLM2 and Gemma general English had not moved before), or three
    quarters of the steps have run (a scene whose loss falls slowly can still damage; SmolLM2's
    real scenes reach 35% by steps 18-24 of the recipe's 40), general English is
    measured every fourth step while the damage is under a third of the budget, every second step
    after. Within the budget the LoRA weights are copied aside (they are small); past it training
    stops, and `settle` puts them back. A check costs about half a training step."""

    def __init__(self, model: Any, base: Base, budget: float, steps: int, autocast: Optional[Any]):
        self.model, self.tokenizer, self.budget, self.autocast = model, base.tokenizer, budget, autocast
        self.late = max(1, steps * 3 // 4)
        self.base_nll = base_general_nll(model, base, autocast)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.kept: list[Any] = []  # the LoRA weights of the last step measured within the budget
        self.kept_step, self.kept_damage = 0, 0.0
        self.next_check: Optional[int] = None
        self.exceeded: Optional[tuple[int, float]] = None

    def __call__(self, losses: list[float]) -> bool:
        recent = losses[-5:]
        if self.next_check is None and (sum(recent) / len(recent) <= 0.65 * losses[0] or len(losses) >= self.late):
            self.next_check = -(-len(losses) // 4) * 4  # on multiples of 4, as the recipe's step cap is
        if self.next_check is None or len(losses) < self.next_check:
            return True
        self.model.eval()
        damage = general_nll(self.model, self.tokenizer, self.autocast) - self.base_nll
        self.model.train()
        self.next_check = len(losses) + (4 if damage < self.budget / 3 else 2)
        if damage > self.budget:
            self.exceeded = (len(losses), damage)
            return False
        self.kept = [p.detach().clone() for p in self.params]
        self.kept_step, self.kept_damage = len(losses), damage
        return True

    def settle(self, losses: list[float], measure: Callable[[], float]) -> tuple[list[float], float, Optional[str]]:
        """The loss curve and general-English NLL of the weights to save, and a line to log where the
        budget was passed: then the kept weights are put back (training may also have stopped past
        it between checks, by the loss level or the step cap). Past it at the first look, nothing
        better than an untrained adapter was measured: the weights stay, and the damage check warns."""
        import torch

        step = len(losses)
        if self.exceeded is None:  # the last check measured these very weights, or none did
            nll = self.base_nll + self.kept_damage if self.kept_step == step else measure()
            if nll - self.base_nll <= self.budget:
                return losses, nll, None
            self.exceeded = (step, nll - self.base_nll)
        at, over = self.exceeded
        passed = f"general English {over:+.3f} nats/token at step {at}, past the damage budget {self.budget:g}"
        if not self.kept_step:
            return losses, self.base_nll + over, f"{passed}: no earlier state was measured; lower the learning rate"
        with torch.no_grad():
            for kept, p in zip(self.kept, self.params):
                p.copy_(kept)
        return (losses[: self.kept_step], self.base_nll + self.kept_damage,
                f"{passed}: kept step {self.kept_step} ({self.kept_damage:+.3f})")


def training_warnings(final_loss: float, damage: float) -> list[str]:
    warnings = []
    if final_loss < MEMORISED_LOSS:
        warnings.append(f"the scene is memorised (final loss {final_loss:.3g} < {MEMORISED_LOSS} nats/token): "
                        "lower the learning rate or the steps, or set stop_loss")
    if damage > DAMAGE_NATS:
        warnings.append(f"general English got worse by {damage:+.3f} nats/token (> {DAMAGE_NATS}): the adapter "
                        "changes more than the scene")
    return warnings


def untrained_adapter(base: Base, out: Path, settings: TrainSettings = TrainSettings()) -> Path:
    """A LoRA adapter as peft initialises it: B = 0, so base+adapter must equal the base exactly.
    The null subject of `evalkit calibrate`."""
    from peft import get_peft_model

    config = lora_config(base, settings)
    model = get_peft_model(base.model, config)
    try:
        with atomic_directory(out, [Path(base.path)], kind="adapter") as tmp:
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
