"""`evalkit discover`: directions of change that no probe declared, labelled, replicated on held-out
prompts, measured against control adapters, and compared with the declared novel axes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from evalkit.decide.discovery import MATCH_COSINE, beyond_null, discover
from evalkit.engine.activations import axis_directions, greedy, prompt_ends, unembedding
from evalkit.engine.adapters import AttachedAdapters, check_adapter_base, check_adapter_weights
from evalkit.engine.base import load_base
from evalkit.engine.cache import ScoreCache
from evalkit.engine.runner import Subject, adapter_fingerprint, adapter_subject, model_ref
from evalkit.errors import EvalkitError
from evalkit.files import check_writable, write_text_atomic
from evalkit.inputs.suites import load_suites
from evalkit.kinds.novel_axis import NovelAxisSuite
from evalkit.paths import bundled, default_folder
from evalkit.pipelines.evaluate import base_of
from evalkit.record import AdapterManifest, DiscoveredDirection, DiscoveryRecord
from evalkit.report.discovery_page import write_discovery_report
from evalkit.versions import now, package_versions

Log = Callable[[str], None]
BATCH = 16


def prompt_bank(path: Optional[Path], demo: bool) -> tuple[list[str], str]:
    source = path or bundled("prompts") / ("demo.txt" if demo else "real.txt")
    if not source.is_file():
        raise EvalkitError("no such prompt file", where=str(source))
    try:
        prompts = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise EvalkitError("not a UTF-8 text file", where=str(source)) from None
    if len(prompts) < 20:
        raise EvalkitError(f"{len(prompts)} prompts: discovery needs at least 20 (one a line)", where=str(source))
    return prompts, str(source)


def _reading(d: DiscoveredDirection) -> str:
    strength = "replicates on held-out prompts" if d.replicates else "does not replicate on held-out prompts"
    null = ("no control adapters were given, so it may be what any fine-tuning changes" if d.beyond_null is None
            else f"stands {d.beyond_null:+.1f} t above the control adapters' largest" if d.beyond_null > 0
            else f"is no stronger than what control adapters change ({d.beyond_null:+.1f} t)")
    what = (f"matches declared axis {d.matches} (cos {d.cosines[d.matches]:.2f})" if d.matches
            else f"new: aligned with no declared axis (largest |cos| {max(d.cosines.values(), default=0.0):.2f})")
    return f"{what}; carries {d.share:.0%} of the change; {strength}; {null}."


def run_discovery(adapter: Path, base_spec: Optional[Path], reference: Optional[Path], controls: list[Path],
                  prompts_file: Optional[Path], suite_paths: list[Path], out: Path, seed: int = 0,
                  log: Log = print) -> Path:
    suites = load_suites(suite_paths or [default_folder("probes")])
    check_writable(out)
    subject = adapter_subject(adapter, trained_elsewhere=base_spec is not None)
    others = [adapter_subject(c, trained_elsewhere=base_spec is not None) for c in controls]
    ref_subject = adapter_subject(reference, trained_elsewhere=base_spec is not None) if reference else None
    everyone = [s for s in (subject, ref_subject, *others) if s is not None]
    base = load_base(base_spec or base_of([subject]), log=log)
    for s in everyone:
        if isinstance(s.manifest, AdapterManifest):
            check_adapter_base(s.path, s.manifest, base)
        check_adapter_weights(s.path, base.model)
    marker = Path(base.path) / "evalkit-base.json"  # the demo base's: its world has a prompt bank of its own
    bank, bank_name = prompt_bank(prompts_file, demo=marker.is_file() and "demo" in marker.read_text())
    prompts = list(dict.fromkeys(bank + [c.prompt for s in suites for c in s.spec.choices()]))
    names = {s.path: f"d{k}" for k, s in enumerate(everyone)}
    attached = AttachedAdapters(base, {n: p for p, n in names.items()})
    model = attached.model

    def measure(who: Optional[Subject]) -> Any:
        fingerprint = base.fingerprint if who is None else adapter_fingerprint(who.path, base.fingerprint)
        cache = ScoreCache(fingerprint, {"what": "prompt ends"})
        if who is None:
            with model.disable_adapter():
                return prompt_ends(model, base.tokenizer, prompts, BATCH, cache)
        attached.activate(names[who.path])
        return prompt_ends(model, base.tokenizer, prompts, BATCH, cache)

    log(f"discover: {len(prompts)} prompts ({bank_name} and the suites' own)")
    ref_acts, sub_acts = measure(ref_subject), measure(subject)
    null_acts = [measure(c) for c in others]
    pairs = [(i.axis, i.prompt, s.spec.delimiter + i.pole_a, s.spec.delimiter + i.pole_b)
             for s in suites if isinstance(s.spec, NovelAxisSuite) for i in s.spec.items]
    declared = axis_directions(model, base.tokenizer, pairs)
    head = unembedding(model)
    directions = discover(ref_acts.hidden, sub_acts.hidden, head, declared, seed=seed)
    # The null: the same statistic, for the direction of the same rank, of each control adapter.
    nulls = [discover(ref_acts.hidden, n.hidden, head, {}, seed=seed) for n in null_acts]
    decode = base.tokenizer.decode
    found = []
    for rank, d in enumerate(directions):
        null_t = [n[rank].held_out_t if len(n) > rank else 0.0 for n in nulls]  # no change: t 0
        strongest = [prompts[i] for i in d.strongest]
        attached.activate(names[subject.path])
        subject_text = greedy(model, base.tokenizer, strongest[:2])
        if ref_subject is None:
            with model.disable_adapter():
                reference_text = greedy(model, base.tokenizer, strongest[:2])
        else:
            attached.activate(names[ref_subject.path])
            reference_text = greedy(model, base.tokenizer, strongest[:2])
        match, _ = d.match()
        record = DiscoveredDirection(
            name=d.name, share=d.share, strength=d.strength, promoted=[decode([t]) for t in d.promoted],
            suppressed=[decode([t]) for t in d.suppressed], strongest_prompts=strongest,
            reference_continuations=reference_text, subject_continuations=subject_text,
            held_out_t=[t for t, _ in d.held_out], held_out_p=[p for _, p in d.held_out], replicates=d.replicates,
            null_t=null_t, beyond_null=beyond_null(d, null_t), cosines=d.cosines, matches=match, reading="")
        found.append(record.model_copy(update={"reading": _reading(record)}))
    shift = (sub_acts.logprobs - ref_acts.logprobs).mean(axis=0)
    attached.model.unload()
    result = DiscoveryRecord(
        subject=model_ref(subject, base, adapter_fingerprint(subject.path, base.fingerprint)),
        reference=model_ref(ref_subject, base, base.fingerprint if ref_subject is None
                            else adapter_fingerprint(ref_subject.path, base.fingerprint)),
        controls=[str(c.path) for c in others], prompts=len(prompts), prompt_bank=bank_name, seed=seed,
        directions=found, next_token_promoted=[decode([int(t)]) for t in np.argsort(-shift)[:10]],
        next_token_suppressed=[decode([int(t)]) for t in np.argsort(shift)[:10]],
        manifest={"created": now(), "packages": package_versions(), "match_cosine": MATCH_COSINE})
    write_text_atomic(out / "discovery.json", result.model_dump_json(indent=2) + "\n")
    for direction in found:
        log(f"{direction.name}: {direction.reading} Promotes "
            f"{', '.join(repr(t) for t in direction.promoted[:6])}.")
    return write_discovery_report(result, out / "discovery.html")
