"""Episodes, stepped together: what rollout actors, learners' evaluations and `agentworld collect` all play."""

from __future__ import annotations

from typing import Callable, Sequence

from agentworld.worldmodel.env import step_all


def play_episodes(envs: Sequence, policy, seeds: Sequence[int], on_step: Callable[..., None] | None = None):
    """Run one episode in each env, stepping all of them together. Returns per-episode
    (return, won, length). `on_step(i, t, obs, act, next_obs, reward, terminated, truncated, info)`."""
    obs, infos = zip(*[env.reset(seed=s) for env, s in zip(envs, seeds)])
    obs, infos = list(obs), list(infos)
    active = list(range(len(envs)))
    stats = [[0.0, False, 0] for _ in envs]
    while active:
        acts = policy.act([envs[i].env_id for i in active], [obs[i] for i in active], [infos[i] for i in active],
                          envs=[envs[i] for i in active])
        results = step_all([envs[i] for i in active], [a.action for a in acts])
        still = []
        for i, act, (nobs, reward, term, trunc, info) in zip(active, acts, results):
            if on_step is not None:
                on_step(i, stats[i][2], obs[i], act, nobs, reward, term, trunc, info)
            stats[i][0] += reward
            stats[i][2] += 1
            stats[i][1] = bool(info.get("won", False))
            obs[i], infos[i] = nobs, info
            if not (term or trunc):
                still.append(i)
        active = still
    return [tuple(s) for s in stats]


def evaluate(envs: Sequence, policy, episodes: int, seed0: int = 10_000) -> dict:
    """Mean return and success of `policy` over `episodes` episodes, in batches of len(envs)."""
    results = []
    for start in range(0, episodes, len(envs)):
        n = min(len(envs), episodes - start)
        results += play_episodes(envs[:n], policy, [seed0 + start + k for k in range(n)])
    return {
        "success": sum(r[1] for r in results) / len(results),
        "return": sum(r[0] for r in results) / len(results),
        "episodes": len(results),
        "length": sum(r[2] for r in results) / len(results),
    }
