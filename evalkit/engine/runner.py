"""The models of a run on one loaded base: subjects, their references in records, and the
`Runner` that evaluates them.

The base is loaded once; each adapter is attached with peft when it is needed, switched to
with `set_adapter` and detached once evaluated; the base reference is `disable_adapter()`. A
checkpoint is a separate model, loaded when its turn comes and released after.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Union

from evalkit.engine.adapters import (
    UNVERIFIED,
    AttachedAdapters,
    adapter_manifest,
    check_adapter_base,
    check_adapter_weights,
)
from evalkit.engine.base import Base, context_limit, load_base
from evalkit.engine.cache import ScoreCache
from evalkit.engine.evaluation import Counts, Evaluated, check_context, evaluate_model
from evalkit.engine.identity import tokenizer_key
from evalkit.engine.tasks import generation_hash
from evalkit.errors import EvalkitError
from evalkit.inputs.suites import LoadedSuite
from evalkit.record import (
    AdapterManifest,
    CheckpointManifest,
    ModelRef,
    read_manifest,
)
from evalkit.settings import RunSettings


@dataclass
class Subject:
    """A model to compare: an adapter on the base, or a checkpoint of its own."""

    kind: Literal["adapter", "checkpoint"]
    path: Path
    name: str
    manifest: Union[AdapterManifest, CheckpointManifest, None] = None


def adapter_subject(path: Path, trained_elsewhere: bool = False) -> Subject:
    """An adapter folder; with `trained_elsewhere` (its base named by the user) a plain peft folder
    without an evalkit manifest is accepted."""
    path = path.resolve()
    return Subject("adapter", path, path.name, adapter_manifest(path, trained_elsewhere))


def checkpoint_subject(path: Path) -> Subject:
    path = path.resolve()
    if not (path / "config.json").is_file():
        raise EvalkitError("not a Hugging Face model folder (no config.json)", where=str(path))
    return Subject("checkpoint", path, path.name, read_manifest(path))


def base_of(adapters: list[Subject]) -> Path:
    """The base named by the adapters' manifests (they must agree)."""
    paths = {a.manifest.base.path for a in adapters if isinstance(a.manifest, AdapterManifest)}
    if len(paths) != 1:
        raise EvalkitError("the adapters name different bases; pass --base")
    return Path(paths.pop())


def adapter_fingerprint(path: Path, base_fingerprint: str) -> str:
    h = hashlib.sha256(base_fingerprint.encode())
    for f in sorted([*path.glob("adapter_model.*"), path / "adapter_config.json"]):
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


# The parts of a trained model's manifest a run record carries, in this order.
TRAINING_FIELDS = ("lora", "training", "model", "final_loss", "created", "key", "damage", "warnings")


def _scene_excerpt(manifest: Union[AdapterManifest, CheckpointManifest]) -> str | None:
    from evalkit.inputs.scenes import load_scene

    texts = []
    for s in manifest.scenes:
        if s.path and Path(s.path).is_file():
            try:
                texts.append(load_scene(Path(s.path)).body.strip())
            except EvalkitError:
                continue
    body = "\n\n".join(texts)
    return (body[:600] + ("…" if len(body) > 600 else "")) if body else None


def model_ref(subject: Subject | None, base: Base, fingerprint: str) -> ModelRef:
    if subject is None:
        return ModelRef(kind="base", name="base", path=base.path, fingerprint=base.fingerprint)
    m = subject.manifest
    dumped = m.model_dump(mode="json", exclude_none=True) if m is not None else {}
    scenes = m.scenes if m is not None else []
    return ModelRef(
        kind=subject.kind, name=subject.name, path=str(subject.path), fingerprint=fingerprint,
        base_fingerprint=base.fingerprint if subject.kind == "adapter" else None,
        scene_ids=[s.id for s in scenes], scene_hashes=[s.hash for s in scenes],
        scene_title=" + ".join(s.title for s in scenes) or None,
        scene_excerpt=_scene_excerpt(m) if m is not None else None,
        training={k: dumped[k] for k in TRAINING_FIELDS if k in dumped} or None,
        unverified=UNVERIFIED if subject.kind == "adapter" and m is None else None,
    )


def check_inputs(base: Base, suites: list[LoadedSuite], adapters: list[Subject]) -> None:
    """Before any scoring: every prompt fits the base's context, every adapter was trained on it
    and its weights are readable."""
    check_context(suites, base.tokenizer, context_limit(base.model, base.tokenizer))
    for a in adapters:
        if isinstance(a.manifest, AdapterManifest):
            check_adapter_base(a.path, a.manifest, base)
        check_adapter_weights(a.path, base.model)


def check_finite(evaluated: Evaluated, path: Path) -> None:
    """A model whose outputs overflow (weights of 1e38, a broken checkpoint) is named, not tested."""
    for suite, items in evaluated.scores.items():
        for item_id, scores in items.items():
            for name, value in scores.items():
                odd = [v for v in (value if isinstance(value, list) else [value])
                       if isinstance(v, float) and not math.isfinite(v)]
                if odd:
                    raise EvalkitError(f"its outputs are not finite numbers ('{name}' of {suite}/{item_id} is "
                                       f"{odd[0]})", where=str(path))


class Runner:
    """Holds the one loaded base for a run (with the adapters it is working on attached), and
    the lm-eval model that serves it."""

    def __init__(self, base: Base, suites: list[LoadedSuite], settings: RunSettings, adapters: list[Subject],
                 use_cache: bool = True):
        self.base, self.suites, self.settings, self.use_cache = base, suites, settings, use_cache
        check_inputs(base, suites, adapters)
        self._caches: dict[str, ScoreCache] = {}
        self._fingerprints: dict[Path | None, str] = {}
        self.adapter_names = {a.path: f"a{k}" for k, a in enumerate(adapters)}
        self.adapters = AttachedAdapters(base, {n: p for p, n in self.adapter_names.items()}) if adapters else None
        self.model = self.adapters.model if self.adapters is not None else base.model
        self.lm = self._lm_eval_model(self.model, base.tokenizer, Path(base.path), [a.path for a in adapters])
        if self.adapters is not None and self.settings.backend == "hf":
            self.lm.attach = self.adapters.attach  # a generation group's adapters, before it runs

    def _lm_eval_model(self, model, tokenizer, path: Path, adapters: list[Path]):
        if self.settings.backend == "vllm":
            from evalkit.engine.vllm_backend import vllm_lm

            return vllm_lm(path, self.settings, adapters)
        from evalkit.engine.lm import EvalkitLM

        return EvalkitLM(pretrained=model, tokenizer=tokenizer, batch_size=self.settings.batch_size)

    def plan(self, models: list[Subject | None]) -> None:
        """The order models will be evaluated in (None: the base), so that generations of attached
        adapters not yet in the cache are computed together (`EvalkitLM.schedule`)."""
        if self.settings.backend != "hf":
            return
        self.lm.schedule = [self._name(m) for m in models if (m is None or m.kind == "adapter")
                            and self._needs_generation(self._fingerprint(m))]

    def _name(self, subject: Subject | None) -> str | None:
        return None if subject is None else self.adapter_names[subject.path]

    def _fingerprint(self, subject: Subject | None) -> str:
        key = None if subject is None else subject.path
        if key not in self._fingerprints:
            self._fingerprints[key] = (self.base.fingerprint if subject is None
                                       else adapter_fingerprint(subject.path, self.base.fingerprint))
        return self._fingerprints[key]

    def _needs_generation(self, fingerprint: str) -> bool:
        cache = self._cache(fingerprint)
        generations = [(g, s.spec.chat) for g, s in ((s.spec.generation(), s) for s in self.suites) if g is not None]
        return any(cache is None or cache.get(generation_hash(g, item, chat)) is None
                   for g, chat in generations for item in g.items)

    def close(self) -> None:
        if self.model is not self.base.model:
            self.base.model = self.model.unload()
            self.model = self.base.model

    def _cache(self, fingerprint: str, tokenizer: Any = None) -> ScoreCache | None:
        """One cache object per model for the run: read from disk once, shared by plan and evaluate.
        Keyed by the weights, the decoding settings and the tokenizer (its chat template included)."""
        if not self.use_cache:
            return None
        if fingerprint not in self._caches:
            key = tokenizer_key(tokenizer if tokenizer is not None else self.base.tokenizer)
            self._caches[fingerprint] = ScoreCache(fingerprint, {**self.settings.decoding(), "tokenizer": key})
        return self._caches[fingerprint]

    def evaluate(self, subject: Subject | None, reference: tuple[Evaluated, str] | None = None,
                 suites: list[LoadedSuite] | None = None) -> tuple[Evaluated, str, Counts]:
        """Evaluate the base (subject None), an attached adapter, or a checkpoint, on `suites` (all by default)."""
        suites = self.suites if suites is None else suites
        counts = Counts()
        kwargs: dict[str, Any] = dict(batch_size=self.settings.batch_size, seed=self.settings.stats.seed,
                                      counts=counts, reference=reference[0] if reference else None,
                                      reference_fingerprint=reference[1] if reference else None)
        if subject is not None and subject.kind == "checkpoint":
            ckpt = load_base(subject.path, self.settings.dtype, self.settings.device)
            check_context(suites, ckpt.tokenizer, context_limit(ckpt.model, ckpt.tokenizer))
            lm = self._lm_eval_model(ckpt.model, ckpt.tokenizer, subject.path, [])
            fp = ckpt.fingerprint
            evaluated = evaluate_model(ckpt.model, ckpt.tokenizer, lm, suites, cache=self._cache(fp, ckpt.tokenizer),
                                       **kwargs)
            check_finite(evaluated, subject.path)
            return evaluated, fp, counts
        fp = self._fingerprint(subject)
        if subject is None:
            context = self.model.disable_adapter() if self.model is not self.base.model else nullcontext()
        else:
            assert self.adapters is not None, "adapter subjects are attached to the run's base"
            self.adapters.activate(self.adapter_names[subject.path])
            context = nullcontext()
        if self.settings.backend == "vllm":
            from evalkit.engine.vllm_backend import select_adapter

            select_adapter(self.lm, None if subject is None else (subject.path, self.adapter_names[subject.path]))
        else:
            self.lm.current = self._name(subject)
        with context:
            evaluated = evaluate_model(self.model, self.base.tokenizer, self.lm, suites, cache=self._cache(fp),
                                       **kwargs)
        if subject is not None and self.adapters is not None:
            self.adapters.finish(self.adapter_names[subject.path])
        check_finite(evaluated, subject.path if subject is not None else Path(self.base.path))
        return evaluated, fp, counts

    def evaluate_subjects(self, subjects: list[Subject],
                          reference: tuple[Evaluated, str]) -> Iterator[tuple[Evaluated, str, Counts]]:
        """(evaluated, fingerprint, counts) per subject, in order, as each is done."""
        for subject in subjects:
            yield self.evaluate(subject, reference)
