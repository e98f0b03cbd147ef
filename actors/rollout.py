"""RolloutActor: runs a policy LLM against a set of envs (real or simulated by the LWM), writes
trajectory batches to the replay, and reloads weights as learners publish them.

Admission control bounds staleness: an actor starts a round of episodes with policy version p only while
p >= learner_version - max_staleness, and runs at most max_staleness + 1 rounds per version, so
`max_staleness: 0` is the synchronous loop. Rounds already under way always finish."""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Sequence

import ray

from agentworld.schema import rows_to_batch
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


@ray.remote(max_concurrency=2)
class RolloutActor:
    """One actor of an arm. `spec` keys: run_id, arm, actor_id, source, env (EnvConfig as dict),
    envs_per_actor, policy_path (None: uniform random), agent (AgentConfig as dict), seed, torch_threads,
    and for sim arms: wm_path, history_turns, wm_generation, initial_states."""

    def __init__(self, spec: dict, replay, registry):
        import torch

        torch.set_num_threads(spec.get("torch_threads", 1))
        from learners.weight_sync import ObjectStoreWeightSync

        self.spec, self.replay = spec, replay
        self.sync = ObjectStoreWeightSync(registry)
        self.policy_name = f"policy/{spec['arm']}"
        self._stop = False
        self.episodes = self.steps = 0
        self.rounds_at: dict[int, int] = {}
        self.errors: list[str] = []
        self.policy = self._make_policy()
        self.wm_engine = None
        self.envs = self._make_envs()

    def _make_policy(self):
        from agentworld.policy import LLMPolicy, RandomPolicy

        if self.spec.get("policy_path") is None:
            return RandomPolicy(seed=self.spec.get("seed", 0))
        from agentworld.models.hf_engine import HFEngine

        a = self.spec["agent"]
        return LLMPolicy(HFEngine(self.spec["policy_path"], seed=self.spec.get("seed", 0)), mode=a["action_mode"],
                         temperature=a["temperature"], max_action_tokens=a["max_action_tokens"])

    def _make_envs(self):
        from agentworld.envs import make_env

        env = self.spec["env"]
        n = self.spec["envs_per_actor"]
        if self.spec["source"] == "real":
            return [make_env(env["id"], max_steps=env["max_steps"], domain=env.get("domain"), **env.get("kwargs", {}))
                    for _ in range(n)]
        from agentworld.models.hf_engine import HFEngine
        from agentworld.worldmodel.env import WorldModelEnv

        self.wm_engine = HFEngine(self.spec["wm_path"], seed=self.spec.get("seed", 0) + 1)
        self.wm_engine.version = self.spec.get("wm_version", 0)
        gen = self.spec["wm_generation"]
        return [WorldModelEnv(self.wm_engine, env["id"], self.spec["domain"], self.spec["initial_states"],
                              max_steps=env["max_steps"], history_turns=self.spec["history_turns"],
                              max_new_tokens=gen["max_new_tokens"], temperature=gen["temperature"])
                for _ in range(n)]

    def _sync(self) -> None:
        if hasattr(self.policy, "engine"):
            v, sd = self.sync.fetch(self.policy_name, self.policy.version)
            if sd is not None:
                self.policy.engine.load_weights(sd, v)
        if self.wm_engine is not None:
            v, sd = self.sync.fetch("wm", self.wm_engine.version)
            if sd is not None:
                self.wm_engine.load_weights(sd, v)

    def play_round(self) -> int:
        """One episode per env; the whole round goes to the replay as one batch. Returns steps written."""
        rows: list[dict[str, Any]] = []
        base = self.episodes
        s = self.spec
        wm_version = self.wm_engine.version if self.wm_engine is not None else None
        version = self.policy.version

        def record(i, t, obs, act, nobs, reward, term, trunc, info):
            rows.append(dict(
                run_id=s["run_id"], arm=s["arm"], episode_id=f"{s['arm']}-{s['actor_id']}-{base + i}", step=t,
                env_id=s["env"]["id"], domain=s["domain"], source=s["source"], obs=obs, action=act.action,
                next_obs=nobs, reward=float(reward), terminated=bool(term), truncated=bool(trunc),
                policy_version=version, wm_version=wm_version, actor_id=s["actor_id"],
                logprobs=act.logprobs, choices=act.choices, created_at=time.time()))

        seeds = [s.get("seed", 0) * 1_000_003 + base + i for i in range(len(self.envs))]
        play_episodes(self.envs, self.policy, seeds, record)
        ray.get(self.replay.add.remote(rows_to_batch(rows)))  # acknowledged = on disk
        self.episodes += len(self.envs)
        self.steps += len(rows)
        return len(rows)

    def collect_steps(self, steps: int) -> int:
        """Play rounds until at least `steps` transitions are written (the LWM's data budget)."""
        done = 0
        while done < steps:
            done += self.play_round()
        return done

    def run(self) -> dict:
        """Play rounds under admission control until stopped."""
        max_staleness = self.spec["agent"]["max_staleness"]
        while not self._stop:
            try:
                self._sync()
                learner = self.sync.version(self.policy_name)
                v = self.policy.version
                if v < learner - max_staleness or self.rounds_at.get(v, 0) > max_staleness:
                    time.sleep(0.02)
                    continue
                self.play_round()
                self.rounds_at[v] = self.rounds_at.get(v, 0) + 1
            except Exception:  # one bad round must not kill the actor; it is reported in status
                self.errors.append(traceback.format_exc(limit=3))
                time.sleep(0.5)
        return self.status()

    def stop(self) -> None:
        self._stop = True

    def status(self) -> dict:
        return {"episodes": self.episodes, "steps": self.steps, "policy_version": self.policy.version,
                "errors": self.errors[-3:]}

    def close(self) -> None:
        for env in self.envs:
            env.close()
