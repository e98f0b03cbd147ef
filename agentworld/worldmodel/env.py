"""WorldModelEnv: the LWM as an environment with the real envs' protocol. It keeps the episode history,
builds the prompt, generates, and parses the next observation, reward and termination from the model. Each step's
menu comes from the predicted episode through the env family's `menu` (agentworld/envs/base.py: Menu), as the real
env's does; a family without one (a fixed action set) keeps its start state's."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Sequence

from agentworld.envs import family_module, menu_of
from agentworld.worldmodel.prompt import STATEFUL, build_messages, parse_prediction, render_state, window, wm_system_prompt


# What a simulated episode keeps of its real start state's info: what stays fixed for an episode
EPISODE_INFO = ("task", "task_key", "open_actions")


class WorldModelEnv:
    """One simulated episode at a time. Start states are drawn from real initial observations and their info;
    `step_batch` advances many of these envs with one batched generation."""

    batched = True  # step_all steps these together, one generation per engine

    def __init__(self, engine, env_id: str, domain: str, initial_states: Sequence[tuple[str, dict]],
                 max_steps: int = 50, history_turns: int = 1, max_new_tokens: int = 96,
                 temperature: float = 0.0, control: str | None = None, sampler=None, notes: dict | None = None):
        if not initial_states:
            raise ValueError("WorldModelEnv needs at least one real initial observation")
        self.engine, self.env_id, self.domain = engine, env_id, domain
        self.initial_states = list(initial_states)
        self.max_steps, self.history_turns = max_steps, history_turns
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.control = control  # free text in the system prompt that steers the simulation; None: none
        # per step: sampler() gives each step's control (a controls.Control, text, or None: `control`);
        # next_control, when set, is the next step's control instead (then cleared)
        self.sampler, self.step_control, self.next_control = sampler, None, None
        self.episode_control = None  # a sampler drawing per episode: this episode's control
        self.notes = notes  # world_model.prompts
        self.system = wm_system_prompt(env_id, domain, control, notes)
        self.menu = menu_of(env_id)
        self.family = family_module(env_id)  # its fictional_task / fictional_reward, where it has them (search)
        self._reset_state()

    def _reset_state(self):
        self.observations: list[str] = []
        self.actions: list[str] = []
        self.replies: list[str] = []
        self.t, self.score, self.info = 0, 0.0, {}

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        return self.start(*random.Random(seed).choice(self.initial_states))

    def start(self, obs: str, info: dict) -> tuple[str, dict[str, Any]]:
        """Begin an episode at the real state `obs` with its `info`."""
        self._reset_state()
        self.episode_control = None
        if self.sampler is not None and getattr(self.sampler, "per", "step") == "episode":
            self.episode_control = self.sampler()
            if getattr(self.episode_control, "question", "") and hasattr(self.family, "fictional_task"):
                obs = self.family.fictional_task(obs, self.episode_control.question)  # the world asks its question
        self.observations.append(obs)
        keep = EPISODE_INFO if self.menu is not None else EPISODE_INFO + ("admissible_actions",)
        self.info = {k: info[k] for k in keep if k in info}
        return obs, self._info(False)

    def _info(self, ended: bool) -> dict[str, Any]:
        """The episode's fixed info, and the menu of the predicted episode so far."""
        if self.menu is None:
            return dict(self.info)
        return dict(self.info, admissible_actions=[] if ended else self.menu(self.observations, self.actions))

    def prompt(self, action: str) -> str:
        """The prompt for `action`; this settles the step's control (observe() reads it): next_control, else
        the sampler's draw."""
        if self.next_control is not None:
            self.step_control, self.next_control = self.next_control, None
        elif getattr(self.sampler, "per", "step") == "episode":
            self.step_control = self.episode_control
        else:
            self.step_control = self.sampler() if self.sampler is not None else None
        text = getattr(self.step_control, "text", self.step_control)
        system = wm_system_prompt(self.env_id, self.domain, text, self.notes) if text else self.system
        state, turns = window(self.observations, self.actions + [action], self.replies, self.history_turns,
                              self.domain in STATEFUL, self.domain)
        return self.engine.render(build_messages(system, state, turns))

    def observe(self, action: str, text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Advance the episode with the model's reply `text` to `action`."""
        pred = parse_prediction(text)
        obs = pred.obs
        reward = pred.reward if pred.reward is not None else 0.0
        terminated = bool(pred.done)
        answer = getattr(self.step_control, "answer", "")
        if answer and hasattr(self.family, "fictional_reward"):  # a generated fictional world scores its answer itself
            scored = self.family.fictional_reward(action, answer)
            if scored is not None:  # the rule's verdict, not a simulated result: no control to obey on this step
                obs, reward, terminated = scored
                self.step_control = None
        before = self.observations[-1]
        self.t += 1
        self.score += reward
        self.actions.append(action)
        self.observations.append(obs)
        self.replies.append(render_state(obs, reward, terminated))
        truncated = not terminated and self.t >= self.max_steps
        info = dict(self._info(terminated or truncated), score=self.score, won=terminated and reward > 0,
                    wm_version=self.engine.version)
        if not pred.well_formed:
            info["wm_format_error"] = True
        control = self.step_control if self.step_control is not None else self.control
        if control:
            from agentworld.controls import parse_control

            c = parse_control(control) if isinstance(control, str) else control
            info["control"] = getattr(control, "text", control)
            if c is not None:  # the labeler (or the control's own check) on the simulated transition
                info["control_obeyed"] = c.obeyed(before, obs, reward, terminated, truncated)
        return obs, reward, terminated, truncated, info

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


# How many real envs step_all and reset_all run at once here: arms.<i>.env_threads in a rollout actor, else 1
_THREADS: ContextVar[int] = ContextVar("env_threads", default=1)


@contextmanager
def env_threads(n: int):
    """Within it, step_all and reset_all run up to `n` real envs at once, each in a thread: a real env mostly waits on
    its process (a shell, a JVM, a browser, an MCP server), so threads overlap those waits; 1 is one after another."""
    token = _THREADS.set(n)
    try:
        yield
    finally:
        _THREADS.reset(token)


def _each(call: Callable, envs: Sequence, args: Sequence, idx: Sequence[int]) -> list:
    """`call(envs[i], args[i])` for i in `idx`, results in that order, up to env_threads at a time. Every call has
    ended when this returns or raises; it raises the first failure in `idx` order, the one the serial loop meets."""
    n = min(_THREADS.get(), len(idx))
    if n <= 1:
        return [call(envs[i], args[i]) for i in idx]
    with ThreadPoolExecutor(n, thread_name_prefix="env") as pool:
        futures = [pool.submit(call, envs[i], args[i]) for i in idx]
        return [f.result() for f in futures]  # on a failure, leaving the pool waits for the calls still running


def step_all(envs: Sequence, actions: Sequence[str]) -> list:
    """Step a mixed list of envs: world-model envs in one batch per engine, real envs up to env_threads at once."""
    results: list = [None] * len(envs)
    groups: dict[tuple, list[int]] = {}
    real: list[int] = []
    for i, env in enumerate(envs):
        if getattr(env, "batched", False):  # LWM-backed: one batched generation per engine and env type
            groups.setdefault((type(env), id(env.engine)), []).append(i)
        else:
            real.append(i)
    for i, r in zip(real, _each(lambda env, action: env.step(action), envs, actions, real)):
        results[i] = r
    for (kind, _), idx in groups.items():
        for i, r in zip(idx, kind.step_batch([envs[i] for i in idx], [actions[i] for i in idx])):
            results[i] = r
    return results


def reset_all(envs: Sequence, seeds: Sequence[int | None]) -> list:
    """`env.reset(seed=...)` of each env, in order: real envs up to env_threads at once (a reset starts a shell, a
    page, a task's files), world-model envs here (a hybrid env's resets read the gate its actor's envs share)."""
    real = [i for i, env in enumerate(envs) if not getattr(env, "batched", False)]
    done = dict(zip(real, _each(lambda env, seed: env.reset(seed=seed), envs, seeds, real)))
    return [done[i] if i in done else env.reset(seed=seeds[i]) for i, env in enumerate(envs)]
