"""RolloutActor: runs a policy LLM against a set of envs (real or simulated by the LWM), writes
trajectory batches to the replay, and reloads weights as learners publish them.

Admission control bounds staleness: an actor starts a round of episodes with policy version p only while
p >= v - max_staleness, v the version the learner trains towards, and the learner waits for rounds under way
that would otherwise be consumed too stale (learners/weight_sync.py, WeightRegistry). So every row is trained
on at most max_staleness versions after the one that produced it, `max_staleness: 0` is the synchronous loop,
and rounds under way always finish."""

from __future__ import annotations

import math
import time
import traceback
import zlib
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
    and for sim arms: wm_path, history_turns, wm_generation, initial_states; for hybrid arms also hybrid
    (HybridConfig as dict: agentworld/worldmodel/hybrid.py)."""

    def __init__(self, spec: dict, replay, registry):
        import torch

        torch.set_num_threads(spec.get("torch_threads", 1))
        from learners.weight_sync import make_weight_sync

        self.spec, self.replay, self.registry = spec, replay, registry
        self.sync = make_weight_sync(spec.get("engine"), registry)
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
        a = self.spec["agent"]
        engine = self._engine(self.spec["policy_path"], self.spec.get("seed", 0), 0, self.spec.get("policy_engine"))
        return LLMPolicy(engine, mode=a["action_mode"], temperature=a["temperature"],
                         max_action_tokens=a["max_action_tokens"])

    def _engine(self, path: str, seed: int, version: int, shared):
        """The engine `spec.engine.inference` names, in this actor, or `shared`, an EngineActor of the arm."""
        from agentworld.models.engine import make_engine

        if shared is not None:
            from actors.engine_actor import RemoteEngine

            return RemoteEngine(shared, path)
        e = self.spec.get("engine") or {}
        return make_engine(e.get("inference", "hf"), path, seed, version, e.get("vllm"))

    def _make_envs(self):
        from agentworld.envs import make_env

        env = self.spec["env"]
        n = self.spec["envs_per_actor"]
        if self.spec["source"] == "real":
            return [make_env(env["id"], max_steps=env["max_steps"], domain=env.get("domain"), **env.get("kwargs", {}))
                    for _ in range(n)]
        from agentworld.worldmodel.env import WorldModelEnv

        self.wm_engine = self._engine(self.spec["wm_path"], self.spec.get("seed", 0) + 1, self.spec.get("wm_version", 0),
                                      self.spec.get("wm_engine"))
        gen = self.spec["wm_generation"]
        sims = [WorldModelEnv(self.wm_engine, env["id"], self.spec["domain"], self.spec["initial_states"],
                              max_steps=env["max_steps"], history_turns=self.spec["history_turns"],
                              max_new_tokens=gen["max_new_tokens"], temperature=gen["temperature"],
                              sampler=self._control_sampler(k))
                for k in range(n)]
        if self.spec["source"] != "hybrid":
            return sims
        from agentworld.worldmodel.hybrid import FidelityGate, HybridEnv

        h = dict(self.spec.get("hybrid") or {})
        shadow_fraction = h.pop("shadow_fraction", 0.25)
        self.gate = FidelityGate(**h)  # one gate per actor: all its envs are the same env
        return [HybridEnv(sim, make_env(env["id"], max_steps=env["max_steps"], domain=env.get("domain"),
                                        **env.get("kwargs", {})), self.gate, shadow_fraction) for sim in sims]

    def _control_sampler(self, k: int):
        """Env k's per-step control sampler (the arm's `control` section); None when uncontrolled."""
        from agentworld.controls import ControlSampler

        c = self.spec.get("control") or {}
        if c.get("kind", "none") == "none":
            return None
        seed = (self.spec.get("seed", 0) * 1_000_003 + zlib.crc32(self.spec["actor_id"].encode())) * 101 + k
        return ControlSampler.from_config(c, self.spec["domain"], seed)

    def _sync(self) -> None:
        from learners.weight_sync import pull_weights

        if hasattr(self.policy, "engine"):
            pull_weights(self.policy.engine, self.sync, self.policy_name)
        if self.wm_engine is not None:
            pull_weights(self.wm_engine, self.sync, "wm")

    def play_round(self) -> int:
        """One episode per env; the whole round goes to the replay as one batch. Returns steps written."""
        rows: list[dict[str, Any]] = []
        base = self.episodes
        s = self.spec

        def record(i, t, obs, act, nobs, reward, term, trunc, info):
            rows.append(dict(
                run_id=s["run_id"], arm=s["arm"], episode_id=f"{s['arm']}-{s['actor_id']}-{base + i}", step=t,
                env_id=s["env"]["id"], domain=s["domain"], obs=obs, action=act.action,
                source=info["source"] if s["source"] == "hybrid" else s["source"],  # hybrid: routed steps are real
                next_obs=nobs, reward=float(reward), terminated=bool(term), truncated=bool(trunc),
                # the versions that produced this step: a shared engine may move on during a round
                policy_version=self.policy.version, wm_version=None if self.wm_engine is None else self.wm_engine.version,
                actor_id=s["actor_id"], control=info.get("control"), shadow_steps=info.get("shadow_steps"),
                fidelity_match=info.get("fidelity_match"), fidelity=info.get("fidelity"),
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
        """Play rounds under admission control until stopped: a round starts only when the registry admits its
        policy version (WeightRegistry.begin_round), and at most `cap` rounds per version: enough for a learner
        batch, and max_staleness + 1 at least."""
        a, actor_id = self.spec["agent"], self.spec["actor_id"]
        max_staleness = a["max_staleness"]
        cap = max(max_staleness + 1, math.ceil(a["episodes_per_update"] / self.spec["envs_per_actor"]))
        while not self._stop:
            try:
                self._sync()
                v = self.policy.version
                if self.rounds_at.get(v, 0) >= cap or not ray.get(
                        self.registry.begin_round.remote(self.policy_name, actor_id, v, max_staleness)):
                    time.sleep(0.02)
                    continue
                try:
                    self.play_round()
                finally:  # after the rows are in the replay: the learner may count this round as landed
                    ray.get(self.registry.end_round.remote(self.policy_name, actor_id))
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
