"""Episodes, stepped together: what rollout actors, learners' evaluations and `agentworld collect` all play."""

from __future__ import annotations

from typing import Callable, Sequence

from agentworld.worldmodel.env import reset_all, step_all


def parsed(info: dict) -> bool:
    """Whether the env could parse the action into a well-formed action of its family: an env answers an unparseable
    one with an error observation and `unparsed` in its info (agentworld/envs/base.py unparsed_info). An action that
    parsed and then failed (a tool error, a missing file) and a crashed env's truncation count as parsed."""
    return not info.get("unparsed")


def play_episodes(envs: Sequence, policy, seeds: Sequence[int], on_step: Callable[..., None] | None = None):
    """Run one episode in each env, stepping all of them together; the policy sees each episode so far. Returns
    per-episode (return, won, length, parsed actions). `on_step(i, t, obs, act, next_obs, reward, terminated,
    truncated, info)`."""
    obs, infos = zip(*reset_all(envs, seeds))
    obs, infos = list(obs), list(infos)
    histories: list[list[tuple[str, str]]] = [[] for _ in envs]
    active = list(range(len(envs)))
    stats = [[0.0, False, 0, 0] for _ in envs]
    while active:
        acts = policy.act([envs[i].env_id for i in active], [obs[i] for i in active], [infos[i] for i in active],
                          envs=[envs[i] for i in active], histories=[histories[i] for i in active])
        results = step_all([envs[i] for i in active], [a.action for a in acts])
        still = []
        for i, act, (nobs, reward, term, trunc, info) in zip(active, acts, results):
            if on_step is not None:
                on_step(i, stats[i][2], obs[i], act, nobs, reward, term, trunc, info)
            stats[i][0] += reward
            stats[i][2] += 1
            stats[i][1] = bool(info.get("won", False))
            stats[i][3] += parsed(info)
            histories[i].append((obs[i], act.action))
            obs[i], infos[i] = nobs, info
            if not (term or trunc):
                still.append(i)
        active = still
    return [tuple(s) for s in stats]


def evaluate(envs: Sequence, policy, episodes: int, seed0: int = 10_000,
             on_step: Callable[..., None] | None = None) -> dict:
    """Mean return and success of `policy` over `episodes` episodes, in batches of len(envs), the share of its
    actions the env could parse, and the steps that met an injected real fault. `on_step`: as play_episodes'."""
    results, faults = [], [0]

    def count(i, t, obs, act, nobs, reward, term, trunc, info):
        faults[0] += bool(info.get("fault"))
        if on_step is not None:
            on_step(i, t, obs, act, nobs, reward, term, trunc, info)

    for start in range(0, episodes, len(envs)):
        n = min(len(envs), episodes - start)
        results += play_episodes(envs[:n], policy, [seed0 + start + k for k in range(n)], count)
    return {
        "success": sum(r[1] for r in results) / len(results),
        "return": sum(r[0] for r in results) / len(results),
        "episodes": len(results),
        "length": sum(r[2] for r in results) / len(results),
        "parse_rate": sum(r[3] for r in results) / max(1, sum(r[2] for r in results)),
        "faults": faults[0],  # steps a real env's fault layer injected a fault into (agentworld/envs/mcp_tools.py)
    }
