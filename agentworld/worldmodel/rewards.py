"""Hybrid rule-and-rubric reward for next-state prediction (the RL stage of the LWM recipe).

Rule parts score a reply against the real next state; an optional rubric (a judge's 0..1 total) is added
only above a rule floor, and the format gate zeroes a reply with no observation block. A length penalty
discourages padding beyond the reference, a cheap way to hack similarity metrics."""

from __future__ import annotations

import ast
import json

from agentworld.config import RewardWeights  # noqa: F401  (the reward's weights are config)
from agentworld.worldmodel.fidelity import edit_similarity
from agentworld.worldmodel.prompt import parse_prediction


def line_f1(pred: str, ref: str) -> float:
    """F1 over lines as a multiset: for screen-like states where whole lines appear or change."""
    p, r = pred.splitlines(), ref.splitlines()
    if not p and not r:
        return 1.0
    pool = list(r)
    hits = 0
    for line in p:
        if line in pool:
            pool.remove(line)
            hits += 1
    if hits == 0:
        return 0.0
    precision, recall = hits / len(p), hits / len(r)
    return 2 * precision * recall / (precision + recall)


def _flatten(obj, prefix="") -> dict[str, str]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): json.dumps(obj, sort_keys=True)}


def structured(text: str):
    """A state as data: JSON, or a Python literal of a list or dict (what MCP's sqlite server prints, e.g.
    `[{'id': 1, 'name': None}]`); ValueError when it is neither."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        pass
    if not text.lstrip().startswith(("[", "{")):
        raise ValueError("not structured")
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("not structured") from None
    if not isinstance(value, (list, dict)):
        raise ValueError("not structured")
    return value


def field_f1(pred: str, ref: str) -> float | None:
    """F1 over (path, value) leaves of structured states (JSON, or a Python list or dict literal); None when the
    reference is neither."""
    try:
        r = _flatten(structured(ref))
    except ValueError:
        return None
    try:
        p = _flatten(structured(pred))
    except ValueError:
        return 0.0
    hits = sum(1 for k, v in p.items() if r.get(k) == v)
    if not p or not r or hits == 0:
        return float(not p and not r)
    precision, recall = hits / len(p), hits / len(r)
    return 2 * precision * recall / (precision + recall)


def rule_scores(reply: str, ref_obs: str, ref_reward: float | None = None, ref_done: bool | None = None) -> dict:
    """Every rule metric of one reply, each in [0, 1]; `format` is 0 when no observation block parsed."""
    pred = parse_prediction(reply)
    scores = {
        "format": float(pred.well_formed),
        "exact": float(pred.obs == ref_obs),
        "edit": edit_similarity(pred.obs, ref_obs),
        "line_f1": line_f1(pred.obs, ref_obs),
        "field_f1": field_f1(pred.obs, ref_obs),
        "outcome": None,
        "length_ratio": len(pred.obs) / max(1, len(ref_obs)),
    }
    if ref_reward is not None:
        scores["outcome"] = float(pred.reward is not None and abs(pred.reward - ref_reward) < 1e-6 and pred.done == ref_done)
    return scores


def hybrid_reward(scores: dict, w: RewardWeights, rubric: float | None = None) -> float:
    """Weighted rule score (normalised to [0, 1]) minus the length penalty, plus the rubric above the floor."""
    if not scores["format"]:
        return 0.0
    parts = [(w.exact, scores["exact"]), (w.edit, scores["edit"]), (w.line_f1, scores["line_f1"]),
             (w.field_f1, scores["field_f1"]), (w.outcome, scores["outcome"])]
    parts = [(wt, s) for wt, s in parts if s is not None and wt > 0]
    total_w = sum(wt for wt, _ in parts)
    rule = sum(wt * s for wt, s in parts) / total_w if total_w else 0.0
    reward = rule - w.length_penalty * max(0.0, scores["length_ratio"] - 1.0)
    if rubric is not None and w.rubric > 0 and rule >= w.rubric_floor:
        reward += w.rubric * rubric
    return reward
