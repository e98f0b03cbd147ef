"""ScienceWorld tasks as text envs: elementary-science tasks (boil water, find a living thing, test
conductivity) in a simulated house, run by a JVM. A seed picks one of the task's variations of the split (`train`,
the default: ScienceWorld's train variations; `heldout`: its test variations); the oracle is ScienceWorld's gold
path, generated with each reset.

ScienceWorld's full valid-action list costs 10-100 ms a call (up to ~1,000 template x object combinations)
against ~20 ms for a step, so the menu is a sample of it across verbs, recomputed only when the agent changes
room and every `menu_every` steps; between refreshes an item may have gone stale (the game then answers as it
would any action). `menu_every=1` gives an exact menu at about 5x the cost."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from typing import Any

from scienceworld import ScienceWorldEnv as _ScienceWorld
from scienceworld.constants import ID2TASK

from agentworld.envs.base import unparsed_info
from agentworld.envs.jvm import stop_gateway

TASKS = list(ID2TASK.values())
NO_MATCH = "No known action matches that input."
AMBIGUOUS = "Ambiguous request"  # the game then waits for the number of the intended action
NOT_IN_MENU = {"reset task"}  # it wipes the goal progress, like a restart


def sample_menu(valid: list[dict[str, Any]], size: int, rng: random.Random) -> list[str]:
    """Up to `size` valid actions, one verb (template) at a time, so rare verbs are not drowned out by the
    many `focus on X`, `look at X` and `move X to Y`."""
    by_template = defaultdict(list)
    for v in sorted(valid, key=lambda v: v["action"]):
        if v["action"] not in NOT_IN_MENU:
            by_template[v["template_id"]].append(v["action"])
    groups = [rng.sample(actions, len(actions)) for _, actions in sorted(by_template.items())]
    rng.shuffle(groups)
    menu: list[str] = []
    while len(menu) < size and any(groups):
        for group in groups:
            if group and len(menu) < size:
                menu.append(group.pop())
    return sorted(set(menu))


class ScienceWorldEnv:
    def __init__(self, name: str, max_steps: int | None = None, domain: str = "science",
                 simplifications: str = "easy", menu_size: int = 15, menu_every: int = 5, split: str = "train"):
        check(name)
        if split not in ("train", "heldout"):
            raise ValueError(f"scienceworld:{name}: split must be train or heldout, not {split!r}")
        self.env_id, self.domain, self.name = f"scienceworld:{name}", domain, name
        self.max_steps, self.simplifications, self.split = max_steps, simplifications, split
        self.menu_size, self.menu_every = menu_size, menu_every
        self._env = _ScienceWorld("", envStepLimit=2**31 - 1)  # max_steps truncates, not ScienceWorld
        try:
            self._env.load(name, 0, simplifications)  # ValueError for an unknown simplification
            variations = self._env.get_variations_train if split == "train" else self._env.get_variations_test
            self.variations = variations()
        except Exception:
            self.close()
            raise
        self.variation: int | None = None
        self._gold: list[str] = []
        self._gold_i, self._menu, self._room, self._menu_t = 0, [], "", 0
        self.t, self.score, self.done, self.won = 0, 0.0, False, False

    def _info(self, **extra) -> dict[str, Any]:
        return {"admissible_actions": [] if self.done else list(self._menu), "open_actions": True,
                "won": self.won, "score": self.score, **extra}

    def _refresh_menu(self, force: bool = False) -> None:
        room = self._env.look().split("\n", 1)[0]  # "This room is called the kitchen. In it, you see:"
        if force or room != self._room or self.t - self._menu_t >= self.menu_every:
            valid = self._env.get_valid_action_object_combinations_with_templates()
            self._menu = sample_menu(valid, self.menu_size, random.Random(f"{self.variation}:{self.t}"))
            self._room, self._menu_t = room, self.t

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """`seed` picks a variation of the split; None replays the current one (the first: seed 0). The task is
        reloaded each time, which draws the world and its gold path together."""
        if seed is not None or self.variation is None:
            self.variation = self.variations[(seed or 0) % len(self.variations)]
        self._env.load(self.name, self.variation, self.simplifications, generateGoldPath=True)
        server = self._env.server  # load builds the world; the wrapper's reset would rebuild it (~1 s)
        obs = server.step("look around")  # the first move, as the wrapper's reset makes it
        self._gold, self._gold_i = self._env.get_gold_action_sequence(), 0
        self.t, self.score, self.done, self.won = 0, float(server.getScore()), False, False
        self._refresh_menu(force=True)
        return f"{self._env.taskdescription().strip()}\n\n{obs.strip()}", self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        if self.done:
            err = "The task is over; reset to start again."
            return err, 0.0, True, truncated, self._info(error=err)
        if not isinstance(action, str):
            err = f"Actions are text; got {type(action).__name__}."
            return err, 0.0, False, truncated, self._info(**unparsed_info(err))
        command = " ".join(action.split())
        if self._gold_i < len(self._gold) and command == self._gold[self._gold_i]:
            self._gold_i += 1
        server = self._env.server  # its step, unlike the wrapper's, does not list every valid action
        obs = server.step(command).strip()
        score, completed = float(server.getScore()), bool(server.getCompleted())
        reward, self.score = score - self.score, score
        self.won = completed and score >= 1.0
        self.done = completed or score < 0  # a negative score is a failed task (e.g. focus on the wrong thing)
        if obs.startswith(AMBIGUOUS):
            self._menu = re.findall(r"^(\d+):", obs, re.M)
            self._menu_t = -self.menu_every  # once answered, list actions again
        elif not self.done:
            self._refresh_menu()
        extra = unparsed_info(obs) if obs == NO_MATCH else {}  # no action of its grammar matches
        return obs, reward, self.done, truncated, self._info(**extra)

    def oracle_action(self) -> str | None:
        """The next step of the gold path. Off the path it may no longer lead to the goal."""
        if self.done or self._gold_i >= len(self._gold):
            return None
        return self._gold[self._gold_i]

    def close(self) -> None:
        env, self._env = self._env, None
        if env is not None:
            stop_gateway(env._gateway)


def check(name: str) -> None:
    if name not in TASKS:
        raise ValueError(f"unknown env id 'scienceworld:{name}': ScienceWorld tasks are {', '.join(TASKS)}")


def make(name: str, **kwargs: Any) -> ScienceWorldEnv:
    return ScienceWorldEnv(name, **kwargs)
