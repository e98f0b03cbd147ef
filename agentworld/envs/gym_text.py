"""GymTextEnv: any gymnasium env with an `ansi` render, as a text env. The observation is the render with
ANSI codes stripped; styled cells (FrozenLake's agent, Taxi's taxi and passenger) are first rewritten into
visible marks, since stripping the colour alone would erase them."""

from __future__ import annotations

import re
import string
from typing import Any

import gymnasium as gym

from agentworld.envs.base import unparsed_info

# Names of discrete actions, in the env's own order; other envs fall back to "0".."n-1".
ACTION_NAMES = {
    "FrozenLake": ["left", "down", "right", "up"],
    "CliffWalking": ["up", "right", "down", "left"],
    "Taxi": ["south", "north", "east", "west", "pickup", "dropoff"],
}

_STYLED = re.compile(r"\x1b\[([0-9;]*)m(.*?)\x1b\[0m", re.S)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def default_mark(code: str) -> str:
    """Background colours (40-47) mark with [X], any other style with {X}."""
    return "[{}]" if any(c.isdigit() and 40 <= int(c) <= 47 for c in code.split(";") if c) else "{{{}}}"


def ansi_to_text(render: str, style_marks: dict[str, str] | None = None) -> str:
    marks = style_marks or {}
    text = _STYLED.sub(lambda m: marks.get(m.group(1), default_mark(m.group(1))).format(m.group(2)), render)
    return _ANSI.sub("", text).strip("\n")


class GymTextEnv:
    def __init__(self, gym_id: str, max_steps: int | None = None, domain: str = "gridworld",
                 style_marks: dict[str, str] | None = None, **kwargs: Any):
        self.env_id, self.domain = f"gymnasium:{gym_id}", domain
        try:
            self.env = gym.make(gym_id, render_mode="ansi", **kwargs)
        except TypeError as e:
            raise ValueError(f"{self.env_id}: bad env kwargs {sorted(kwargs)}: {e}") from e
        if not isinstance(self.env.action_space, gym.spaces.Discrete):
            raise ValueError(f"{self.env_id}: only Discrete action spaces have a text form")
        n = int(self.env.action_space.n)
        names = ACTION_NAMES.get(gym_id.split("-")[0])
        self.actions = names if names and len(names) == n else [str(i) for i in range(n)]
        self.max_steps, self.style_marks = max_steps, style_marks
        self.t, self.score = 0, 0.0

    def _obs(self) -> str:
        return ansi_to_text(self.env.render(), self.style_marks)

    def _info(self, **extra) -> dict[str, Any]:
        return {"admissible_actions": list(self.actions), "score": self.score, **extra}

    def parse(self, action: Any) -> int | None:
        if not isinstance(action, str):
            return None
        a = action.strip().strip(string.punctuation + string.whitespace).lower()
        if a in self.actions:
            return self.actions.index(a)
        if a.isdigit() and int(a) < len(self.actions):
            return int(a)
        return None

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.env.reset(seed=seed)
        self.t, self.score = 0, 0.0
        return self._obs(), self._info(won=False)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        a = self.parse(action)
        if a is None:
            err = f"Invalid action {action!r}. Valid actions: {', '.join(self.actions)}."
            return f"{err}\n{self._obs()}", 0.0, False, truncated, self._info(won=False, **unparsed_info(err))
        _, reward, terminated, gym_truncated, _ = self.env.step(a)
        self.score += float(reward)
        won = bool(terminated and reward > 0)
        return self._obs(), float(reward), bool(terminated), bool(truncated or gym_truncated), self._info(won=won)

    def close(self) -> None:
        self.env.close()


def check(name: str) -> None:
    if name not in gym.envs.registry:
        raise ValueError(f"unknown env id 'gymnasium:{name}': gymnasium has no env {name!r}")


def make(name: str, **kwargs: Any) -> GymTextEnv:
    return GymTextEnv(name, **kwargs)
