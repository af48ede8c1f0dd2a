"""Evaluate one model on every suite: lm-eval for choices and generations, distributions beside
it for KL, the score cache in front of both, then each kind's item metrics. The model's state
(which adapter is active) is the caller's business."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evalkit.engine.cache import ScoreCache
from evalkit.engine.distributions import along_continuations, kept_tokens, mean_kl
from evalkit.engine.identity import vocabulary_key
from evalkit.engine.packing_check import layout
from evalkit.engine.tasks import (
    choice_hash,
    choice_task,
    choice_task_name,
    context_text,
    continuation_tokens,
    delimiter,
    generation_hash,
    generation_task,
    generation_task_name,
)
from evalkit.engine.tokens import encode
from evalkit.errors import EvalkitError
from evalkit.files import stable_hash
from evalkit.inputs.suites import LoadedSuite
from evalkit.offline import go_offline

ItemScores = dict[str, dict[str, dict[str, Any]]]  # suite -> item id -> scores


@dataclass
class Counts:
    """Requests this model needed: computed now, or taken from the cache."""

    computed: int = 0
    cached: int = 0

    def line(self) -> str:
        return f"{self.computed} requests computed, {self.cached} from cache"


@dataclass
class Evaluated:
    """One model's item metrics, and what a subject evaluated against it needs."""

    scores: ItemScores
    generations: dict[str, dict[str, str]] = field(default_factory=dict)
    """Greedy generations per continuation suite (text; KL is measured along `generated`)."""
    distributions: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    generated: dict[tuple[str, str], tuple[list[int], list[int]]] = field(default_factory=dict)
    """(suite, item) -> the prompt's and the greedy continuation's token ids, which KL and NLL are
    scored along."""
    tokenizer: str = ""
    """Identity of the vocabulary those ids (and the distributions' columns) refer to."""
    layout: str = ""
    """How evalkit's HF path scored and generated for this model (`packing_check.layout`); empty
    with the vLLM backend."""


def check_context(suites: list[LoadedSuite], tokenizer, limit: int) -> None:
    """A prompt that does not fit the model's context is an input error, not a silent truncation."""
    for s in suites:
        if s.spec.chat and not getattr(tokenizer, "chat_template", None):
            raise EvalkitError("field 'chat': the suite is for chat models, but this model's tokenizer has no chat "
                               "template", where=s.path)
        for c in s.spec.choices():
            context = context_text(s, tokenizer, c.prompt)
            lengths = [len(encode(tokenizer, context + delimiter(s) + o)) for o in c.options]
            if max(lengths) > limit:
                raise EvalkitError(
                    f"field 'prompt': {max(lengths)} tokens with its longest completion, more than the model's "
                    f"context of {limit}", where=f"{s.path} [{c.id}]")
            # lm-eval scores an option as the tokens of prompt + option after the prompt's own tokens
            # (a prompt's trailing spaces move to the option first); a tokenizer whose merges cross
            # that boundary can leave an option none, and nothing to score.
            stem_length = len(encode(tokenizer, context.rstrip()))
            for k, option in enumerate(c.options):
                if lengths[k] <= stem_length:
                    raise EvalkitError(f"option {k + 1} ({option!r}) has no tokens of its own after the prompt with "
                                       "this model's tokenizer (its merges cross from the prompt into the option)",
                                       where=f"{s.path} [{c.id}]")
        generation = s.spec.generation()
        if generation is None:
            continue
        for item in generation.items:
            n = len(encode(tokenizer, context_text(s, tokenizer, item.prompt))) + generation.max_new_tokens
            if n > limit:
                raise EvalkitError(
                    f"field 'prompt': {n} tokens with max_new_tokens, more than the model's context of {limit}",
                    where=f"{s.path} [{item.id}]")


def quiet_libraries() -> None:
    go_offline()
    import datasets

    datasets.disable_progress_bars()
    for name in ("lm-eval", "lm_eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_lm_eval(lm, tasks: list[dict[str, Any]], seed: int, chat: bool = False) -> dict[str, list[dict]]:
    """One real lm-eval evaluation of `lm` (an lm-eval model); its per-sample records per task name.

    This is what `simple_evaluate` does for an already-built model, minus its per-call
    environment report (pip list, nvidia-smi: about 0.5 s per model here); evalkit writes its
    own manifest of package versions once per record.
    """
    import random

    import numpy as np
    import torch
    go_offline()
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    if not tasks:
        return {}
    quiet_libraries()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    loaded = TaskManager(include_defaults=False).load(tasks)
    for task in loaded["tasks"].values():
        task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)
    result = evaluate(lm=lm, task_dict=loaded, bootstrap_iters=0, log_samples=True, verbosity="ERROR",
                      apply_chat_template=chat)
    return result["samples"]


def _along_key(prompt_ids: list[int], token_ids: list[int], reference_fingerprint: str | None) -> str:
    return stable_hash({"shape": "along", "prompt_ids": prompt_ids, "token_ids": token_ids,
                        "reference": reference_fingerprint})


def generated_tokens(lm, tokenizer, prompt: str, text: str, new_tokens: int) -> tuple[list[int], list[int]]:
    """The prompt's ids and the generation's ids, as generate() saw and produced them.

    evalkit's HF class records them; lm-eval's vLLM class returns text only, which is split as
    lm-eval splits a continuation (exact for byte-level tokenizers).
    """
    produced = getattr(lm, "generated_ids", {})
    if produced:
        prompt_ids = lm.tok_encode(prompt)
        key = (tuple(prompt_ids), new_tokens)
        if key in produced:
            return list(prompt_ids), kept_tokens(tokenizer, produced[key], text)
    return encode(tokenizer, prompt), continuation_tokens(tokenizer, prompt, text) if text else []


def evaluate_model(model, tokenizer, lm, suites: list[LoadedSuite], *, batch_size: int, seed: int, counts: Counts,
                   cache: ScoreCache | None, reference: Evaluated | None = None,
                   reference_fingerprint: str | None = None) -> Evaluated:
    """Every item's metrics under `model`; pass `reference` to evaluate it as a subject against it.

    `lm` is the lm-eval model that serves choices and generations for `model` (evalkit's HF
    class around it, or lm-eval's vLLM engine with the matching adapter selected); KL and NLL
    are computed on `model` itself.
    """
    getattr(lm, "generated_ids", {}).clear()  # what an earlier model generated is not this one's
    choices: dict[str, dict[str, Any]] = {s.name: {} for s in suites}
    generations: dict[str, dict[str, Any]] = {s.name: {} for s in suites}
    tasks, todo_gen = [], {}
    for s in suites:
        todo = []
        for c in s.spec.choices():
            hit = cache.get(choice_hash(s, c)) if cache else None
            if hit is None:
                todo.append(c)
                counts.computed += len(c.options)
            else:
                choices[s.name][c.id] = hit
                counts.cached += len(c.options)
        if todo:
            tasks.append(choice_task(s, todo))
        generation = s.spec.generation()
        if generation is not None:
            gen_todo = []
            for item in generation.items:
                hit = cache.get(generation_hash(generation, item, s.spec.chat)) if cache else None
                if hit is None:
                    gen_todo.append(item)
                    counts.computed += 1
                else:
                    generations[s.name][item.id] = dict(hit)
                    counts.cached += 1
            if gen_todo:
                tasks.append(generation_task(s, generation, gen_todo))
                todo_gen[s.name] = (generation, gen_todo)

    # lm-eval applies a chat template to a whole evaluation: chat suites get one of their own.
    chat_tasks = {choice_task_name(s) for s in suites if s.spec.chat} | {generation_task_name(s) for s in suites
                                                                         if s.spec.chat}
    samples = {**run_lm_eval(lm, [t for t in tasks if t["task"] not in chat_tasks], seed),
               **run_lm_eval(lm, [t for t in tasks if t["task"] in chat_tasks], seed, chat=True)}
    for s in suites:
        by_id = {c.id: c for c in s.spec.choices()}
        for sample in samples.get(choice_task_name(s), []):
            c = by_id[sample["doc"]["id"]]
            context = context_text(s, tokenizer, c.prompt)
            raw = {"logprob_sum": [float(r[0]) for r in sample["filtered_resps"]],
                   "n_tokens": [len(continuation_tokens(tokenizer, context, delimiter(s) + o)) for o in c.options]}
            choices[s.name][c.id] = raw
            if cache:
                cache.put(choice_hash(s, c), raw)
        for sample in samples.get(generation_task_name(s), []):
            generation, todo_items = todo_gen[s.name]
            item = next(i for i in todo_items if i.id == sample["doc"]["id"])
            text = sample["filtered_resps"][0]
            text = text if isinstance(text, str) else str(text)
            prompt_ids, token_ids = generated_tokens(lm, tokenizer, context_text(s, tokenizer, item.prompt), text,
                                                     generation.max_new_tokens)
            generations[s.name][item.id] = {"generation": text, "prompt_ids": prompt_ids, "token_ids": token_ids}
            if cache:
                cache.put(generation_hash(generation, item, s.spec.chat), dict(generations[s.name][item.id]))

    evaluated = Evaluated(scores={}, tokenizer=vocabulary_key(tokenizer))
    _along_generations(model, tokenizer, suites, generations, evaluated, reference, reference_fingerprint,
                       batch_size, cache, counts)
    for s in suites:
        ref_gens = reference.generations.get(s.name) if reference is not None else None
        evaluated.scores[s.name] = s.kind.item_metrics(s.spec, choices[s.name], generations[s.name], ref_gens)
        if s.spec.generation() is not None:
            evaluated.generations[s.name] = {k: v["generation"] for k, v in generations[s.name].items()}
            evaluated.generated.update({(s.name, k): (v["prompt_ids"], v["token_ids"])
                                        for k, v in generations[s.name].items()})
    if hasattr(lm, "generated_ids"):  # evalkit's HF class, not vLLM's
        evaluated.layout = layout(model)
    if cache:
        cache.save()
    return evaluated


def _along_generations(model, tokenizer, suites, generations, evaluated: Evaluated, reference: Evaluated | None,
                       reference_fingerprint: str | None, batch_size: int, cache: ScoreCache | None,
                       counts: Counts) -> None:
    """NLL and KL along the reference's greedy continuation (the model's own, for the reference).

    A subject with another vocabulary (a checkpoint with its own tokenizer) gets the NLL of the
    reference's text split by its own tokenizer, and no KL: its distributions are over other tokens.
    """
    same_vocabulary = reference is None or reference.tokenizer == evaluated.tokenizer
    if not same_vocabulary and any(s.spec.generation() for s in suites):
        logging.getLogger("evalkit").warning(
            "evalkit: this model's vocabulary differs from the reference's: no KL for it, and its NLL is of the "
            "reference's text split by its own tokenizer")
    for s in suites:
        generation = s.spec.generation()
        if generation is None:
            continue
        todo = []
        for item in generation.items:
            gen = generations[s.name][item.id]
            if reference is None:
                prompt_ids, token_ids = gen["prompt_ids"], gen["token_ids"]
            elif same_vocabulary:
                prompt_ids, token_ids = reference.generated[(s.name, item.id)]
            else:
                text = reference.generations[s.name][item.id]
                context = context_text(s, tokenizer, item.prompt)
                prompt_ids = encode(tokenizer, context)
                token_ids = continuation_tokens(tokenizer, context, text) if text else []
            key = _along_key(prompt_ids, token_ids, reference_fingerprint)
            hit = cache.get(key) if cache else None
            array = cache.get_array(key) if (cache and hit is not None and reference is None) else None
            if hit is not None and (reference is not None or array is not None):
                gen.update(hit)
                if array is not None:
                    evaluated.distributions[(s.name, item.id)] = array
                counts.cached += 1
            else:
                todo.append((item, (prompt_ids, token_ids), key))
                counts.computed += 1
        if not todo:
            continue
        alongs = along_continuations(model, tokenizer, [ids for _, ids, _ in todo], batch_size)
        for (item, _, key), along in zip(todo, alongs):
            numbers = {"nll_sum": along.nll_sum, "n_tokens": len(along.token_ids),
                       "token_logprobs": along.token_logprobs,
                       "tokens": [tokenizer.decode([t]) for t in along.token_ids]}
            if reference is None:
                evaluated.distributions[(s.name, item.id)] = along.logprobs
                if cache:
                    cache.put_array(key, along.logprobs)
            else:
                ref_dist = reference.distributions[(s.name, item.id)]
                comparable = same_vocabulary and along.logprobs.shape == ref_dist.shape
                numbers["kl_mean"] = mean_kl(along.logprobs, ref_dist) if comparable else None
            generations[s.name][item.id].update(numbers)
            if cache:
                cache.put(key, numbers)
