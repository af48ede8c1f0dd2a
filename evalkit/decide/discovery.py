"""Directions of change nobody declared: from per-prompt shifts of the residual stream (subject
minus reference, at each prompt's end), the consistent shift and the leading SVD directions, each
with its share of the change, tested on held-out prompts, measured against control adapters and
compared with the declared novel axes. numpy and scipy only: the engine hands the arrays over.

Anchors: the logit lens (nostalgebraist 2020) labels a direction by the tokens the output head
maps it to - exact here, since the hidden state is taken after the final norm; Activation
Addition (Turner et al. 2023) and Representation Engineering (Zou et al. 2023) read behaviour as
directions in the residual stream; model diffing compares a base and a fine-tune's activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

# A discovered direction "matches" a declared axis when their |cosine| is at least this.
MATCH_COSINE = 0.5
# Held-out replication: this many seeded random halvings of the prompts.
SPLITS = 5
# A direction replicates when the held-out shift is significant at this level in every split.
REPLICATION_ALPHA = 0.01


@dataclass
class Direction:
    name: str
    vector: np.ndarray
    """Unit vector in the residual stream (d,)."""
    share: float
    """Share of the total squared change (summed over prompts) that lies along it."""
    strength: float
    """Mean shift along it per prompt (norm units of the residual stream)."""
    held_out: list[tuple[float, float]] = field(default_factory=list)
    """(t, one-sided p) of the shift along the direction found on one half, on the other half."""
    promoted: list[int] = field(default_factory=list)
    suppressed: list[int] = field(default_factory=list)
    strongest: list[int] = field(default_factory=list)
    """Prompt indices where the shift along it is largest."""
    cosines: dict[str, float] = field(default_factory=dict)
    """|cos| with each declared axis' direction."""

    @property
    def replicates(self) -> bool:
        return bool(self.held_out) and all(p < REPLICATION_ALPHA for _, p in self.held_out)

    @property
    def held_out_t(self) -> float:
        return float(np.mean([t for t, _ in self.held_out])) if self.held_out else 0.0

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


def held_out(delta: np.ndarray, reference: np.ndarray, index: int, k: int, seed: int) -> list[tuple[float, float]]:
    """Find direction `index` on one random half of the prompts (the one closest to `reference`,
    the full-data direction), test the shift along it on the other half: one-sided t over prompts."""
    results = []
    for s in range(SPLITS):
        order = np.random.default_rng(seed + s).permutation(len(delta))
        half_a, half_b = order[: len(order) // 2], order[len(order) // 2 :]
        candidates = _directions(delta[half_a], k)
        _, u = max(candidates, key=lambda c: abs(float(c[1] @ reference))) if index else candidates[0]
        u = u if float(u @ reference) >= 0 else -u
        projection = delta[half_b] @ u
        if np.allclose(projection, 0):
            results.append((0.0, 1.0))
            continue
        test = sps.ttest_1samp(projection, 0.0, alternative="greater")
        results.append((float(test.statistic), float(test.pvalue)))
    return results


def discover(reference: np.ndarray, subject: np.ndarray, unembedding: np.ndarray,
             declared: dict[str, np.ndarray], k: int = 3, seed: int = 0, top: int = 8) -> list[Direction]:
    """reference, subject: (P, d) hidden states at each prompt's end; unembedding: (V, d)."""
    delta = subject.astype(np.float64) - reference.astype(np.float64)
    total = float((delta ** 2).sum())
    if total == 0.0:
        return []  # nothing changed: a zero adapter gives exactly nothing
    found = []
    for index, (name, v) in enumerate(_directions(delta, k)):
        projection = delta @ v
        logits = unembedding.astype(np.float64) @ v
        found.append(Direction(
            name=name, vector=v, share=float((projection ** 2).sum() / total), strength=float(projection.mean()),
            held_out=held_out(delta, v, index, k, seed),
            promoted=[int(i) for i in np.argsort(-logits)[:top]], suppressed=[int(i) for i in np.argsort(logits)[:top]],
            strongest=[int(i) for i in np.argsort(-projection)[:3]],
            cosines={axis: abs(float(_unit(a) @ v)) for axis, a in declared.items() if np.linalg.norm(a) > 0},
        ))
    return found


def beyond_null(direction: Direction, null_t: list[float]) -> float | None:
    """How far the direction's held-out t stands above the largest held-out t that control adapters
    (fine-tuned on neutral text, other seeds) reach for their direction of the same rank; None
    when no null was measured."""
    return direction.held_out_t - max(null_t) if null_t else None
