"""Directions of change that no probe declared, labelled, replicated on held-out prompts, measured
against control adapters and compared with the declared novel axes: `evalkit discover`, and the
discovery section of `evalkit run --discover`."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from evalkit.decide.discovery import MATCH_COSINE, NULL_RATIO, REPLICATION_ALPHA, Direction, discover
from evalkit.engine.activations import Activations, axis_directions, greedy, prompt_ends, unembedding
from evalkit.engine.adapters import AttachedAdapters, check_adapter_base, check_adapter_weights
from evalkit.engine.base import Base, context_limit, load_base
from evalkit.engine.cache import ScoreCache
from evalkit.engine.runner import Subject, adapter_fingerprint, adapter_subject, base_of, model_ref
from evalkit.engine.tokens import encode
from evalkit.errors import EvalkitError
from evalkit.files import atomic_directory, check_replaceable, check_writable, seen_as, visible, write_text_atomic
from evalkit.inputs.suites import LoadedSuite, load_suites
from evalkit.kinds.novel_axis import NovelAxisSuite
from evalkit.paths import bundled, default_folder
from evalkit.progress import progress_bar
from evalkit.record import AdapterManifest, DiscoveredDirection, DiscoveryRecord
from evalkit.report.discovery_page import write_discovery_report
from evalkit.versions import now, package_versions

Log = Callable[[str], None]
BATCH = 16
# Strongest prompts per direction whose greedy continuations the report shows.
EXAMPLES = 2


def read_prompts(source: Path) -> list[str]:
    """A prompt bank: one prompt a line, at least 20 a reader can tell apart (a line of spaces or
    invisible characters is blank; a repeated line is one prompt, as discovery merges repeats)."""
    if not source.is_file():
        raise EvalkitError("no such prompt file", where=str(source))
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise EvalkitError("not a UTF-8 text file", where=str(source)) from None
    prompts = [line.strip() for line in lines if visible(line)]
    distinct = len({seen_as(p) for p in prompts})
    if distinct < 20:
        repeated = f" ({len(prompts) - distinct} lines repeat another)" if distinct < len(prompts) else ""
        raise EvalkitError(f"{distinct} distinct prompts{repeated}: discovery needs at least 20 (one a line)",
                           where=str(source))
    return prompts


def prompt_bank(path: Optional[Path], base: Base) -> tuple[list[str], str]:
    """The prompts and their source: the file given, else the shipped bank for the base's world
    (the demo base's grammar, or everyday English); each must fit the model's context."""
    marker = Path(base.path) / "evalkit-base.json"
    demo = marker.is_file() and "demo" in marker.read_text(encoding="utf-8", errors="replace")
    source = path or bundled("prompts") / ("demo.txt" if demo else "real.txt")
    prompts, name = read_prompts(source), source.name if path is None else str(source)
    limit = context_limit(base.model, base.tokenizer)
    for k, prompt in enumerate(prompts):
        length = len(encode(base.tokenizer, prompt))
        if length > limit:
            raise EvalkitError(f"prompt {k + 1}: {length} tokens, more than the model's context of {limit}", where=name)
    return prompts, name


def _reading(d: DiscoveredDirection, controls: int) -> str:
    if not d.cosines:
        what = "Nothing declared to compare it with (no two-way choice in the suites)"
    elif d.matches:
        what = f"Matches the declared choice {d.matches} (cos {d.cosines[d.matches]:.2f})"
    else:
        what = (f"New: aligned with no declared choice (largest |cos| {max(d.cosines.values()):.2f}, a match "
                f"needs {MATCH_COSINE:g})")
    label = (f"on the prompts where it is strongest it makes {', '.join(repr(t) for t in d.promoted[:4])} likelier"
             if d.promoted else "it makes no next token likelier")
    splits = sum(p < REPLICATION_ALPHA for p in d.held_out_p)
    replication = (f"replicates on held-out prompts (p < {REPLICATION_ALPHA:g} in all {splits} splits)" if d.replicates
                   else f"does not replicate on held-out prompts (p < {REPLICATION_ALPHA:g} in {splits} of "
                        f"{len(d.held_out_p)} splits)")
    if d.null_ratio is None:
        null = ("with fewer than two control adapters there is no null, so it may be what any fine-tuning "
                "changes; pass --control twice")
    elif d.beyond_null:
        null = (f"it is {d.null_ratio:.1f}x the strongest change the {controls} control adapters show "
                f"against each other (needed: {NULL_RATIO:g}x)")
    elif d.null_ratio >= 1:
        null = (f"at {d.null_ratio:.1f}x the strongest change the control adapters show against each other it "
                f"is above them, but short of the {NULL_RATIO:g}x needed")
    else:
        null = (f"at {d.null_ratio:.1f}x the strongest change the control adapters show against each other it "
                f"is within what fine-tuning with another seed does (needed: {NULL_RATIO:g}x)")
    verdict = "A finding" if d.found else "Not a finding"
    return f"{verdict}. {what}; {label}. It {replication}; {null}."


def _record(d: Direction, decode: Callable[[list[int]], str], prompts: list[str], scale: float,
            continuations: tuple[list[str], list[str]], controls: int) -> DiscoveredDirection:
    match, _ = d.match()
    tokens = lambda ids: [decode([t]) for t in ids]  # noqa: E731
    record = DiscoveredDirection(
        name=d.name, share=d.share, strength=d.strength, relative_strength=d.strength / scale if scale else 0.0,
        promoted=tokens(d.promoted), suppressed=tokens(d.suppressed), lens_promoted=tokens(d.lens_promoted),
        lens_suppressed=tokens(d.lens_suppressed), strongest_prompts=[prompts[i] for i in d.strongest[:EXAMPLES]],
        reference_continuations=continuations[0], subject_continuations=continuations[1],
        held_out_t=[t for t, _ in d.held_out], held_out_p=[p for _, p in d.held_out], replicates=d.replicates,
        null_strength=d.null_strength, null_ratio=d.null_ratio,
        beyond_null=d.beyond_null, found=d.found, cosines=d.cosines, matches=match, reading="")
    return record.model_copy(update={"reading": _reading(record, controls)})


def declared_pairs(suites: list[LoadedSuite]) -> list[tuple[str, str, str, str]]:
    """Every two-way choice a suite declares, as (name, prompt, option a, option b): a novel axis
    by its name, a dilemma as suite/cluster. What a discovered direction may match. Chat suites
    are left out (their prompt reaches the model inside a template, not as this text), and so are
    continuation suites (their references are not two poles of one choice)."""
    pairs = []
    for s in suites:
        if s.spec.chat or s.spec.kind == "continuation":
            continue
        for c in s.spec.choices():
            if len(c.options) == 2:
                axis = isinstance(s.spec, NovelAxisSuite) and c.cluster
                name = c.cluster if axis and c.cluster else f"{s.name}/{c.cluster or c.id}"
                pairs.append((name, c.prompt, s.spec.delimiter + c.options[0], s.spec.delimiter + c.options[1]))
    return pairs


def check_discoverable(subjects: list[Subject], reference: Optional[Subject], controls: list[Subject]) -> None:
    """Before any work: discovery compares adapters on one base, each in its own role."""
    for s in [*([reference] if reference else []), *controls]:
        if s.kind != "adapter":
            raise EvalkitError("discovery compares adapters on one base; a full checkpoint cannot be its reference "
                               "or a control", where=str(s.path))
    roles = [s.path for s in subjects] + [c.path for c in controls] + ([reference.path] if reference else [])
    repeated = next((p for p in roles if roles.count(p) > 1), None)
    if repeated is not None:
        raise EvalkitError("an adapter is given twice (as subject, control or reference)", where=str(repeated))


def check_adapters_fit(base: Base, adapters: list[Subject]) -> None:
    """Each adapter fits the loaded base."""
    for s in adapters:
        if isinstance(s.manifest, AdapterManifest):
            check_adapter_base(s.path, s.manifest, base)
        check_adapter_weights(s.path, base.model)


def check_distinct(base: Base, adapters: list[Subject]) -> None:
    """No two adapters carry the same weights: two identical controls would make a null of nothing,
    a control equal to the subject a comparison of nothing."""
    seen: dict[str, Path] = {}
    for s in adapters:
        fingerprint = adapter_fingerprint(s.path, base.fingerprint)
        if fingerprint in seen:
            raise EvalkitError(f"has the same weights as {seen[fingerprint]}: discovery needs different adapters "
                               "(another seed for a control)", where=str(s.path))
        seen[fingerprint] = s.path


def discover_adapters(base: Base, subjects: list[Subject], reference: Optional[Subject], controls: list[Subject],
                      suites: list[LoadedSuite], prompts_file: Optional[Path] = None, seed: int = 0,
                      batch_size: int = BATCH, log: Log = print, examples: bool = True,
                      use_cache: bool = True) -> dict[Path, DiscoveryRecord]:
    """One DiscoveryRecord per adapter subject, on one loaded base: prompt-end activations of the
    reference, the controls and each subject (cached by weight fingerprint and prompt), then the
    directions, their labels, held-out tests, null and matches; with `examples`, the reference's
    and the subject's greedy continuations of each direction's strongest prompts."""
    bank, bank_name = prompt_bank(prompts_file, base)
    prompts = list(dict.fromkeys(bank + [c.prompt for s in suites for c in s.spec.choices()]))
    everyone = [*subjects, *controls, *([reference] if reference else [])]
    names = {s.path: f"d{k}" for k, s in enumerate(everyone)}
    attached = AttachedAdapters(base, {n: p for p, n in names.items()})
    model = attached.model

    @contextmanager
    def wearing(who: Optional[Subject]) -> Iterator[None]:
        """The model as `who`: the base with every adapter off, or one adapter."""
        if who is None:
            with model.disable_adapter():
                yield
        else:
            attached.activate(names[who.path])
            yield

    # The run's dtype and device move activations: both key the cache (the input embedding has the
    # run's dtype; a bf16 model's norms are float32).
    weight = model.get_input_embeddings().weight
    computed_by = {"what": "prompt ends", "dtype": str(weight.dtype), "device": weight.device.type}

    def measure(who: Optional[Subject]) -> Activations:
        fingerprint = base.fingerprint if who is None else adapter_fingerprint(who.path, base.fingerprint)
        cache = ScoreCache(fingerprint, computed_by) if use_cache else None
        with wearing(who):
            acts = prompt_ends(model, base.tokenizer, prompts, batch_size, cache)
        if not (np.isfinite(acts.hidden).all() and np.isfinite(acts.logprobs).all()):
            raise EvalkitError("the model's activations hold NaN or infinite values at some prompt's end "
                               "(broken weights, or a dtype too narrow)", where=str(who.path if who else base.path))
        return acts

    def continue_greedily(who: Optional[Subject], texts: list[str]) -> list[str]:
        with wearing(who):
            return greedy(model, base.tokenizer, texts)

    log(f"discover: {len(prompts)} prompts ({bank_name} and the suites' own), {len(controls)} control adapter(s)")
    try:
        with progress_bar("reading prompt ends", len(everyone) + 1) as advance:
            ref_acts = measure(reference)
            advance()
            control_acts = []
            for c in controls:
                control_acts.append(measure(c))
                advance()
            subject_acts = []
            for s in subjects:
                subject_acts.append(measure(s))
                advance()
        pairs = declared_pairs(suites)
        declared = axis_directions(model, base.tokenizer, pairs)
        head = unembedding(model)
        baseline_probs = (np.mean([np.exp(a.logprobs) for a in control_acts], axis=0) if controls
                          else np.exp(ref_acts.logprobs))
        scale = float(np.linalg.norm(ref_acts.hidden, axis=1).mean())
        decode = base.tokenizer.decode
        results = {}
        for subject, acts in zip(subjects, subject_acts):
            shift = np.exp(acts.logprobs) - baseline_probs
            directions = discover(ref_acts.hidden, acts.hidden, head, declared, [a.hidden for a in control_acts],
                                  shift, seed=seed)
            found = []
            for d in directions:
                shown = [prompts[i] for i in d.strongest[:EXAMPLES]]
                continuations = ((continue_greedily(reference, shown), continue_greedily(subject, shown)) if examples
                                 else ([], []))
                found.append(_record(d, decode, prompts, scale, continuations, len(controls)))
            mean_shift = shift.mean(axis=0)
            results[subject.path] = DiscoveryRecord(
                subject=model_ref(subject, base, adapter_fingerprint(subject.path, base.fingerprint)),
                reference=model_ref(reference, base, base.fingerprint if reference is None
                                    else adapter_fingerprint(reference.path, base.fingerprint)),
                controls=[str(c.path) for c in controls],
                against="the control adapters' mean" if controls else "the reference",
                prompts=len(prompts), prompt_bank=bank_name, seed=seed, null_ratio_required=NULL_RATIO,
                directions=found, next_token_promoted=[decode([int(t)]) for t in np.argsort(-mean_shift)[:10]],
                next_token_suppressed=[decode([int(t)]) for t in np.argsort(mean_shift)[:10]],
                manifest={"created": now(), "packages": package_versions(), "match_cosine": MATCH_COSINE})
            for direction in found:
                log(f"{subject.name}: {direction.name}: {direction.reading}")
    finally:
        base.model = attached.model.unload()
    return results


def run_discovery(adapter: Path, base_spec: Optional[Path], reference: Optional[Path], controls: list[Path],
                  prompts_file: Optional[Path], suite_paths: list[Path], out: Path, seed: int = 0,
                  log: Log = print) -> Path:
    """`evalkit discover`: out/discovery.json and out/discovery.html for one adapter."""
    suites = load_suites(suite_paths or [default_folder("probes")])
    check_writable(out)
    inputs = [adapter, *controls, *([reference] if reference else []), *suite_paths,
              *([prompts_file] if prompts_file else []), *([base_spec] if base_spec else [])]
    check_replaceable(out, inputs, kind="discovery report")
    elsewhere = base_spec is not None
    subject = adapter_subject(adapter, trained_elsewhere=elsewhere)
    others = [adapter_subject(c, trained_elsewhere=elsewhere) for c in controls]
    ref_subject = adapter_subject(reference, trained_elsewhere=elsewhere) if reference else None
    check_discoverable([subject], ref_subject, others)
    if prompts_file is not None:
        read_prompts(prompts_file)
    base = load_base(base_spec or base_of([subject]), log=log)
    everyone = [subject, *others, *([ref_subject] if ref_subject else [])]
    check_adapters_fit(base, everyone)
    check_distinct(base, everyone)
    result = discover_adapters(base, [subject], ref_subject, others, suites, prompts_file, seed, log=log)[subject.path]
    with atomic_directory(out, inputs, kind="discovery report") as tmp:
        write_text_atomic(tmp / "discovery.json", result.model_dump_json(indent=2) + "\n")
        write_discovery_report(result, tmp / "discovery.html")
    return out / "discovery.html"
