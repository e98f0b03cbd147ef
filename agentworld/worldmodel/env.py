"""WorldModelEnv: the LWM as an environment with the real envs' protocol. It keeps the episode history,
builds the prompt, generates, and parses the next observation, reward and termination from the model."""

from __future__ import annotations

import random
from typing import Any, Sequence

from agentworld.worldmodel.prompt import build_messages, parse_prediction, render_state, window, wm_system_prompt


class WorldModelEnv:
    """One simulated episode at a time. Start states are drawn from real initial observations;
    `step_batch` advances many of these envs with one batched generation."""

    source = "sim"

    def __init__(self, engine, env_id: str, domain: str, initial_states: Sequence[tuple[str, dict]],
                 max_steps: int = 50, history_turns: int = 1, max_new_tokens: int = 96,
                 temperature: float = 0.0):
        if not initial_states:
            raise ValueError("WorldModelEnv needs at least one real initial observation")
        self.engine, self.env_id, self.domain = engine, env_id, domain
        self.initial_states = list(initial_states)
        self.max_steps, self.history_turns = max_steps, history_turns
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.system = wm_system_prompt(env_id, domain)
        self._reset_state()

    def _reset_state(self):
        self.observations: list[str] = []
        self.actions: list[str] = []
        self.replies: list[str] = []
        self.t, self.score, self.info = 0, 0.0, {}

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self._reset_state()
        obs, info = random.Random(seed).choice(self.initial_states)
        self.observations.append(obs)
        self.info = dict(info)
        return obs, dict(info)

    def prompt(self, action: str) -> str:
        state, turns = window(self.observations, self.actions + [action], self.replies, self.history_turns)
        return self.engine.render(build_messages(self.system, state, turns))

    def observe(self, action: str, text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Advance the episode with the model's reply `text` to `action`."""
        pred = parse_prediction(text)
        reward = pred.reward if pred.reward is not None else 0.0
        terminated = bool(pred.done)
        self.t += 1
        self.score += reward
        self.actions.append(action)
        self.observations.append(pred.obs)
        self.replies.append(render_state(pred.obs, reward, terminated))
        truncated = not terminated and self.t >= self.max_steps
        info = dict(self.info, score=self.score, won=terminated and reward > 0, wm_version=self.engine.version)
        if not pred.well_formed:
            info["wm_format_error"] = True
        return pred.obs, reward, terminated, truncated, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        return self.step_batch([self], [action])[0]

    @staticmethod
    def step_batch(envs: Sequence["WorldModelEnv"], actions: Sequence[str]):
        """Step several sim envs that share one engine with a single batched generation."""
        if not envs:
            return []
        e0 = envs[0]
        prompts = [env.prompt(a) for env, a in zip(envs, actions)]
        gens = e0.engine.generate(prompts, max_new_tokens=e0.max_new_tokens, temperature=e0.temperature)
        return [env.observe(a, g.text) for env, a, g in zip(envs, actions, gens)]

    def close(self) -> None:
        pass


def step_all(envs: Sequence, actions: Sequence[str]) -> list:
    """Step a mixed list of envs: world-model envs in one batch per engine, real envs one by one."""
    results: list = [None] * len(envs)
    groups: dict[int, list[int]] = {}
    for i, env in enumerate(envs):
        if isinstance(env, WorldModelEnv):
            groups.setdefault(id(env.engine), []).append(i)
        else:
            results[i] = env.step(actions[i])
    for idx in groups.values():
        for i, r in zip(idx, WorldModelEnv.step_batch([envs[i] for i in idx], [actions[i] for i in idx])):
            results[i] = r
    return results
