"""RolloutActor: runs a policy LLM against a set of envs (real or simulated by the LWM), writes
trajectory batches to the replay, and reloads weights as learners publish them.

Admission control bounds staleness (learners/admission.py): an actor starts a round of episodes with policy
version p only while p >= v - max_staleness, v the version the learner trains towards, and rounds under way
always finish."""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
import zlib
from dataclasses import dataclass
from typing import Any

import ray

from agentworld.config import AgentConfig, ArmConfig, EnvConfig, GenerationConfig, Runtime
from agentworld.envs import make_env_from
from agentworld.episodes import parsed, play_episodes
from agentworld.schema import rows_to_batch
from agentworld.worldmodel.env import env_threads


@dataclass
class LWMSpec:
    """The LWM a simulating arm steps: its checkpoint and version, how it is prompted and decodes, and the
    real start states its episodes begin from."""
    path: str
    version: int
    history_turns: int
    generation: GenerationConfig
    initial_states: list
    notes: dict  # world_model.prompts: per-domain notes of its instruction


@dataclass
class RolloutSpec:
    """What one rollout actor runs; the driver builds it from the config sections, where every default lives."""
    run_id: str
    arm: ArmConfig
    kind: Any  # the arm's ArmKind (agentworld/arms)
    env: EnvConfig
    domain: str
    agent: AgentConfig
    runtime: Runtime
    seed: int
    policy: str = "random"  # random | oracle | mix:<p> | PATH of a checkpoint
    policy_version: int = 0  # the version of that checkpoint: a resumed learner's update
    actor_id: str = ""
    lwm: LWMSpec | None = None  # for kinds that use the LWM
    policy_engine: Any = None  # engine.shared: the arm's EngineActor handles
    wm_engine: Any = None


@ray.remote(max_concurrency=2)
class RolloutActor:
    """One actor of an arm (or of the LWM's data collection)."""

    def __init__(self, spec: RolloutSpec, replay, registry):
        import torch

        torch.set_num_threads(spec.runtime.ray.torch_threads)
        from learners.weight_sync import make_weight_sync

        self.spec, self.replay, self.registry = spec, replay, registry
        self.sync = make_weight_sync(spec.runtime, registry)
        self.policy_name = f"policy/{spec.arm.name}"
        self._stop = False
        self.episodes = self.steps = 0
        self.rounds_at: dict[int, int] = {}
        self.errors: list[str] = []
        self.policy = self._make_policy()
        self.wm_engine = None
        if spec.kind.uses_lwm:
            self.wm_engine = self._engine(spec.lwm.path, spec.seed + 1, spec.lwm.version, spec.wm_engine)
        self.envs = spec.kind.make_envs(self, spec.arm.envs_per_actor, spec.arm)

    def _make_policy(self):
        from agentworld.policy import LLMPolicy, behaviour_policy

        s = self.spec
        if s.policy in ("random", "oracle") or s.policy.startswith("mix:"):  # scripted: no model
            return behaviour_policy(s.policy, s.seed)
        return LLMPolicy.for_agent(self._engine(s.policy, s.seed, s.policy_version, s.policy_engine), s.agent)

    def _engine(self, path: str, seed: int, version: int, shared):
        """The engine `runtime.engine.inference` names, in this actor, or `shared`, an EngineActor of the arm."""
        from agentworld.models.engine import make_engine

        if shared is not None:
            from actors.engine_actor import RemoteEngine

            return RemoteEngine(shared, path)
        rt = self.spec.runtime  # a rollout actor reserves no GPU: its own engine runs on cpu
        return make_engine(rt.engine.inference, path, seed, version, rt.engine.vllm, rt.dtype)

    # -- what the arm kind builds its envs with (agentworld/arms/base.py: EnvFactory) ------------------
    def real(self):
        return make_env_from(self.spec.env)

    def sim(self, k: int):
        from agentworld.worldmodel.env import WorldModelEnv

        s, lwm = self.spec, self.spec.lwm
        return WorldModelEnv(self.wm_engine, s.env.id, s.domain, lwm.initial_states, max_steps=s.env.max_steps,
                             history_turns=lwm.history_turns, max_new_tokens=lwm.generation.max_new_tokens,
                             temperature=lwm.generation.temperature, sampler=self._control_sampler(k),
                             notes=lwm.notes)

    def _control_sampler(self, k: int):
        """Env k's per-step control sampler (the arm's `control` section); None when uncontrolled."""
        from agentworld.controls import ControlSampler

        c = self.spec.arm.control
        if c.kind == "none":
            return None
        seed = (self.spec.seed * 1_000_003 + zlib.crc32(self.spec.actor_id.encode())) * 101 + k
        return ControlSampler.from_config(c, self.spec.domain, seed)

    def _sync(self) -> None:
        from learners.weight_sync import pull_weights

        if hasattr(self.policy, "engine"):
            pull_weights(self.policy.engine, self.sync, self.policy_name)
        if self.wm_engine is not None:
            pull_weights(self.wm_engine, self.sync, "wm")

    def play_round(self, index: int) -> int:
        """Round `index` of this actor: one episode per env, the whole round to the replay as one batch. Its episodes
        (env seeds, ids and the policy's sampling) are a function of the actor's seed, `index` and the weights, so a
        resumed run replays what an uninterrupted one played. Returns steps written."""
        rows: list[dict[str, Any]] = []
        s = self.spec
        base = index * len(self.envs)
        arm = s.arm.name

        def record(i, t, obs, act, nobs, reward, term, trunc, info):
            rows.append(dict(
                run_id=s.run_id, arm=arm, episode_id=f"{arm}-{s.actor_id}-{base + i}", step=t,
                env_id=s.env.id, domain=s.domain, obs=obs, action=act.action, source=s.kind.row_source(info),
                next_obs=nobs, reward=float(reward), terminated=bool(term), truncated=bool(trunc),
                # the versions that produced this step: a shared engine may move on during a round
                policy_version=self.policy.version, wm_version=None if self.wm_engine is None else self.wm_engine.version,
                actor_id=s.actor_id, control=info.get("control"), shadow_steps=info.get("shadow_steps"),
                fidelity_match=info.get("fidelity_match"), fidelity=info.get("fidelity"),
                logprobs=act.logprobs, choices=act.choices, action_ids=act.ids, parsed=parsed(info), fault=info.get("fault"),
                created_at=time.time()))

        seeds = [s.seed * 1_000_003 + base + i for i in range(len(self.envs))]
        if hasattr(self.policy, "reseed"):
            self.policy.reseed(seeds[0])
        with env_threads(s.arm.env_threads):  # real envs step side by side; LWM envs batch as ever
            play_episodes(self.envs, self.policy, seeds, record)
        ray.get(self.replay.add.remote(rows_to_batch(rows)))  # acknowledged = on disk
        self.episodes += len(self.envs)
        self.steps += len(rows)
        return len(rows)

    def collect_steps(self, steps: int) -> int:
        """Play rounds until at least `steps` transitions are written (the LWM's data budget)."""
        done = rounds = 0
        while done < steps:
            done += self.play_round(rounds)
            rounds += 1
        return done

    def run(self) -> dict:
        """Play rounds under admission control until stopped: a round starts only when the registry admits its
        policy version, and at most `cap` rounds per version: enough for a learner batch, and max_staleness + 1
        at least. Round k at version v is round v * cap + k: a resumed actor, starting again at its checkpoint's
        version, plays the rounds the lost timeline played from there."""
        a, actor_id = self.spec.agent, self.spec.actor_id
        cap = max(a.max_staleness + 1, math.ceil(a.episodes_per_update / self.spec.arm.envs_per_actor))
        failures = 0  # in a row: the wait before the next try doubles with each, up to 30 s
        while not self._stop:
            try:
                self._sync()
                v = self.policy.version
                if self.rounds_at.get(v, 0) >= cap or not ray.get(
                        self.registry.begin_round.remote(self.policy_name, actor_id, v, a.max_staleness)):
                    time.sleep(0.02)
                    continue
                try:
                    self.play_round(v * cap + self.rounds_at.get(v, 0))
                finally:  # after the rows are in the replay: the learner may count this round as landed
                    ray.get(self.registry.end_round.remote(self.policy_name, actor_id))
                self.rounds_at[v] = self.rounds_at.get(v, 0) + 1
                failures = 0
            except Exception:  # one bad round (a replay write error: nothing acknowledged) must not kill the actor
                self.errors.append(traceback.format_exc(limit=3))
                failures += 1
                time.sleep(min(30.0, 0.5 * 2 ** (failures - 1)))
        return self.status()

    def stop(self) -> None:
        self._stop = True

    def status(self) -> dict:
        return {"episodes": self.episodes, "steps": self.steps, "policy_version": self.policy.version,
                "errors": self.errors[-3:]}

    def close(self) -> None:
        """Close the envs: their servers, browsers and sandboxes stop and their scratch dirs go."""
        envs, self.envs = self.envs, []
        for env in envs:
            try:
                env.close()
            except Exception:
                self.errors.append(traceback.format_exc(limit=3))


def retire(actors: list, timeout_s: float = 60.0) -> None:
    """Close the actors' envs, then kill the actors: `ray.kill` alone leaves every env's scratch dir in the temp dir.
    An actor that is dead already, or does not close in `timeout_s`, is killed as it is."""
    refs = [a.close.remote() for a in actors]
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for a in actors:
        ray.kill(a)


def actor_spec(spec: RolloutSpec, k: int) -> RolloutSpec:
    """Actor k of an arm: its own id and seed."""
    return dataclasses.replace(spec, actor_id=f"{spec.arm.name}{k}", seed=spec.seed + k + 1)
