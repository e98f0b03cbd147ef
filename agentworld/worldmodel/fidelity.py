"""Next-state fidelity: how closely predicted observations match real ones."""

from __future__ import annotations

from typing import Sequence


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute), O(len(a)*len(b)) with two rows."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(pred: str, ref: str) -> float:
    """1 - normalized edit distance, in [0, 1]."""
    if not pred and not ref:
        return 1.0
    return 1.0 - edit_distance(pred, ref) / max(len(pred), len(ref))


def fidelity(preds: Sequence, refs: Sequence[tuple[str, float, bool]]) -> dict:
    """Aggregate fidelity of `preds` (Prediction objects) against (next_obs, reward, done) references."""
    n = len(refs)
    if n == 0:
        return {"exact_match": float("nan"), "edit_similarity": float("nan"), "outcome_accuracy": float("nan"), "n": 0}
    exact = sum(p.obs == r[0] for p, r in zip(preds, refs))
    sim = sum(edit_similarity(p.obs, r[0]) for p, r in zip(preds, refs))
    outcome = sum(p.reward is not None and abs(p.reward - r[1]) < 1e-6 and p.done == r[2] for p, r in zip(preds, refs))
    return {"exact_match": exact / n, "edit_similarity": sim / n, "outcome_accuracy": outcome / n, "n": n}
