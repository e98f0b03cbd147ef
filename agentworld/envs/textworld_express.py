"""TextWorldExpress games as text envs: procedurally generated text games simulated in a JVM at about
1 ms a step. A seed picks one of the fold's 1,000 worlds; the oracle is TWX's gold path for that world.
The world is the same for a seed in every run, but TWX draws its gold path unseeded: in the coin game it is a random
walk that ends at the coin (9 to 33 actions for one world, measured), so oracle episodes differ from run to run.
`split` names the fold by its role: `train` is TWX's train fold, `heldout` its test fold (worlds TWX holds out)."""

from __future__ import annotations

from typing import Any

from textworld_express import TextWorldExpressEnv
from textworld_express.constants import GAME_NAMES

from agentworld.envs.base import unparsed_info
from agentworld.envs.jvm import stop_gateway

UNKNOWN = "Unknown action"  # how TWX answers anything outside its valid actions
SPLIT_FOLDS = {"train": "train", "heldout": "test"}


def fold_of(name: str, split: str | None, fold: str | None) -> str:
    """The fold that `split` (train or heldout) and/or `fold` (train, dev or test) name; train by default."""
    if split is None:
        return fold or "train"
    if split not in SPLIT_FOLDS:
        raise ValueError(f"twx:{name}: split must be train or heldout, not {split!r}")
    if fold is not None and fold != SPLIT_FOLDS[split]:
        raise ValueError(f"twx:{name}: split={split!r} is fold {SPLIT_FOLDS[split]!r}, but fold={fold!r} was given")
    return SPLIT_FOLDS[split]


class TWXEnv:
    def __init__(self, name: str, max_steps: int | None = None, domain: str = "textgame",
                 fold: str | None = None, split: str | None = None, **params: Any):
        check(name)
        fold = fold_of(name, split, fold)
        if fold not in ("train", "dev", "test"):
            raise ValueError(f"twx:{name}: fold must be train, dev or test, not {fold!r}")
        self.env_id, self.domain, self.name, self.fold, self.split = f"twx:{name}", domain, name, fold, split
        # Game parameters, e.g. numLocations=3 for coin. TWX keeps them across resets, so every reset
        # passes them again (an empty string clears another game's).
        self.params = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
        self.max_steps = max_steps
        self._env = TextWorldExpressEnv(envStepLimit=2**31 - 1)  # max_steps truncates, not TWX
        try:
            self._env.load(name, self.params)  # ValueError naming the known parameters
            self.seeds = {"train": self._env.getValidSeedsTrain, "dev": self._env.getValidSeedsDev,
                          "test": self._env.getValidSeedsTest}[fold]()
        except Exception:
            self.close()
            raise
        self.seed: int | None = None
        self._gold: list[str] = []
        self._gold_i, self._valid = 0, []
        self.t, self.score, self.done, self.won = 0, 0.0, False, False

    def _info(self, **extra) -> dict[str, Any]:
        return {"admissible_actions": [] if self.done else list(self._valid), "won": self.won,
                "score": self.score, **extra}

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """`seed` picks a world of the fold; None replays the current world (the first: seed 0)."""
        if seed is not None or self.seed is None:
            self.seed = self.seeds[(seed or 0) % len(self.seeds)]
        obs, infos = self._env.reset(seed=self.seed, gameFold=self.fold, gameName=self.name,
                                     gameParams=self.params, generateGoldPath=True)
        self._gold, self._gold_i = self._env.getGoldActionSequence(), 0
        self._valid = sorted(infos["validActions"])
        self.t, self.score, self.done, self.won = 0, float(infos["score"]), False, False
        return f"{infos['taskDescription']}\n\n{obs.strip()}", self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        if self.done:
            err = "The game is over; reset to play again."
            return err, 0.0, True, truncated, self._info(error=err)
        if not isinstance(action, str):
            err = f"Actions are text; got {type(action).__name__}."
            return err, 0.0, False, truncated, self._info(**unparsed_info(err))
        command = " ".join(action.lower().split())
        gold_i = self._next_gold()
        if gold_i is not None and command == self._gold[gold_i]:
            self._gold_i = gold_i + 1
        obs, _, _, infos = self._env.step(command)
        obs = obs.strip()
        if obs.startswith(UNKNOWN):  # not one of the game's actions here
            return obs, 0.0, False, truncated, self._info(**unparsed_info(obs))
        reward, self.score = float(infos["score"]) - self.score, float(infos["score"])
        self.won = bool(infos["tasksuccess"])
        self.done = self.won or bool(infos["taskfailure"])
        self._valid = sorted(infos["validActions"])
        return obs, reward, self.done, truncated, self._info()

    def _next_gold(self) -> int | None:
        """Index of the next gold action valid now: gold paths hold a few no-ops (opening an open cupboard)."""
        for i in range(self._gold_i, len(self._gold)):
            if self._gold[i] in self._valid:
                return i
        return None

    def oracle_action(self) -> str | None:
        """The next step of the gold path. Off the path it may no longer lead to the goal."""
        i = None if self.done else self._next_gold()
        return None if i is None else self._gold[i]

    def close(self) -> None:
        env, self._env = self._env, None
        if env is not None:
            stop_gateway(env._gateway)


def check(name: str) -> None:
    if name not in GAME_NAMES:
        raise ValueError(f"unknown env id 'twx:{name}': TextWorldExpress games are {', '.join(GAME_NAMES)}")


def make(name: str, **kwargs: Any) -> TWXEnv:
    return TWXEnv(name, **kwargs)
