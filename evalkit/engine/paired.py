"""Evaluate a reference and its subjects, and pair their items: one `PairedRun` per subject,
items paired by id, not yet tested (that is `decide`'s job). The executor is chosen here: the
local `Runner`, or Ray actors that each hold one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from evalkit.engine.base import Base
from evalkit.engine.evaluation import Evaluated
from evalkit.engine.runner import Runner, Subject, model_ref
from evalkit.inputs.suites import LoadedSuite
from evalkit.record import ItemRecord, Manifest, ModelRef, PairedRun, SuiteRef
from evalkit.settings import RunSettings
from evalkit.versions import __version__, git_commit, now, package_versions

SCORING = (
    "Choice log-likelihoods and greedy generations come from a real lm-eval evaluation "
    "(multiple_choice and generate_until through evalkit's lm-eval model class, lm-eval's HFLM "
    "wrapping the already-loaded model with log-likelihoods scored by shared-prefix packing: each "
    "prompt computed once for all of its options, where a float32 check on the model found packed "
    "scores equal to each request scored as its own sequence (else lm-eval's unpacked path); generations in batches "
    "of left-padded prompts, or one prompt at a time for a model whose outputs left padding changes; "
    "adapters switched with peft set_adapter, the "
    "base under disable_adapter; or lm-eval's vLLM class with --backend vllm; chat suites with "
    "lm-eval's apply_chat_template). KL and NLL along the reference's continuation need full "
    "next-token distributions, which lm-eval does not return: evalkit computes them beside lm-eval "
    "on the same loaded model, along the token ids generate() produced for the reference (the "
    "prompt's ids as generation saw them; the generated ids that make up lm-eval's stop-cut text). "
    "Token counts for per-token normalisation use lm-eval's split of prompt and continuation."
)


def pair_items(suites: list[LoadedSuite], ref: Evaluated, sub: Evaluated) -> list[ItemRecord]:
    """Pair reference and subject by (suite, item id); every item is on both sides."""
    records = []
    for s in suites:
        for item_id, c in s.questions().items():
            records.append(ItemRecord(
                suite=s.name, kind=s.spec.kind, item_id=item_id, cluster=c.cluster, prompt=c.prompt,
                options=list(c.options),
                reference=ref.scores[s.name][item_id], subject=sub.scores[s.name][item_id],
            ))
    return records


def evaluate_paired(base: Base, subjects: list[Subject], suites: list[LoadedSuite], settings: RunSettings,
                    reference: Optional[Subject] = None, log: Callable[[str], None] = print,
                    use_cache: bool = True, on_done: Optional[Callable[[], None]] = None) -> list[PairedRun]:
    """Evaluate the reference once, then each subject against it; one PairedRun per subject.
    `on_done` is called after each model (the reference first)."""
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
        if on_done is not None:
            on_done()
        ref_model = model_ref(reference, base, ref_fp)
        runs = []
        pairs = zip(subjects, runner.evaluate_subjects(subjects, (ref_evaluated, ref_fp)))
        for subject, (evaluated, fp, sub_counts) in pairs:
            log(f"subject {subject.name}: {sub_counts.line()}")
            if on_done is not None:
                on_done()
            runs.append(paired_run(subject.name, ref_model, model_ref(subject, base, fp), suites, ref_evaluated,
                                   evaluated, settings, {"reference_computed": counts.computed,
                                                         "reference_cached": counts.cached,
                                                         "subject_computed": sub_counts.computed,
                                                         "subject_cached": sub_counts.cached}))
    finally:
        runner.close()
    return runs


def _decoding(settings: RunSettings, ref: Evaluated, sub: Evaluated) -> dict:
    """The settings, and how each side was scored and generated here (packing and batching are
    decided per kind of model)."""
    said = {f"layout_{side}": e.layout for side, e in (("reference", ref), ("subject", sub)) if e.layout}
    return {**settings.decoding(), **said}


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
            packages=package_versions(), seeds=seeds, decoding=_decoding(settings, ref, sub), scoring=SCORING,
            suites=[SuiteRef(name=s.name, kind=s.spec.kind, path=s.path, hash=s.hash, n_items=len(s.item_ids()),
                             normalization=s.spec.normalization, scoring=s.scoring()) for s in suites],
            requests=requests,
        ),
        reference=reference, subject=subject, items=pair_items(suites, ref, sub),
    )
