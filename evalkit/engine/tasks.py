"""Probe suites -> lm-eval task configs (in memory, or exported as YAML + JSONL).

Every suite compiles to at most two tasks: `<suite>_choice` (multiple_choice over each
item's completions) and `<suite>_generate` (greedy generate_until). Both use only metrics
in lm-eval's own registry (`acc`) or a `process_results` function that ships with the
export, so nothing reaches for the network. evalkit reads per-item numbers from lm-eval's
samples, not from its aggregates.
"""

from __future__ import annotations

from typing import Any

from evalkit.engine.tokens import encode
from evalkit.files import stable_hash
from evalkit.inputs.suites import LoadedSuite
from evalkit.kinds.base import Choice, Generation, GenerationItem

TASK_PREFIX = "evalkit_"


def choice_task_name(suite: LoadedSuite) -> str:
    return f"{TASK_PREFIX}{suite.task_stem}_choice"


def generation_task_name(suite: LoadedSuite) -> str:
    return f"{TASK_PREFIX}{suite.task_stem}_generate"


def choice_hash(suite: LoadedSuite, choice: Choice) -> str:
    """What changes a choice's log-likelihoods, and nothing else (not its id or cluster)."""
    chat = {"chat": True} if suite.spec.chat else {}
    return stable_hash({"shape": "choice", "delimiter": suite.spec.delimiter, "prompt": choice.prompt,
                        "options": list(choice.options), **chat})


def generation_hash(generation: Generation, item: GenerationItem, chat: bool = False) -> str:
    return stable_hash({"shape": "generation", "prompt": item.prompt, "max_new_tokens": generation.max_new_tokens,
                        "until": generation.until, **({"chat": True} if chat else {})})


def context_text(suite: LoadedSuite, tokenizer, prompt: str) -> str:
    """The text a model is given for `prompt`: itself, or in a chat suite the user's turn rendered
    with the chat template and the assistant's generation prompt, as lm-eval renders it."""
    if not suite.spec.chat:
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def delimiter(suite: LoadedSuite) -> str:
    """Between context and option: lm-eval puts none after a chat template's generation prompt."""
    return "" if suite.spec.chat else suite.spec.delimiter


def choice_doc(choice: Choice) -> dict[str, Any]:
    return {"id": choice.id, "prompt": choice.prompt, "options": list(choice.options)}


def generation_doc(item: GenerationItem) -> dict[str, Any]:
    return {"id": item.id, "prompt": item.prompt}


def generation_length(doc: dict, results: list) -> dict[str, float]:
    """lm-eval needs a metric per task; the generations themselves are read from the samples."""
    return {"generated_chars": float(len(results[0]))}


def choice_task_body(suite: LoadedSuite) -> dict[str, Any]:
    """The parts of the multiple_choice config shared by the in-memory and exported tasks."""
    return {
        "task": choice_task_name(suite),
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{prompt}}",
        "doc_to_choice": "{{options}}",
        "doc_to_target": 0,
        "target_delimiter": suite.spec.delimiter,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1, "evalkit_suite": suite.name, "evalkit_suite_hash": suite.hash},
    }


def generation_task_body(suite: LoadedSuite, generation: Generation) -> dict[str, Any]:
    return {
        "task": generation_task_name(suite),
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "",
        "generation_kwargs": {"until": list(generation.until), "max_gen_toks": generation.max_new_tokens,
                              "do_sample": False},
        "metric_list": [{"metric": "generated_chars", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1, "evalkit_suite": suite.name, "evalkit_suite_hash": suite.hash},
    }


def _in_memory(docs: list[dict[str, Any]]):
    def dataset(**_: Any):
        from datasets import Dataset, DatasetDict

        return DatasetDict({"test": Dataset.from_list(docs)})

    return dataset


def _prompt(doc: dict) -> str:
    return doc["prompt"]


def _options(doc: dict) -> list[str]:
    return list(doc["options"])


def choice_task(suite: LoadedSuite, choices: list[Choice]) -> dict[str, Any]:
    """An in-memory multiple_choice task over `choices` (a subset when some are cached).

    Functions stand in for the exported YAML's `{{prompt}}` / `{{options}}` templates: the
    same text, without lm-eval compiling a Jinja template for every document.
    """
    return {**choice_task_body(suite), "doc_to_text": _prompt, "doc_to_choice": _options,
            "custom_dataset": _in_memory([choice_doc(c) for c in choices])}


def generation_task(suite: LoadedSuite, generation: Generation, items: list[GenerationItem]) -> dict[str, Any]:
    return {**generation_task_body(suite, generation), "doc_to_text": _prompt,
            "custom_dataset": _in_memory([generation_doc(i) for i in items]), "process_results": generation_length}


def continuation_tokens(tokenizer, context: str, continuation: str) -> list[int]:
    """Token ids of `continuation` after `context`, split as lm-eval's _encode_pair does (with
    evalkit's encoding: nothing the tokenizer appends)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation)
    return whole[len(encode(tokenizer, context)):]
