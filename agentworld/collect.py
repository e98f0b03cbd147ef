"""`agentworld collect`: play a real env with a random, oracle or checkpoint policy and write the
transitions as Arrow trajectories in the replay schema (one durable batch per round of episodes)."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agentworld.episodes import parsed, play_episodes
from agentworld.envs import make_env
from agentworld.policy import behaviour_policy
from agentworld.replay import ReplayStore
from agentworld.schema import rows_to_batch


def collect(env_id: str, policy: str, episodes: int, out: str, *, seed: int = 0, max_steps: int = 50,
            parallel: int = 1, arm: str = "collect", env_kwargs: dict | None = None, console=None) -> dict:
    """Returns counts and the success rate; every row is on disk when it returns."""
    if episodes < 1 or parallel < 1:
        raise ValueError("--episodes and --parallel must be >= 1")
    pol = behaviour_policy(policy, seed, key="--policy")
    envs = [make_env(env_id, max_steps=max_steps, **(env_kwargs or {})) for _ in range(min(parallel, episodes))]
    store = ReplayStore(out)
    run_id = f"collect-{int(time.time())}"
    stats = {"episodes": 0, "steps": 0, "won": 0, "return": 0.0}
    try:
        with Progress(TextColumn(f"collect {env_id} ({policy})"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[steps]} steps, won {task.fields[won]}"), TimeElapsedColumn(),
                      console=console, disable=console is False) as bar:
            task = bar.add_task("collect", total=episodes, steps=0, won=0)
            while stats["episodes"] < episodes:
                batch = envs[: episodes - stats["episodes"]]
                base = stats["episodes"]
                rows = []

                def record(i, t, obs, act, nobs, reward, term, trunc, info):
                    rows.append(dict(
                        run_id=run_id, arm=arm, episode_id=f"{arm}-{seed}-{base + i}", step=t, env_id=env_id,
                        domain=envs[i].domain, source="real", obs=obs, action=act.action, next_obs=nobs,
                        reward=float(reward), terminated=bool(term), truncated=bool(trunc), policy_version=0,
                        actor_id="collect", logprobs=act.logprobs, choices=act.choices, action_ids=act.ids,
                        parsed=parsed(info), fault=info.get("fault"), created_at=time.time()))

                results = play_episodes(batch, pol, [seed * 1_000_003 + base + i for i in range(len(batch))], record)
                store.add(rows_to_batch(rows))
                stats["episodes"] += len(batch)
                stats["steps"] += len(rows)
                stats["won"] += sum(bool(r[1]) for r in results)
                stats["return"] += sum(r[0] for r in results)
                bar.update(task, completed=stats["episodes"], steps=stats["steps"], won=stats["won"])
    finally:
        for env in envs:
            env.close()
    return dict(stats, success=stats["won"] / stats["episodes"], mean_return=stats["return"] / stats["episodes"],
                crashes=sum(getattr(e, "crashes", 0) for e in envs), out=str(out))
