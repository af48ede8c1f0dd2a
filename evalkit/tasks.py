"""Probe suite -> lm-eval task configs, built in memory; item scores out of lm-eval's samples."""

from __future__ import annotations

import math
from typing import Any

from evalkit.files import stable_hash
from evalkit.probe import LoadedSuite, TensionItem, TensionSuite

TASK_PREFIX = "evalkit_"


def task_name(suite: TensionSuite) -> str:
    return TASK_PREFIX + suite.suite.replace("-", "_")


def item_hash(suite: TensionSuite, item: TensionItem) -> str:
    """Everything about an item that changes its scores, and nothing that does not (id, cluster)."""
    return stable_hash({"kind": suite.kind, "delimiter": suite.delimiter, "prompt": item.prompt,
                        "options": item.options})


def _tension_doc(item: TensionItem) -> dict[str, Any]:
    return {"id": item.id, "prompt": item.prompt, "options": list(item.options)}


def _score_placeholder(doc: dict, results: list) -> dict[str, float]:
    # lm-eval needs one aggregate per task; evalkit reads per-item log-likelihoods from the
    # samples instead, so this reports only the mean raw margin of options 0 and 1.
    return {"raw_margin": float(results[0][0] - results[1][0])}


def task_config(suite: TensionSuite, items: list[TensionItem]) -> dict[str, Any]:
    """An lm-eval multiple_choice task over `items` (a subset when some are cached)."""
    docs = [_tension_doc(i) for i in items]

    def dataset(**_: Any):
        from datasets import Dataset, DatasetDict

        return DatasetDict({"test": Dataset.from_list(docs)})

    return {
        "task": task_name(suite),
        "custom_dataset": dataset,
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{prompt}}",
        "doc_to_choice": "{{options}}",
        "doc_to_target": 0,
        "target_delimiter": suite.delimiter,
        "process_results": _score_placeholder,
        "metric_list": [{"metric": "raw_margin", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    }


def continuation_tokens(tokenizer, context: str, continuation: str) -> int:
    """Token count of `continuation` after `context`, split exactly as lm-eval's _encode_pair does."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation)["input_ids"]
    return len(whole) - len(tokenizer(context)["input_ids"])


def tension_scores(logprobs: list[float], n_tokens: list[int], normalization: str) -> dict[str, Any]:
    """Margin of option a over its strongest rival, choice entropy (bits), and who wins."""
    per_token = [lp / n for lp, n in zip(logprobs, n_tokens)]
    chosen = logprobs if normalization == "sum" else per_token
    top = max(chosen)
    weights = [math.exp(c - top) for c in chosen]
    total = sum(weights)
    probs = [w / total for w in weights]
    entropy = -sum(p * math.log2(p) for p in probs if p > 0)
    winner = max(range(len(chosen)), key=lambda i: chosen[i])
    return {
        "margin": chosen[0] - max(chosen[1:]),
        "margin_sum": logprobs[0] - max(logprobs[1:]),
        "margin_per_token": per_token[0] - max(per_token[1:]),
        "entropy": entropy,
        "p_a": probs[0],
        "a_wins": int(winner == 0),
        "winner": winner,
        "logprob_sum": list(logprobs),
        "logprob_per_token": per_token,
        "n_tokens": list(n_tokens),
    }


def scores_from_samples(loaded: LoadedSuite, samples: list[dict], tokenizer) -> dict[str, dict[str, Any]]:
    """Per-item scores from lm-eval's per-sample records, keyed by item id."""
    suite = loaded.spec
    by_id = {item.id: item for item in suite.items}
    out = {}
    for sample in samples:
        item = by_id[sample["doc"]["id"]]
        logprobs = [float(r[0]) for r in sample["filtered_resps"]]
        n_tokens = [continuation_tokens(tokenizer, item.prompt, suite.delimiter + o) for o in item.options]
        out[item.id] = tension_scores(logprobs, n_tokens, suite.normalization)
    return out
