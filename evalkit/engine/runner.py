"""Evaluate a reference and its subjects on one loaded base, and pair their items.

The base is loaded once; each adapter is attached with peft when it is needed, switched to
with `set_adapter` and detached once evaluated; the base reference is `disable_adapter()`. A
checkpoint is a separate model, loaded when its turn comes and released after. What comes out
is one `PairedRun` per subject: items paired by id, not yet tested (that is `decide`'s job).
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Union

from evalkit import __version__
from evalkit.engine.adapters import AttachedAdapters, adapter_manifest, check_adapter_base, check_adapter_weights
from evalkit.engine.base import Base, context_limit, load_base
from evalkit.engine.cache import ScoreCache
from evalkit.engine.evaluation import Counts, Evaluated, check_context, evaluate_model
from evalkit.engine.tasks import generation_hash
from evalkit.errors import EvalkitError
from evalkit.inputs.suites import LoadedSuite
from evalkit.kinds import Choice
from evalkit.record import (
    AdapterManifest,
    CheckpointManifest,
    ItemRecord,
    Manifest,
    ModelRef,
    PairedRun,
    SuiteRef,
    read_manifest,
)
from evalkit.settings import RunSettings
from evalkit.versions import git_commit, now, package_versions

SCORING = (
    "Choice log-likelihoods and greedy generations come from a real lm-eval evaluation "
    "(multiple_choice and generate_until through evalkit's lm-eval model class, lm-eval's HFLM "
    "wrapping the already-loaded model with log-likelihoods scored by shared-prefix packing: each "
    "prompt computed once for all of its options; adapters switched with peft set_adapter, the "
    "base under disable_adapter; or lm-eval's vLLM class with --backend vllm). KL and "
    "NLL along the reference's continuation need full next-token distributions, which lm-eval "
    "does not return: evalkit computes them beside lm-eval on the same loaded model, with "
    "lm-eval's tokenisation of prompt and continuation. Token counts for per-token "
    "normalisation use the same split."
)


@dataclass
class Subject:
    """A model to compare: an adapter on the base, or a checkpoint of its own."""

    kind: Literal["adapter", "checkpoint"]
    path: Path
    name: str
    manifest: Union[AdapterManifest, CheckpointManifest, None] = None


def adapter_subject(path: Path) -> Subject:
    path = path.resolve()
    return Subject("adapter", path, path.name, adapter_manifest(path))


def checkpoint_subject(path: Path) -> Subject:
    path = path.resolve()
    if not (path / "config.json").is_file():
        raise EvalkitError("not a Hugging Face model folder (no config.json)", where=str(path))
    return Subject("checkpoint", path, path.name, read_manifest(path))


def _adapter_fingerprint(path: Path, base_fingerprint: str) -> str:
    h = hashlib.sha256(base_fingerprint.encode())
    for f in sorted([*path.glob("adapter_model.*"), path / "adapter_config.json"]):
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


# The parts of a trained model's manifest a run record carries, in this order.
TRAINING_FIELDS = ("lora", "training", "model", "final_loss", "created", "key")


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
    )


def pair_items(suites: list[LoadedSuite], ref: Evaluated, sub: Evaluated) -> list[ItemRecord]:
    """Pair reference and subject by (suite, item id); every item is on both sides."""
    records = []
    for s in suites:
        # Every item as a Choice; generated items without references have no options.
        generation = s.spec.generation()
        shapes = {i.id: Choice(i.id, i.cluster, i.prompt, ()) for i in (generation.items if generation else [])}
        shapes.update({c.id: c for c in s.spec.choices()})
        for item_id in s.item_ids():
            c = shapes[item_id]
            records.append(ItemRecord(
                suite=s.name, kind=s.spec.kind, item_id=item_id, cluster=c.cluster, prompt=c.prompt,
                options=list(c.options),
                reference=ref.scores[s.name][item_id], subject=sub.scores[s.name][item_id],
            ))
    return records


def check_inputs(base: Base, suites: list[LoadedSuite], adapters: list[Subject]) -> None:
    """Before any scoring: every prompt fits the base's context, every adapter was trained on it
    and its weights are readable."""
    check_context(suites, base.tokenizer, context_limit(base.model, base.tokenizer))
    for a in adapters:
        assert isinstance(a.manifest, AdapterManifest)  # adapter_subject requires one
        check_adapter_base(a.path, a.manifest, base)
        check_adapter_weights(a.path)


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
                                       else _adapter_fingerprint(subject.path, self.base.fingerprint))
        return self._fingerprints[key]

    def _needs_generation(self, fingerprint: str) -> bool:
        cache = self._cache(fingerprint)
        generations = [g for g in (s.spec.generation() for s in self.suites) if g is not None]
        return any(cache is None or cache.get(generation_hash(g, item)) is None
                   for g in generations for item in g.items)

    def close(self) -> None:
        if self.model is not self.base.model:
            self.base.model = self.model.unload()
            self.model = self.base.model

    def _cache(self, fingerprint: str) -> ScoreCache | None:
        """One cache object per model for the run: read from disk once, shared by plan and evaluate."""
        if not self.use_cache:
            return None
        if fingerprint not in self._caches:
            self._caches[fingerprint] = ScoreCache(fingerprint, self.settings.decoding())
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
            evaluated = evaluate_model(ckpt.model, ckpt.tokenizer, lm, suites, cache=self._cache(fp), **kwargs)
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
        return evaluated, fp, counts

    def evaluate_subjects(self, subjects: list[Subject],
                          reference: tuple[Evaluated, str]) -> Iterator[tuple[Evaluated, str, Counts]]:
        """(evaluated, fingerprint, counts) per subject, in order, as each is done."""
        for subject in subjects:
            yield self.evaluate(subject, reference)


def evaluate_paired(base: Base, subjects: list[Subject], suites: list[LoadedSuite], settings: RunSettings,
                    reference: Optional[Subject] = None, log: Callable[[str], None] = print,
                    use_cache: bool = True) -> list[PairedRun]:
    """Evaluate the reference once, then each subject against it; one PairedRun per subject."""
    adapters = [s for s in [reference, *subjects] if s is not None and s.kind == "adapter"]
    unique = list({a.path: a for a in adapters}.values())
    runner: Any
    if settings.executor == "ray":
        from evalkit.engine.ray_executor import RayRunner

        runner = RayRunner(base, suites, settings, unique, use_cache=use_cache, log=log)
    else:
        runner = Runner(base, suites, settings, unique, use_cache=use_cache)
    try:
        runner.plan([reference, *subjects])
        ref_evaluated, ref_fp, counts = runner.evaluate(reference)
        ref_name = reference.name if reference else "base"
        log(f"reference ({ref_name}): {counts.line()}")
        ref_model = model_ref(reference, base, ref_fp)
        runs = []
        pairs = zip(subjects, runner.evaluate_subjects(subjects, (ref_evaluated, ref_fp)))
        for subject, (evaluated, fp, sub_counts) in pairs:
            log(f"subject {subject.name}: {sub_counts.line()}")
            runs.append(paired_run(subject.name, ref_model, model_ref(subject, base, fp), suites, ref_evaluated,
                                   evaluated, settings, {"reference_computed": counts.computed,
                                                         "reference_cached": counts.cached,
                                                         "subject_computed": sub_counts.computed,
                                                         "subject_cached": sub_counts.cached}))
    finally:
        runner.close()
    return runs


def paired_run(run_id: str, reference: ModelRef, subject: ModelRef, suites: list[LoadedSuite], ref: Evaluated,
               sub: Evaluated, settings: RunSettings, requests: dict[str, int]) -> PairedRun:
    """The subject's items paired with the reference's, with the manifest of how they were made."""
    seed = settings.stats.seed
    seeds = {"lm_eval": seed, "bootstrap": seed}
    if subject.training and isinstance(subject.training.get("training"), dict):
        seeds["training"] = subject.training["training"].get("seed", 0)
    return PairedRun(
        run_id=run_id,
        manifest=Manifest(
            evalkit_version=__version__, git_commit=git_commit(Path(__file__).parent), created=now(),
            packages=package_versions(), seeds=seeds, decoding=settings.decoding(), scoring=SCORING,
            suites=[SuiteRef(name=s.name, kind=s.spec.kind, path=s.path, hash=s.hash, n_items=len(s.item_ids()),
                             normalization=s.spec.normalization) for s in suites],
            requests=requests,
        ),
        reference=reference, subject=subject, items=pair_items(suites, ref, sub),
    )
