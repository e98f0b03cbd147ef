"""BabyAI levels (MiniGrid) as text envs. MiniGrid has no text form, so `describe` verbalizes the agent's
7x7 egocentric view: the mission, the way it faces, each visible object relative to it, the nearest walls,
and what it carries. The oracle is MiniGrid's BabyAIBot, replanned in the current state after every step.

A seed generates the level's instance. With `split` (`train` or `heldout`) a seed s is in the split
`split_of(f"{gym_id(name)}:{s}")`, and reset(seed) plays the split's (seed mod SPLIT_SEEDS)-th seed."""

from __future__ import annotations

import functools
import itertools
import random
import re
import string
from typing import Any

import gymnasium as gym
import minigrid  # noqa: F401  (registers the BabyAI-* ids)
from minigrid.utils.baby_ai_bot import BabyAIBot

from agentworld.envs.base import split_of, unparsed_info

ACTIONS = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]  # MiniGrid's Actions order
FACING = ["east", "south", "west", "north"]  # MiniGrid's agent_dir order
SPLITS = ("train", "heldout")
SPLIT_SEEDS = 10_000  # a split's instances: its first 10,000 seeds


def gym_id(name: str) -> str:
    """`GoToLocal` -> `BabyAI-GoToLocal-v0`; a name with its own version (`GoToObjS6-v1`) keeps it."""
    return f"BabyAI-{name}" if re.search(r"-v\d+$", name) else f"BabyAI-{name}-v0"


@functools.cache
def split_seeds(level: str, split: str) -> tuple[int, ...]:
    """The split's seeds of a level (its gym id): the first SPLIT_SEEDS integers s >= 0 with
    `split_of(f"{level}:{s}") == split`."""
    return tuple(itertools.islice((s for s in itertools.count() if split_of(f"{level}:{s}") == split), SPLIT_SEEDS))


def _where(ahead: int, side: int) -> str:
    steps = f"{ahead} step{'s' if ahead != 1 else ''} ahead" if ahead else ""
    lateral = f"{abs(side)} to the {'right' if side > 0 else 'left'}" if side else ""
    return " and ".join(p for p in (steps, lateral) if p)


def _name(obj) -> str:
    if obj.type == "door":
        state = "open" if obj.is_open else "locked" if obj.is_locked else "closed"
        return f"{'an' if state == 'open' else 'a'} {state} {obj.color} door"
    return f"a {obj.color} {obj.type}"


def describe(env) -> str:
    """The mission and the agent's partial view in words, relative to the agent (deterministic)."""
    u = env.unwrapped
    grid, visible = u.gen_obs_grid()
    mid, back = grid.width // 2, grid.height - 1  # the agent's cell in its own view; it faces -j, +i is right

    def wall(cells) -> int | None:  # steps to the first visible wall along a line of view cells
        return next((d for d, (i, j) in enumerate(cells, 1)
                     if visible[i, j] and grid.get(i, j) is not None and grid.get(i, j).type == "wall"), None)

    seen = []
    for j in range(grid.height):
        for i in range(grid.width):
            obj = grid.get(i, j)
            if obj is not None and obj.type != "wall" and visible[i, j] and (i, j) != (mid, back):
                ahead, side = back - j, i - mid
                seen.append((ahead + abs(side), ahead, side, f"{_name(obj)} {_where(ahead, side)}"))
    # Only the nearest wall straight ahead, left and right: the room's shape without listing every brick.
    sight_lines = {(1, 0): [(mid, j) for j in range(back - 1, -1, -1)],
                   (0, -1): [(i, back) for i in range(mid - 1, -1, -1)],
                   (0, 1): [(i, back) for i in range(mid + 1, grid.width)]}
    walls = [_where(d * ahead, d * side) for (ahead, side), cells in sight_lines.items() if (d := wall(cells))]
    lines = [f"Mission: {u.mission}.", f"You are facing {FACING[u.agent_dir]}."]
    lines.append("You see " + ("; ".join(s[-1] for s in sorted(seen)) if seen else "no objects") + ".")
    if walls:
        lines.append(f"Nearest walls: {', '.join(walls)}.")
    front, under = u.grid.get(*u.front_pos), u.grid.get(*u.agent_pos)
    if under is not None:  # an open door the agent stands in
        lines.append(f"You stand in {_name(under)}.")
    lines.append(f"Directly in front of you: {_name(front) if front else 'nothing'}.")
    lines.append(f"You are carrying {_name(u.carrying)}." if u.carrying else "You are carrying nothing.")
    return "\n".join(lines)


class BabyAIEnv:
    def __init__(self, name: str, max_steps: int | None = None, domain: str = "embodied", split: str | None = None,
                 **kwargs: Any):
        if split is not None and split not in SPLITS:
            raise ValueError(f"babyai:{name}: split must be train or heldout, not {split!r}")
        self.seeds = split_seeds(gym_id(name), split) if split is not None else None
        self.env_id, self.domain, self.split, self.seed = f"babyai:{name}", domain, split, None
        self.env = gym.make(gym_id(name), **kwargs)
        self.max_steps = max_steps
        self.t, self.score, self.bot, self._advice = 0, 0.0, None, None

    def _info(self, **extra) -> dict[str, Any]:
        return {"admissible_actions": list(ACTIONS), "score": self.score, **extra}

    def _replan(self, action_taken: int | None = None) -> None:
        # The bot keeps a map of what it has seen, so it must see every step; off-policy actions can leave
        # it stuck (it asserts, or gives up once a box is opened): then the oracle is silent.
        if self.bot is None:
            return
        try:
            self._advice = ACTIONS[int(self.bot.replan(action_taken))]
        except Exception:
            self.bot, self._advice = None, None

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        if self.seeds is not None:  # seed None: a random seed of the split
            seed = self.seeds[random.randrange(len(self.seeds)) if seed is None else seed % len(self.seeds)]
        self.seed = seed
        self.env.reset(seed=seed)
        self.t, self.score = 0, 0.0
        self.bot = BabyAIBot(self.env)
        self._replan()
        return describe(self.env), self._info(won=False)

    def oracle_action(self) -> str | None:
        return self._advice

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        a = action.strip(string.punctuation + string.whitespace).lower() if isinstance(action, str) else None
        if a not in ACTIONS:
            err = f"Invalid action {action!r}. Valid actions: {', '.join(ACTIONS)}."
            return f"{err}\n{describe(self.env)}", 0.0, False, truncated, self._info(won=False, **unparsed_info(err))
        _, reward, terminated, gym_truncated, _ = self.env.step(ACTIONS.index(a))
        self.score += float(reward)
        self._replan(ACTIONS.index(a))
        won = bool(terminated and reward > 0)
        return describe(self.env), float(reward), bool(terminated), bool(truncated or gym_truncated), self._info(won=won)

    def close(self) -> None:
        self.env.close()
        self.bot = None


def check(name: str) -> None:
    if not name or gym_id(name) not in gym.envs.registry:
        levels = sorted(k[len("BabyAI-"):-len("-v0")] for k in gym.envs.registry if k.startswith("BabyAI-") and k.endswith("-v0"))
        raise ValueError(f"unknown env id 'babyai:{name}': BabyAI levels are {', '.join(levels)}")


def make(name: str, **kwargs: Any) -> BabyAIEnv:
    return BabyAIEnv(name, **kwargs)
