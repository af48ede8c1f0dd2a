"""Run probe suites on a reference and on subjects with one loaded base; pair and test them."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from evalkit import __version__
from evalkit.cache import ScoreCache
from evalkit.errors import EvalkitError
from evalkit.models import Base, attach_adapters, check_adapter_base, read_manifest
from evalkit.probe import LoadedSuite
from evalkit.record import ItemRecord, Manifest, ModelRef, RunRecord, StatsRef, SuiteRef
from evalkit.effects import suite_effects
from evalkit.stats import StatsSettings
from evalkit.tasks import item_hash, scores_from_samples, task_config, task_name
from evalkit.versions import git_commit, now, package_versions

SCORING = (
    "Log-likelihoods of every option come from a real lm-eval evaluation (multiple_choice "
    "requests through lm-eval's HFLM wrapping the already-loaded model, peft adapter switched "
    "with set_adapter, reference under disable_adapter). Token counts for per-token "
    "normalisation use the model's tokenizer with lm-eval's own context/continuation split."
)

ItemScores = dict[str, dict[str, dict[str, Any]]]  # suite -> item id -> scores


@dataclass
class RunSettings:
    batch_size: int = 16
    dtype: str = "float32"
    stats: StatsSettings = field(default_factory=StatsSettings)

    def decoding(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "batch_size": self.batch_size, "engine": "lm-eval HFLM"}


@dataclass
class Counter:
    computed: int = 0
    cached: int = 0


def _quiet_libraries() -> None:
    for name in ("lm-eval", "lm_eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def lm_eval_scores(model, tokenizer, suites: list[LoadedSuite], todo: dict[str, list], settings: RunSettings) -> ItemScores:
    """One lm-eval evaluation over the given items of each suite; per-item scores back."""
    import datasets
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    datasets.disable_progress_bars()
    configs = [task_config(s.spec, todo[s.spec.suite]) for s in suites if todo.get(s.spec.suite)]
    if not configs:
        return {}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
    result = lm_eval.simple_evaluate(
        model=lm, tasks=configs, task_manager=TaskManager(include_defaults=False),
        bootstrap_iters=0, log_samples=True, verbosity="ERROR",
        random_seed=settings.stats.seed, numpy_random_seed=settings.stats.seed,
        torch_random_seed=settings.stats.seed, fewshot_random_seed=settings.stats.seed,
    )
    out: ItemScores = {}
    for s in suites:
        if todo.get(s.spec.suite):
            out[s.spec.suite] = scores_from_samples(s, result["samples"][task_name(s.spec)], tokenizer)
    return out


def score_model(model, tokenizer, suites: list[LoadedSuite], settings: RunSettings,
                cache: ScoreCache | None, counter: Counter) -> ItemScores:
    """Scores of every item; items already in `cache` are not recomputed."""
    todo: dict[str, list] = {}
    scores: ItemScores = {s.spec.suite: {} for s in suites}
    for s in suites:
        for item in s.spec.items:
            hit = cache.get(item_hash(s.spec, item)) if cache else None
            if hit is not None:
                scores[s.spec.suite][item.id] = hit
                counter.cached += len(item.options)
            else:
                todo.setdefault(s.spec.suite, []).append(item)
                counter.computed += len(item.options)
    fresh = lm_eval_scores(model, tokenizer, suites, todo, settings)
    for s in suites:
        new = fresh.get(s.spec.suite, {})
        scores[s.spec.suite].update(new)
        if cache is not None:
            cache.put_many({item_hash(s.spec, i): new[i.id] for i in todo.get(s.spec.suite, [])})
    return scores


def _adapter_fingerprint(path: Path, base_fingerprint: str) -> str:
    import hashlib

    h = hashlib.sha256(base_fingerprint.encode())
    for f in sorted(path.glob("adapter_model.*")):
        h.update(f.read_bytes())
    return h.hexdigest()


def _base_ref(base: Base) -> ModelRef:
    return ModelRef(kind="base", name="base", path=base.path, fingerprint=base.fingerprint)


def _adapter_ref(path: Path, manifest: dict[str, Any], base: Base) -> ModelRef:
    scenes = manifest.get("scenes", [])
    body = None
    if len(scenes) == 1 and scenes[0].get("path") and Path(scenes[0]["path"]).is_file():
        from evalkit.scene import load_scene

        try:
            body = load_scene(Path(scenes[0]["path"])).body
        except EvalkitError:
            body = None
    return ModelRef(
        kind="adapter", name=path.name, path=str(path), fingerprint=_adapter_fingerprint(path, base.fingerprint),
        base_fingerprint=base.fingerprint, scene_ids=[s["id"] for s in scenes],
        scene_title=" + ".join(s.get("title", s["id"]) for s in scenes) or None,
        scene_excerpt=(body[:600] + ("…" if len(body) > 600 else "")) if body else None,
        training={k: manifest.get(k) for k in ("lora", "training", "final_loss", "created", "key")},
    )


def pair_items(suites: list[LoadedSuite], ref: ItemScores, sub: ItemScores) -> list[ItemRecord]:
    """Pair reference and subject by (suite, item id); every item must be on both sides."""
    records = []
    for s in suites:
        for item in s.spec.items:
            records.append(ItemRecord(
                suite=s.spec.suite, kind=s.spec.kind, item_id=item.id, cluster=item.cluster,
                prompt=item.prompt, options=list(item.options),
                reference=ref[s.spec.suite][item.id], subject=sub[s.spec.suite][item.id],
            ))
    return records


def run_adapters(base: Base, adapter_dirs: list[Path], suites: list[LoadedSuite], settings: RunSettings,
                 run_prefix: str = "", log: Callable[[str], None] = print, use_cache: bool = True) -> list[RunRecord]:
    """Score the base (cached) and every adapter on one loaded model; one RunRecord per adapter."""
    _quiet_libraries()
    manifests = {}
    for path in adapter_dirs:
        manifest = read_manifest(path)
        check_adapter_base(path, manifest, base)
        manifests[path] = manifest
    names = _unique_names(adapter_dirs)
    model = attach_adapters(base, dict(zip(names, adapter_dirs)))

    ref_counter = Counter()
    cache = ScoreCache(base.fingerprint, settings.decoding()) if use_cache else None
    with model.disable_adapter():
        reference = score_model(model, base.tokenizer, suites, settings, cache, ref_counter)
    log(f"reference (base): {ref_counter.computed} requests computed, {ref_counter.cached} from cache")

    records = []
    try:
        for name, path in zip(names, adapter_dirs):
            model.set_adapter(name)
            counter = Counter()
            subject = score_model(model, base.tokenizer, suites, settings, None, counter)
            log(f"subject {name}: {counter.computed} requests computed")
            records.append(_record(
                run_prefix + name, base, _base_ref(base), _adapter_ref(path, manifests[path], base),
                suites, reference, subject, settings, {"reference_computed": ref_counter.computed,
                                                       "reference_cached": ref_counter.cached,
                                                       "subject_computed": counter.computed},
            ))
    finally:
        base.model = model.unload()
    return records


def _unique_names(paths: list[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        name = p.name.replace(".", "_") or "adapter"
        while name in names:
            name += "_"
        names.append(name)
    return names


def _record(run_id: str, base: Base, reference: ModelRef, subject: ModelRef, suites: list[LoadedSuite],
            ref: ItemScores, sub: ItemScores, settings: RunSettings, requests: dict[str, int]) -> RunRecord:
    items = pair_items(suites, ref, sub)
    st = settings.stats
    return RunRecord(
        run_id=run_id,
        manifest=Manifest(
            evalkit_version=__version__, git_commit=git_commit(Path(__file__).parent), created=now(),
            packages=package_versions(),
            seeds={"lm_eval": st.seed, "bootstrap": st.seed,
                   **({"adapter_training": subject.training["training"]["seed"]}
                      if subject.training and subject.training.get("training") else {})},
            decoding=settings.decoding(), scoring=SCORING,
            suites=[SuiteRef(name=s.spec.suite, kind=s.spec.kind, path=s.path, hash=s.hash,
                             n_items=len(s.spec.items), normalization=s.spec.normalization) for s in suites],
            requests=requests,
        ),
        reference=reference, subject=subject,
        stats=StatsRef(alpha=st.alpha, test=st.test, resamples=st.resamples, seed=st.seed, power=st.power),
        items=items, effects=suite_effects(items, st),
    )
