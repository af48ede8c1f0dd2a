"""Directions of change nobody declared, from per-prompt shifts of the residual stream at each
prompt's end: the consistent shift and the leading SVD directions, each with its share of the
change, labelled by what it does to the next token on the prompts where it is strongest, tested on
held-out prompts, measured against control adapters and compared with the declared novel axes.
numpy and scipy only: the engine hands the arrays over.

The shift is taken against the mean of the control adapters when there are any (fine-tuned on
neutral text, other seeds): what any fine-tuning changes cancels, and what is left is what this
scene changed beyond it (model diffing against a control fine-tune). Without controls it is taken
against the reference.

Anchors: the logit lens (nostalgebraist 2020) reads a hidden-state direction through the output
head - exact here, the hidden state is taken after the final norm; Activation Addition (Turner et
al. 2023) and Representation Engineering (Zou et al. 2023) read behaviour as directions in the
residual stream; model diffing compares a base and a fine-tune's activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import stats as sps

# A discovered direction "matches" a declared axis when their |cosine| is at least this.
MATCH_COSINE = 0.5
# Held-out replication: this many seeded random halvings of the prompts.
SPLITS = 5
# A direction replicates when the held-out shift is significant at this level in every split.
REPLICATION_ALPHA = 0.01
# A direction stands beyond the null when its held-out strength is at least this many times the
# strongest direction any control adapter shows against the other controls. Set with `evalkit
# calibrate`'s discovery null (control-vs-control comparisons; README, Discovered axes).
NULL_RATIO = 2.0
# SVD directions after the consistent shift.
DIRECTIONS = 3
# Prompts a direction's label is read from: its strongest this many.
LABEL_PROMPTS = 10


@dataclass
class Direction:
    name: str
    vector: np.ndarray
    """Unit vector in the residual stream (d,)."""
    share: float
    """Share of the total squared change (summed over prompts) that lies along it."""
    strength: float
    """Held-out strength: the root mean square shift along the direction found on one half of the
    prompts, on the other half, averaged over the splits (residual-stream units). Root mean
    square, so a change confined to some prompts (a mood after "felt") counts as much as one
    spread thinly over all of them."""
    held_out: list[tuple[float, float]] = field(default_factory=list)
    """(t, one-sided p) of that held-out shift, one per split."""
    lens_promoted: list[int] = field(default_factory=list)
    """Tokens whose logits the direction raises most (the output head applied to it)."""
    lens_suppressed: list[int] = field(default_factory=list)
    strongest: list[int] = field(default_factory=list)
    """Prompt indices where the shift along it is largest, strongest first."""
    promoted: list[int] = field(default_factory=list)
    """Next tokens whose probability rose most on the strongest prompts: the label."""
    suppressed: list[int] = field(default_factory=list)
    cosines: dict[str, float] = field(default_factory=dict)
    """|cos| with each declared axis' direction."""
    null_strength: Optional[float] = None
    """The strongest held-out strength of any direction of any control adapter against the other
    controls; None without two controls."""

    @property
    def replicates(self) -> bool:
        return bool(self.held_out) and all(p < REPLICATION_ALPHA for _, p in self.held_out)

    @property
    def null_ratio(self) -> Optional[float]:
        """None without a null, or when the controls show no change at all (then they measure
        nothing: identical controls are refused before this)."""
        if self.null_strength is None or self.null_strength <= 0:
            return None
        return self.strength / self.null_strength

    @property
    def beyond_null(self) -> bool:
        ratio = self.null_ratio
        return ratio is not None and ratio >= NULL_RATIO

    @property
    def found(self) -> bool:
        """Replicates and stands beyond the control adapters: a change this scene made."""
        return self.replicates and self.beyond_null

    def match(self) -> tuple[str | None, float]:
        """The declared axis it matches (|cos| >= MATCH_COSINE), or None, and the largest |cos|."""
        if not self.cosines:
            return None, 0.0
        axis = max(self.cosines, key=lambda a: self.cosines[a])
        best = self.cosines[axis]
        return (axis if best >= MATCH_COSINE else None), best


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _directions(delta: np.ndarray, k: int) -> list[tuple[str, np.ndarray]]:
    """The consistent shift, then the top-k right singular vectors; each signed so that the mean
    shift along it is positive."""
    out = [("consistent shift", _unit(delta.mean(axis=0)))]
    _, _, vt = np.linalg.svd(delta, full_matrices=False)
    for j in range(min(k, vt.shape[0])):
        v = vt[j] if (delta @ vt[j]).mean() >= 0 else -vt[j]
        out.append((f"direction {j + 1}", v))
    return out


def held_out(delta: np.ndarray, index: int, k: int, seed: int) -> tuple[float, list[tuple[float, float]]]:
    """Find direction `index` (0: the consistent shift, j: the j-th SVD direction) on one random
    half of the prompts, signed on that half alone, and measure the shift along it on the other
    half: its root mean square (averaged over splits) and, per split, a one-sided t over those
    prompts that it moves them the way it moved the first half. Nothing of the second half
    chooses or signs the direction, so on noise each split's p is uniform."""
    results, sizes = [], []
    for s in range(SPLITS):
        order = np.random.default_rng(seed + s).permutation(len(delta))
        half_a, half_b = order[: len(order) // 2], order[len(order) // 2 :]
        candidates = _directions(delta[half_a], k)
        if index >= len(candidates):  # a half too small to hold this many directions
            results.append((0.0, 1.0))
            sizes.append(0.0)
            continue
        projection = delta[half_b] @ candidates[index][1]
        sizes.append(float(np.sqrt((projection ** 2).mean())))
        if len(projection) < 2 or np.allclose(projection, projection[0]):
            results.append((0.0, 1.0))
            continue
        test = sps.ttest_1samp(projection, 0.0, alternative="greater")
        results.append((float(test.statistic), float(test.pvalue)))
    return float(np.mean(sizes)), results


def contrast(subject: np.ndarray, reference: np.ndarray, controls: list[np.ndarray]) -> np.ndarray:
    """Per-prompt shift of the subject: against the controls' mean when there are any, else the reference."""
    against = np.mean(controls, axis=0) if controls else reference
    return subject.astype(np.float64) - against.astype(np.float64)


def directions_of(delta: np.ndarray, seed: int, k: int = DIRECTIONS) -> list[Direction]:
    """The directions of one set of per-prompt shifts with share, held-out strength and replication."""
    total = float((delta ** 2).sum())
    if total == 0.0:
        return []  # nothing changed: a zero adapter gives exactly nothing
    found = []
    for index, (name, v) in enumerate(_directions(delta, k)):
        projection = delta @ v
        strength, tests = held_out(delta, index, k, seed)
        found.append(Direction(name=name, vector=v, share=float((projection ** 2).sum() / total),
                               strength=strength, held_out=tests,
                               strongest=[int(i) for i in np.argsort(-projection)[:LABEL_PROMPTS]]))
    return found


def null_strength(reference: np.ndarray, controls: list[np.ndarray], seed: int) -> Optional[float]:
    """The null: each control adapter taken as the subject against the other controls, the
    strongest held-out strength any of its directions reaches; the largest over the controls.
    None with fewer than two controls (one control has no other to be compared with).

    A subject is compared with the mean of k controls, a control with the mean of k - 1: seed noise
    of size s gives shifts of s * sqrt(1 + 1/k) and s * sqrt(1 + 1/(k - 1)). The null is scaled by
    their ratio, so both are on one footing (being a maximum over controls and directions, the
    null still lies above a typical control: a subject that is one more control stands below 1x)."""
    k = len(controls)
    if k < 2:
        return None
    strengths = [0.0]
    for j, control in enumerate(controls):
        others = controls[:j] + controls[j + 1 :]
        strengths += [d.strength for d in directions_of(contrast(control, reference, others), seed)]
    return max(strengths) * float(np.sqrt((1 + 1 / k) / (1 + 1 / (k - 1))))


def discover(reference: np.ndarray, subject: np.ndarray, unembedding: np.ndarray, declared: dict[str, np.ndarray],
             controls: list[np.ndarray] = [], probability_shift: Optional[np.ndarray] = None,
             seed: int = 0, top: int = 8) -> list[Direction]:
    """reference, subject, controls: (P, d) hidden states at each prompt's end; unembedding: (V, d);
    declared: hidden-state directions (d,) that raise one declared option over the other;
    probability_shift: (P, V) the subject's next-token probabilities minus the baseline's (the
    controls' mean, else the reference's), for the labels."""
    if len(reference) < 4:
        return []  # two halves of at least two prompts each are the least a held-out test needs
    found = directions_of(contrast(subject, reference, controls), seed)
    null = null_strength(reference, controls, seed) if found else None
    head = unembedding.astype(np.float64)
    for d in found:
        logits = head @ d.vector
        d.lens_promoted = [int(i) for i in np.argsort(-logits)[:top]]
        d.lens_suppressed = [int(i) for i in np.argsort(logits)[:top]]
        if probability_shift is not None:
            shift = probability_shift[d.strongest].mean(axis=0)
            d.promoted = [int(i) for i in np.argsort(-shift)[:top] if shift[i] > 0]
            d.suppressed = [int(i) for i in np.argsort(shift)[:top] if shift[i] < 0]
        else:
            d.promoted, d.suppressed = d.lens_promoted, d.lens_suppressed
        d.cosines = {axis: abs(float(_unit(a) @ d.vector)) for axis, a in declared.items() if np.linalg.norm(a) > 0}
        d.null_strength = null
    return found
