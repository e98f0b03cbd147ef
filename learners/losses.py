"""The RL losses of the agent and of the world model's RL stage, by name (`agent.algorithm`, `world_model.rl.algorithm`).

A `Loss` is two parts: the advantage of a return given its group's statistics, and the clipped surrogate objective
over per-token logprobs. The world model's RL has G sampled predictions of one prompt per group, per-token logprobs
[B, T]; the agent has the episodes of one env_id per group, one summed logprob per row (T = 1: there the token-
and sequence-level ratios coincide). Add one with `LOSSES.register("name", Loss(advantage, objective))`."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch

from agentworld.registry import LOSSES


@dataclass(frozen=True)
class Loss:
    # (return, group mean, group std, group size) -> advantage, in operators only: floats and tensors alike
    advantage: Callable
    # (new, old, mask [B, T], adv [B], clip, weight [B] or None) -> the loss to minimise
    objective: Callable


# ---- advantages --------------------------------------------------------------------------------------

def normalised(r, mean, std, n):
    """The return against its group, in group standard deviations (GRPO)."""
    return (r - mean) / (std + 1e-6)


def centred(r, mean, std, n):
    """The return minus its group's mean: the mean is the baseline, no std normalisation."""
    return r - mean


def leave_one_out(r, mean, std, n):
    """The return minus the mean of the other returns of its group (RLOO); 0 alone in its group."""
    return r - (n * mean - r) / (n - 1) if n > 1 else 0.0 * r


# ---- objectives --------------------------------------------------------------------------------------

def token_clip(new, old, mask, adv, clip, weight=None):
    """Clipped ratio per token, each token taking its row's advantage (and weight), mean over tokens."""
    ratio = torch.exp(new - old)
    a = adv[:, None]
    per_token = torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    if weight is not None:
        per_token = weight[:, None] * per_token
    return -(per_token * mask).sum() / mask.sum().clamp(min=1)


def sequence_clip(new, old, mask, adv, clip, weight=None):
    """Clipped length-normalised sequence ratio (GSPO), mean over rows."""
    ratio = torch.exp(((new - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1))
    per_row = torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    return -(per_row if weight is None else weight * per_row).mean()


GRPO = LOSSES.register("grpo", Loss(normalised, token_clip))
GSPO = LOSSES.register("gspo", Loss(normalised, sequence_clip))
PPO = LOSSES.register("ppo", Loss(centred, token_clip))
RLOO = LOSSES.register("rloo", Loss(leave_one_out, token_clip))


# ---- the agent's groups, and the KL term ------------------------------------------------------------

def group_advantages(rows: list[dict], loss: Loss = GRPO) -> list[float]:
    """Per replay row (transition), its episode's advantage against the other episodes of its env_id;
    0 where a group has no spread."""
    returns: dict[str, float] = defaultdict(float)
    group_of: dict[str, str] = {}
    for r in rows:
        returns[r["episode_id"]] += r["reward"]
        group_of[r["episode_id"]] = r["env_id"]
    groups: dict[str, list[str]] = defaultdict(list)
    for ep, g in group_of.items():
        groups[g].append(ep)
    adv = {}
    for eps in groups.values():
        # Python floats and the population std, as the agent always had them (the world model's RL uses torch's
        # unbiased std on float32): each user's numbers stay bit for bit what they were
        rs = [returns[ep] for ep in eps]
        mean = sum(rs) / len(rs)
        std = math.sqrt(sum((x - mean) ** 2 for x in rs) / len(rs))
        for ep, x in zip(eps, rs):
            adv[ep] = 0.0 if std < 1e-8 else loss.advantage(x, mean, std, len(rs))
    return [adv[r["episode_id"]] for r in rows]


def kl_penalty(new, ref, mask) -> torch.Tensor:
    """Mean per-token KL(new || ref) on the sampled tokens, by the unbiased, non-negative k3 estimator."""
    d = ref - new
    return ((torch.exp(d) - d - 1) * mask).sum() / mask.sum().clamp(min=1)
