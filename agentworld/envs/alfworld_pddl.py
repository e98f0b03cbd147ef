"""ALFWorld's text engine on hand-written PDDL problems. ALFWorld's 3,553 games are a download, so
alfworld_data/ holds a few problems in their style; each runs on the ALFRED domain and grammar shipped in
the alfworld package, through TextWorld's PddlEnv with ALFWorld's AlfredDemangler ("mug 1", "cabinet 2").
The oracle is the Fast Downward planner, replanned in the current state after every step.

`alfworld:<problem>` plays one problem; `alfworld:all` plays every problem, the seed picking one (seed mod their
number). With `split` (`train` or `heldout`) a problem is in the split `split_of(problem)`, and only the split's
problems are played (2 of the 5 problems here are held out)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import fast_downward  # noqa: F401  (textworld[pddl]: fail at import, not at the first make)
import textworld
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH
from textworld.envs import PddlEnv

from agentworld.envs.base import split_of, unparsed_info

DATA = Path(__file__).with_name("alfworld_data")
ALL = "all"  # every problem, one picked by the seed
SPLITS = ("train", "heldout")


def problems() -> list[str]:
    return sorted(p.stem for p in DATA.glob("*.pddl"))


def played(name: str, split: str | None = None) -> list[str]:
    """The problems `alfworld:<name>` plays: itself, or every problem for `all`; with a split, those in it."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"alfworld:{name}: split must be train or heldout, not {split!r}")
    names = problems() if name == ALL else [name]
    kept = [p for p in names if split is None or split_of(p) == split]
    if not kept:
        why = (f"too few problems ({len(names)}) for a non-empty {split} split" if name == ALL
               else f"{name} is in the {split_of(name)} split")
        raise ValueError(f"alfworld:{name}: split={split!r} is empty: {why}")
    return kept


def game_data(name: str) -> dict[str, str]:
    """What ALFWorld writes to a `game.tw-pddl` file: domain, grammar with the task filled in, problem.
    The task sentence is the problem file's `;; task:` line."""
    problem = (DATA / f"{name}.pddl").read_text()
    task = re.search(r"^;; task: (.+)$", problem, re.M).group(1).strip()
    grammar = Path(ALFRED_TWL2_PATH).read_text().replace("UNKNOWN GOAL", task)
    return {"pddl_domain": Path(ALFRED_PDDL_PATH).read_text(), "grammar": grammar, "pddl_problem": problem}


class _KeepArgv:
    """fast_downward's PDDL translator overwrites sys.argv (a hack in its `pddl2sas`); put it back."""

    def __enter__(self):
        self.argv = list(sys.argv)

    def __exit__(self, *exc):
        sys.argv = self.argv


def _normalize(command: str) -> str:
    return " ".join(command.lower().split()).strip(".!? ")


class AlfworldEnv:
    def __init__(self, name: str, max_steps: int | None = None, domain: str = "embodied", split: str | None = None,
                 **kwargs: Any):
        if kwargs:
            raise ValueError(f"alfworld:{name}: unexpected kwargs {sorted(kwargs)}")
        self.problems, self.split = played(name, split), split
        self.env_id, self.domain, self.max_steps = f"alfworld:{name}", domain, max_steps
        infos = textworld.EnvInfos(won=True, admissible_commands=True, policy_commands=True)
        self._pddl = PddlEnv(infos)  # in-process: loads its own copy of Fast Downward's shared library
        self.env = AlfredDemangler(self._pddl, shuffle=False)
        self.problem: str | None = None
        self._load(self.problems[0])
        self.state, self.t, self.score = None, 0, 0.0

    def _load(self, problem: str) -> None:
        with _KeepArgv():
            self.env.load(game_data(problem))
        self.problem = problem

    def _info(self, **extra) -> dict[str, Any]:
        return {"admissible_actions": list(self.state["admissible_commands"]), "score": self.score,
                "won": bool(self.state["won"]), **extra}

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        # Each problem is a fixed PDDL game: `seed` only picks the problem (seed mod their number; None keeps
        # the current one), so a one-problem env resets the same every time.
        if seed is not None and self.problems[seed % len(self.problems)] != self.problem:
            self._load(self.problems[seed % len(self.problems)])
        with _KeepArgv():
            self.state = self.env.reset()
        self.t, self.score = 0, 0.0
        return self.state.feedback.strip(), self._info()

    def oracle_action(self) -> str | None:
        """The first step of a Fast Downward plan from the current state (None once won or if unsolvable)."""
        plan = self.state["policy_commands"] if self.state is not None else None
        return plan[0] if plan and not self.state["won"] else None

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        command = _normalize(action) if isinstance(action, str) else None
        if command not in self.state["admissible_commands"]:
            err = f"Nothing happens: {action!r} is not a valid command here."
            obs = f"{err} Valid commands: {', '.join(self.state['admissible_commands'])}."
            return obs, 0.0, False, truncated, self._info(**unparsed_info(err))
        was_won = bool(self.state["won"])
        self.state, _, done = self.env.step(command)
        reward = 1.0 if self.state["won"] and not was_won else 0.0  # the engine repeats 1 on every step once won
        self.score += reward
        return self.state.feedback.strip(), reward, bool(done), truncated, self._info()

    def close(self) -> None:
        # Frees the planner's task and state. The library copy stays mapped: unloading several copies with
        # fast_downward.close_lib (dlclose) crashes the interpreter at exit (measured: segfault).
        if self._pddl is not None:
            self._pddl.downward_lib.cleanup()
            self._pddl = self.env = None


def check(name: str) -> None:
    if name != ALL and name not in problems():
        raise ValueError(f"unknown env id 'alfworld:{name}': ALFWorld problems are {', '.join(problems())}, "
                         f"or {ALL} (one picked by the seed)")


def make(name: str, **kwargs: Any) -> AlfworldEnv:
    return AlfworldEnv(name, **kwargs)
