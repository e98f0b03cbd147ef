"""`agentworld/Sim-v0`: the LWM simulator as a gymnasium env with the real env's spaces, so one RLlib policy
runs in both. Importing this module registers it; `gymnasium.make_vec(..., vectorization_mode=
"vector_entry_point")` steps many simulated episodes with one batched generation."""

from __future__ import annotations

import re
import time
from typing import Any

import gymnasium as gym
import numpy as np

from agentworld.envs.gym_text import GymTextEnv
from agentworld.worldmodel.env import WorldModelEnv

SIM_ID = "agentworld/Sim-v0"
_MARK = re.compile(r"\[(.)\]")


def grid_cell(text: str, nrow: int, ncol: int) -> int | None:
    """The `[X]`-marked cell of a FrozenLake text grid as the real env's state index (row * ncol + col), or
    None when the text is not such a grid: an LWM may predict a malformed state, which must not become a
    valid observation."""
    rows = [line for line in text.splitlines() if line.strip() and not line.startswith("  (")]  # "  (Right)" header
    if len(rows) != nrow:
        return None
    found = None
    for r, line in enumerate(rows):
        marks = list(_MARK.finditer(line))
        if len(_MARK.sub(r"\1", line)) != ncol or len(marks) > 1:
            return None
        if marks:
            if found is not None:
                return None
            found = r * ncol + marks[0].start()
    return found


# Real env family -> decoder of a predicted text state into the real env's observation.
DECODERS = {"FrozenLake": lambda text, env: grid_cell(text, *env.unwrapped.desc.shape)}


class SimEnv(gym.Env):
    """One simulated episode at a time: the real env's observation and action spaces, the LWM's next state,
    reward and termination. An unparseable predicted state ends the episode with info["sim_parse_error"]."""

    metadata = {"render_modes": []}

    def __init__(self, model_path: str | None = None, env_id: str = "FrozenLake-v1", env_kwargs: dict | None = None,
                 max_steps: int = 30, history_turns: int = 1, max_new_tokens: int = 64, temperature: float = 0.0,
                 initial_seeds: int = 8, engine=None):
        family = env_id.split("-")[0]
        if family not in DECODERS:
            raise ValueError(f"{SIM_ID}: no decoder of text states into observations for {env_id!r} "
                             f"(have {', '.join(DECODERS)})")
        if engine is None:
            if model_path is None:
                raise ValueError(f"{SIM_ID}: model_path (an LWM checkpoint dir) is required")
            from agentworld.models.hf_engine import HFEngine

            engine = HFEngine(model_path)
        # The real env gives the spaces, the action names and real initial states; it is never stepped.
        self.real = GymTextEnv(env_id, **(env_kwargs or {}))
        self.observation_space = self.real.env.observation_space
        self.action_space = self.real.env.action_space
        initial = list({o: (o, i) for o, i in (self.real.reset(seed=s) for s in range(initial_seeds))}.values())
        self.wm = WorldModelEnv(engine, self.real.env_id, self.real.domain, initial, max_steps=max_steps,
                                history_turns=history_turns, max_new_tokens=max_new_tokens, temperature=temperature)
        self._decode = DECODERS[family]
        self.steps = self.parse_errors = 0
        self._last = 0

    def _encode(self, text: str) -> int | None:
        return self._decode(text, self.real.env)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        text, info = self.wm.reset(seed=int(self.np_random.integers(2**31)))
        obs = self._encode(text)
        if obs is None:
            raise ValueError(f"{SIM_ID}: a real initial state does not decode: {text!r}")
        self._last = obs
        return obs, dict(info, text=text)

    def action_text(self, action) -> str:
        return self.real.actions[int(action)]

    def result(self, text: str, reward: float, terminated: bool, truncated: bool, info: dict):
        """The gymnasium step result for the LWM's text result."""
        self.steps += 1
        obs = self._encode(text)
        info = dict(info, text=text, sim_parse_error=obs is None)
        if obs is None:  # keep the last real-shaped state, and end here: nothing after it is meaningful
            self.parse_errors += 1
            return self._last, 0.0, True, False, info
        self._last = obs
        return obs, float(reward), bool(terminated), bool(truncated), info

    def step(self, action):
        return self.result(*self.wm.step(self.action_text(action)))

    def close(self):
        self.real.close()


class SimVectorEnv(gym.vector.VectorEnv):
    """`num_envs` SimEnvs sharing one engine, stepped by one batched generation; next-step autoreset as
    gymnasium's own vector envs (and RLlib's EnvRunner) expect."""

    def __init__(self, num_envs: int = 1, model_path: str | None = None, engine=None, **kwargs: Any):
        kwargs.pop("max_episode_steps", None)  # gymnasium passes the spec's; SimEnv truncates at max_steps
        if engine is None:
            from agentworld.models.hf_engine import HFEngine

            engine = HFEngine(model_path)
        self.envs = [SimEnv(engine=engine, **kwargs) for _ in range(num_envs)]
        first = self.envs[0]
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = first.observation_space, first.action_space
        self.observation_space = gym.vector.utils.batch_space(first.observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(first.action_space, num_envs)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self.seconds = 0.0  # spent stepping: the simulator's own throughput is steps / seconds

    @property
    def steps(self) -> int:
        return sum(e.steps for e in self.envs)

    @property
    def parse_errors(self) -> int:
        return sum(e.parse_errors for e in self.envs)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        seeds = seed if isinstance(seed, list) else [None if seed is None else seed + i for i in range(self.num_envs)]
        obs, infos = [], {}
        for i, (env, s) in enumerate(zip(self.envs, seeds)):
            o, info = env.reset(seed=s)
            obs.append(o)
            infos = self._add_info(infos, info, i)
        self._needs_reset[:] = False
        return np.array(obs, dtype=np.int64), infos

    def step(self, actions):
        start, n = time.perf_counter(), self.num_envs
        obs, rew = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float64)
        term, trunc = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        infos: dict = {}
        live = [i for i in range(n) if not self._needs_reset[i]]
        texts = WorldModelEnv.step_batch([self.envs[i].wm for i in live],
                                         [self.envs[i].action_text(actions[i]) for i in live])
        results = dict(zip(live, (self.envs[i].result(*r) for i, r in zip(live, texts))))
        for i in range(n):
            if i in results:
                obs[i], rew[i], term[i], trunc[i], info = results[i]
            else:  # ended on the previous step: this step only resets it
                obs[i], info = self.envs[i].reset()
            infos = self._add_info(infos, info, i)
        self._needs_reset = term | trunc
        self.seconds += time.perf_counter() - start
        return obs, rew, term, trunc, infos

    def close_extras(self, **kwargs):
        for env in self.envs:
            env.close()


gym.register(id=SIM_ID, entry_point=SimEnv, vector_entry_point=SimVectorEnv)
