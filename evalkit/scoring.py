"""Raw model outputs -> per-item scores, one function per suite kind. Pure Python: no torch.

Raw outputs are what one model produced: per choice, each option's summed log-likelihood and
token count (from lm-eval); per generation, the greedy text (from lm-eval) and the
distribution numbers computed beside lm-eval (distributions.py).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from evalkit.probe import ConsistencySuite, ContinuationSuite, LoadedSuite, NovelAxisSuite, TensionSuite

Raw = dict[str, dict[str, Any]]  # item id -> raw outputs


def choice_metrics(logprobs: list[float], n_tokens: list[int], normalization: str) -> dict[str, Any]:
    """Margin of option 0 over its strongest rival, choice entropy (bits), and who wins."""
    per_token = [lp / max(n, 1) for lp, n in zip(logprobs, n_tokens)]
    chosen = logprobs if normalization == "sum" else per_token
    top = max(chosen)
    weights = [math.exp(c - top) for c in chosen]
    probs = [w / sum(weights) for w in weights]
    winner = max(range(len(chosen)), key=lambda i: chosen[i])
    return {
        "margin": chosen[0] - max(chosen[1:]),
        "margin_sum": logprobs[0] - max(logprobs[1:]),
        "margin_per_token": per_token[0] - max(per_token[1:]),
        "entropy": -sum(p * math.log2(p) for p in probs if p > 0),
        "p_a": probs[0],
        "a_wins": int(winner == 0),
        "winner": winner,
        "logprob_sum": list(logprobs),
        "logprob_per_token": per_token,
        "n_tokens": list(n_tokens),
    }


def _choice(raw: dict[str, Any], normalization: str) -> dict[str, Any]:
    return choice_metrics(raw["logprob_sum"], raw["n_tokens"], normalization)


def score_tension(spec: TensionSuite, choices: Raw) -> Raw:
    return {i.id: _choice(choices[i.id], spec.normalization) for i in spec.items}


def score_novel_axis(spec: NovelAxisSuite, choices: Raw) -> Raw:
    return {i.id: _choice(choices[i.id], spec.normalization) for i in spec.items}


def score_consistency(spec: ConsistencySuite, choices: Raw) -> Raw:
    """Per paraphrase: its choice and margin, and whether it agrees with its group's majority.

    The majority is the option most paraphrases choose; a tie goes to the option with the
    larger summed probability over the group, so it never depends on item order.
    """
    out: Raw = {}
    for group in spec.groups:
        scores = {p.id: _choice(choices[p.id], spec.normalization) for p in group.paraphrases}
        votes = Counter(s["winner"] for s in scores.values())
        mass: dict[int, float] = defaultdict(float)
        for s in scores.values():
            top = max(s["logprob_sum"])
            total = sum(math.exp(x - top) for x in s["logprob_sum"])
            for k, x in enumerate(s["logprob_sum"]):
                mass[k] += math.exp(x - top) / total
        majority = max(votes, key=lambda k: (votes[k], mass[k]))
        for pid, s in scores.items():
            out[pid] = {**s, "majority": majority, "agrees": int(s["winner"] == majority)}
    return out


def score_continuation(spec: ContinuationSuite, choices: Raw, generations: Raw,
                       reference_generations: dict[str, str] | None) -> Raw:
    """Generation, KL and NLL along the reference's continuation, and the reference margin.

    `reference_generations` is None when scoring the reference itself (KL is then 0).
    """
    out: Raw = {}
    for item in spec.items:
        gen = generations[item.id]
        ref_text = gen["generation"] if reference_generations is None else reference_generations[item.id]
        n = gen["n_tokens"]
        scores: dict[str, Any] = {
            "generation": gen["generation"],
            "reference_generation": ref_text,
            "changed": int(gen["generation"] != ref_text),
            "kl": 0.0 if reference_generations is None else gen["kl_mean"],
            "nll": gen["nll_sum"] / n if n else 0.0,
            "nll_sum": gen["nll_sum"],
            "continuation_tokens": n,
            "token_logprobs": gen["token_logprobs"],
            "tokens": gen["tokens"],
        }
        if item.references:
            scores["ref_margin"] = _choice(choices[item.id], spec.normalization)["margin"]
        out[item.id] = scores
    return out


def score_suite(suite: LoadedSuite, choices: Raw, generations: Raw,
                reference_generations: dict[str, str] | None) -> Raw:
    spec = suite.spec
    if isinstance(spec, TensionSuite):
        return score_tension(spec, choices)
    if isinstance(spec, NovelAxisSuite):
        return score_novel_axis(spec, choices)
    if isinstance(spec, ConsistencySuite):
        return score_consistency(spec, choices)
    return score_continuation(spec, choices, generations, reference_generations)
