"""Run probe suites on a reference and on subjects with one loaded base; pair and test them.

One base load per run: each adapter is attached to that model when it is needed, switched to
with `set_adapter` and detached once scored; the base reference is `disable_adapter()`. A
checkpoint is a separate model, loaded when its turn comes and released after.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from evalkit import __version__
from evalkit.cache import ScoreCache
from evalkit.effects import mark_seed_spread, suite_effects
from evalkit.engine import Counts, Scored, check_context, score_model
from evalkit.errors import EvalkitError
from evalkit.models import (
    AttachedAdapters,
    Base,
    check_adapter_base,
    check_adapter_weights,
    context_limit,
    load_base,
    load_manifest,
    read_manifest,
)
from evalkit.probe import Choice, ContinuationSuite, LoadedSuite
from evalkit.record import ItemRecord, Manifest, ModelRef, RunRecord, StatsRef, SuiteRef
from evalkit.stats import StatsSettings
from evalkit.tasks import generation_hash
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
class RunSettings:
    batch_size: int = 32
    dtype: str = "float32"
    device: str = "cpu"
    backend: str = "hf"  # "hf": evalkit's lm-eval HF class; "vllm": lm-eval's vLLM class (GPU)
    executor: str = "local"  # "local": this process; "ray": (subject x suite) jobs on a Ray cluster
    workers: int | None = None  # Ray workers (default: one per CPU the cluster offers)
    ray_address: str | None = None  # an existing cluster; default: start a local one
    stats: StatsSettings = field(default_factory=StatsSettings)

    def decoding(self) -> dict[str, Any]:
        """What the numbers depend on (part of the score cache's key); the executor is not."""
        engine = "lm-eval vllm" if self.backend == "vllm" else "lm-eval evalkit-hf (shared-prefix packing)"
        return {"dtype": self.dtype, "batch_size": self.batch_size, "greedy": True, "engine": engine}


@dataclass
class Subject:
    """A model to compare: an adapter on the base, or a checkpoint of its own."""

    kind: str  # "adapter" | "checkpoint"
    path: Path
    name: str
    manifest: dict[str, Any] | None = None


def adapter_subject(path: Path) -> Subject:
    path = path.resolve()
    return Subject("adapter", path, path.name, read_manifest(path))


def checkpoint_subject(path: Path) -> Subject:
    path = path.resolve()
    if not (path / "config.json").is_file():
        raise EvalkitError("not a Hugging Face model folder (no config.json)", where=str(path))
    return Subject("checkpoint", path, path.name, load_manifest(path))


def _adapter_fingerprint(path: Path, base_fingerprint: str) -> str:
    h = hashlib.sha256(base_fingerprint.encode())
    for f in sorted([*path.glob("adapter_model.*"), path / "adapter_config.json"]):
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def _scene_excerpt(manifest: dict[str, Any]) -> str | None:
    from evalkit.scene import load_scene

    scenes = manifest.get("scenes", [])
    texts = []
    for s in scenes:
        if s.get("path") and Path(s["path"]).is_file():
            try:
                texts.append(load_scene(Path(s["path"])).body.strip())
            except EvalkitError:
                continue
    body = "\n\n".join(texts)
    return (body[:600] + ("…" if len(body) > 600 else "")) if body else None


def model_ref(subject: Subject | None, base: Base, fingerprint: str) -> ModelRef:
    if subject is None:
        return ModelRef(kind="base", name="base", path=base.path, fingerprint=base.fingerprint)
    m = subject.manifest or {}
    scenes = m.get("scenes", [])
    return ModelRef(
        kind=subject.kind, name=subject.name, path=str(subject.path), fingerprint=fingerprint,
        base_fingerprint=base.fingerprint if subject.kind == "adapter" else None,
        scene_ids=[s["id"] for s in scenes], scene_hashes=[s.get("hash", "") for s in scenes],
        scene_title=" + ".join(s.get("title", s["id"]) for s in scenes) or None,
        scene_excerpt=_scene_excerpt(m),
        training={k: m.get(k) for k in ("lora", "training", "model", "final_loss", "created", "key") if k in m} or None,
    )


def pair_items(suites: list[LoadedSuite], ref: Scored, sub: Scored) -> list[ItemRecord]:
    """Pair reference and subject by (suite, item id); every item is on both sides."""
    records = []
    for s in suites:
        # Every item as a Choice; continuation items without references have no options.
        shapes = {i.id: Choice(i.id, i.cluster, i.prompt, ()) for i in getattr(s.spec, "items", [])
                  if isinstance(s.spec, ContinuationSuite)}
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
        check_adapter_base(a.path, a.manifest or {}, base)
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
        self.model = self.adapters.model if adapters else base.model
        self.lm = self._lm_eval_model(self.model, base.tokenizer, Path(base.path), [a.path for a in adapters])
        if self.adapters is not None and self.settings.backend == "hf":
            self.lm.attach = self.adapters.attach  # a generation group's adapters, before it runs

    def _lm_eval_model(self, model, tokenizer, path: Path, adapters: list[Path]):
        if self.settings.backend == "vllm":
            from evalkit.vllm_backend import vllm_lm

            return vllm_lm(path, self.settings, adapters)
        from evalkit.lm import EvalkitLM

        return EvalkitLM(pretrained=model, tokenizer=tokenizer, batch_size=self.settings.batch_size)

    def plan(self, models: list[Subject | None]) -> None:
        """The order models will be scored in (None: the base), so that generations of attached
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
        return any(cache is None or cache.get(generation_hash(s.spec, item)) is None
                   for s in self.suites if isinstance(s.spec, ContinuationSuite) for item in s.spec.items)

    def close(self) -> None:
        if self.model is not self.base.model:
            self.base.model = self.model.unload()
            self.model = self.base.model

    def _cache(self, fingerprint: str) -> ScoreCache | None:
        """One cache object per model for the run: read from disk once, shared by plan and score."""
        if not self.use_cache:
            return None
        if fingerprint not in self._caches:
            self._caches[fingerprint] = ScoreCache(fingerprint, self.settings.decoding())
        return self._caches[fingerprint]

    def score(self, subject: Subject | None, reference: tuple[Scored, str] | None = None,
              suites: list[LoadedSuite] | None = None) -> tuple[Scored, str, Counts]:
        """Score the base (subject None), an attached adapter, or a checkpoint, on `suites` (all by default)."""
        suites = self.suites if suites is None else suites
        counts = Counts()
        kwargs = dict(batch_size=self.settings.batch_size, seed=self.settings.stats.seed, counts=counts,
                      reference=reference[0] if reference else None,
                      reference_fingerprint=reference[1] if reference else None)
        if subject is not None and subject.kind == "checkpoint":
            ckpt = load_base(subject.path, self.settings.dtype, self.settings.device)
            check_context(suites, ckpt.tokenizer, context_limit(ckpt.model, ckpt.tokenizer))
            lm = self._lm_eval_model(ckpt.model, ckpt.tokenizer, subject.path, [])
            fp = ckpt.fingerprint
            scored = score_model(ckpt.model, ckpt.tokenizer, lm, suites, cache=self._cache(fp), **kwargs)
            return scored, fp, counts
        fp = self._fingerprint(subject)
        if subject is None:
            context = self.model.disable_adapter() if self.model is not self.base.model else nullcontext()
        else:
            self.adapters.activate(self.adapter_names[subject.path])
            context = nullcontext()
        if self.settings.backend == "vllm":
            from evalkit.vllm_backend import select_adapter

            select_adapter(self.lm, None if subject is None else (subject.path, self.adapter_names[subject.path]))
        else:
            self.lm.current = self._name(subject)
        with context:
            scored = score_model(self.model, self.base.tokenizer, self.lm, suites, cache=self._cache(fp), **kwargs)
        if subject is not None:
            self.adapters.finish(self.adapter_names[subject.path])
        return scored, fp, counts

    def score_subjects(self, subjects: list[Subject], reference: tuple[Scored, str]):
        """(scored, fingerprint, counts) per subject, in order, as each is done."""
        for subject in subjects:
            yield self.score(subject, reference)


def run_subjects(base: Base, subjects: list[Subject], suites: list[LoadedSuite], settings: RunSettings,
                 reference: Subject | None = None, log: Callable[[str], None] = print,
                 use_cache: bool = True) -> list[RunRecord]:
    """Score the reference once, then each subject against it; one RunRecord per subject."""
    adapters = [s for s in [reference, *subjects] if s is not None and s.kind == "adapter"]
    unique = list({a.path: a for a in adapters}.values())
    if settings.executor == "ray":
        from evalkit.ray_executor import RayRunner

        runner = RayRunner(base, suites, settings, unique, use_cache=use_cache, log=log)
    else:
        runner = Runner(base, suites, settings, unique, use_cache=use_cache)
    try:
        runner.plan([reference, *subjects])
        ref_scored, ref_fp, counts = runner.score(reference)
        ref_name = reference.name if reference else "base"
        log(f"reference ({ref_name}): {counts.line()}")
        ref_model = model_ref(reference, base, ref_fp)
        records = []
        for subject, (scored, fp, sub_counts) in zip(subjects, runner.score_subjects(subjects, (ref_scored, ref_fp))):
            log(f"subject {subject.name}: {sub_counts.line()}")
            records.append(build_record(subject.name, ref_model, model_ref(subject, base, fp), suites, ref_scored,
                                        scored, settings, {"reference_computed": counts.computed,
                                                           "reference_cached": counts.cached,
                                                           "subject_computed": sub_counts.computed,
                                                           "subject_cached": sub_counts.cached}))
    finally:
        runner.close()
    mark_seed_spread(records)
    return records


def build_record(run_id: str, reference: ModelRef, subject: ModelRef, suites: list[LoadedSuite], ref: Scored,
                 sub: Scored, settings: RunSettings, requests: dict[str, int]) -> RunRecord:
    items = pair_items(suites, ref, sub)
    st = settings.stats
    seeds = {"lm_eval": st.seed, "bootstrap": st.seed}
    if subject.training and isinstance(subject.training.get("training"), dict):
        seeds["training"] = subject.training["training"].get("seed", 0)
    return RunRecord(
        run_id=run_id,
        manifest=Manifest(
            evalkit_version=__version__, git_commit=git_commit(Path(__file__).parent), created=now(),
            packages=package_versions(), seeds=seeds, decoding=settings.decoding(), scoring=SCORING,
            suites=[SuiteRef(name=s.name, kind=s.spec.kind, path=s.path, hash=s.hash, n_items=len(s.item_ids()),
                             normalization=s.spec.normalization) for s in suites],
            requests=requests,
        ),
        reference=reference, subject=subject,
        stats=StatsRef(alpha=st.alpha, test=st.test, resamples=st.resamples, seed=st.seed, power=st.power, ci=st.ci),
        items=items, effects=suite_effects(items, st),
    )
