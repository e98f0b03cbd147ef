"""TextWorld games as text envs. Each seed picks a game that TextWorld generates and compiles with its
bundled Inform7 (~3 s), cached on disk so a game is built once: `textworld:custom` is a small random quest,
the other names are TextWorld's challenge generators. The oracle is TextWorld's walkthrough, which its
state tracker re-plans from the current state after every step.

With `split` (`train` or `heldout`) a game seed g belongs to the split `split_of(f"{name}:{g}")`, and reset(seed)
plays the split's (seed mod n_games)-th game seed: the two splits never share a game. For `cooking` the split also
picks the cooking game's own food split (`train`; `test` for heldout), so held-out recipes use unseen ingredients."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import textworld
from jericho.jericho import UnsupportedGameWarning
from textworld.challenges import CHALLENGES
from textworld.generator import compile_game, make_game

from agentworld.envs.base import split_of, unparsed_info

CACHE_DIR = Path(os.environ.get("AGENTWORLD_CACHE", Path.home() / ".cache" / "agentworld")) / "textworld"

# name -> default generation settings; kwargs of `make` override them.
GAMES = {
    "custom": {"nb_rooms": 3, "nb_objects": 6, "quest_length": 4},
    "coin_collector": {"level": 5},  # a chain of 5 rooms with the coin at the far end
    "treasure_hunter": {"level": 5},  # 5 rooms, fetch the named object (the wrong one loses)
    "simple": {"rewards": "balanced", "goal": "brief", "test": False},  # a fixed house, a random errand
    "cooking": {"recipe": 1, "take": 1, "go": 1, "open": True, "cook": False, "cut": False, "drop": False,
                "recipe_seed": 0, "split": "train"},  # the First TextWorld Problems cooking game
}

SPLITS = ("train", "heldout")
COOKING_SPLIT = {"train": "train", "heldout": "test"}  # TextWorld's cooking games split their food items

INFOS = textworld.EnvInfos(admissible_commands=True, policy_commands=True, won=True, max_score=True)

# Inform7 meta commands restart, save or restore the game behind TextWorld's state tracker (and the
# `tw-` debug commands print its internals), so they are refused.
META = {"quit", "q", "restart", "restore", "save", "undo", "script", "unscript", "transcript", "noscript"}
PARSER_ERRORS = ("That's not a verb I recognise", "I beg your pardon", "I didn't understand",
                 "I only understood you as far as", "You seem to have said too little")
_ART = set(" _|\\/$<>")  # the characters of the ASCII-art title and of the prompt line
_STATUS = re.compile(r">[ \t]*-= .* =-[ \t]*-?\d+/\d+\s*$")  # "> -= Kitchen =-0/3": room, score/moves
_END_PROMPT = "Would you like to RESTART, RESTORE a saved game, QUIT or UNDO the last command?"


def clean(text: str) -> str:
    """Drop the title art, the status line and the prompt from Inform7's output."""
    lines = [line.strip() for line in text.splitlines() if not (line.strip() and set(line) <= _ART)]
    text = _STATUS.sub("", "\n".join(lines).rstrip()).replace(_END_PROMPT, "")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


@contextlib.contextmanager
def quiet_jericho():
    """Jericho warns that it cannot track score in games it does not know; TextWorld tracks them itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsupportedGameWarning)
        yield


def game_file(name: str, settings: dict[str, Any], seed: int) -> Path:
    """The compiled game for (name, settings, seed), generated on first use. Generation is seeded, so
    racing processes write identical files; each moves its own copy into place atomically."""
    key = json.dumps([textworld.__version__, name, settings], sort_keys=True)
    path = CACHE_DIR / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}" / f"{seed}.z8"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, quiet_jericho():
        options = textworld.GameOptions()
        options.seeds = seed
        options.path = os.path.join(tmp, "game.z8")
        if name == "custom":
            options.nb_rooms, options.nb_objects = settings["nb_rooms"], settings["nb_objects"]
            options.quest_length = settings["quest_length"]
            game = make_game(options)
        else:
            game = CHALLENGES[f"tw-{name}"][1](dict(settings), options)
        compile_game(game, options)
        os.replace(os.path.join(tmp, "game.json"), path.with_suffix(".json"))  # the .z8 marks the pair done
        os.replace(os.path.join(tmp, "game.z8"), path)
    return path


@functools.cache
def split_seeds(name: str, split: str, n: int) -> tuple[int, ...]:
    """The split's first n game seeds: the nonnegative integers g with `split_of(f"{name}:{g}") == split`."""
    return tuple(itertools.islice((g for g in itertools.count() if split_of(f"{name}:{g}") == split), n))


def parse(action: Any) -> tuple[str, str | None]:
    """(command for the game, error or None). Newlines would queue a second command in the interpreter."""
    if not isinstance(action, str):
        return "", f"Actions are text; got {type(action).__name__}."
    command = " ".join("".join(c for c in action if c.isascii() and c.isprintable()).split())[:200]
    for sentence in re.split(r"[.,;]|\bthen\b", command.lower()):
        words = sentence.split()
        if words and (words[0] in META or words[0].startswith("tw-")):
            return "", f"{words[0]!r} is a meta command and is disabled here."
    return command, None


class TextWorldEnv:
    def __init__(self, name: str, max_steps: int | None = None, domain: str = "textgame",
                 n_games: int | None = 100, split: str | None = None, **settings: Any):
        check(name)
        unknown = set(settings) - set(GAMES[name])
        if unknown:
            raise ValueError(f"textworld:{name}: unknown settings {sorted(unknown)}; known: {sorted(GAMES[name])}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"textworld:{name}: split must be train or heldout, not {split!r}")
        if split is not None and not n_games:
            raise ValueError(f"textworld:{name}: split={split!r} needs n_games (the split's first n_games games)")
        self.env_id, self.domain, self.name = f"textworld:{name}", domain, name
        self.settings = {**GAMES[name], **settings}
        if split is not None and name == "cooking":
            self.settings["split"] = COOKING_SPLIT[split]
        self.max_steps, self.n_games, self.split = max_steps, n_games, split
        self.game_seed: int | None = None
        self._game = None  # the running textworld env
        self._state = None  # its last GameState
        self.t, self.score, self.done = 0, 0.0, False

    def _info(self, **extra) -> dict[str, Any]:
        s = self._state
        return {"admissible_actions": [] if self.done else list(s["admissible_commands"] or []),
                "won": bool(s["won"]), "score": self.score, "max_score": float(s["max_score"]), **extra}

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """`seed` picks the game (modulo `n_games` when set; with a split, the split's game seed of that index);
        None replays the current game (the first: seed 0)."""
        if seed is None and self.game_seed is not None:
            game_seed = self.game_seed
        else:
            game_seed = (seed or 0) % (self.n_games or 2**32)
            if self.split is not None:
                game_seed = split_seeds(self.name, self.split, self.n_games)[game_seed]
        if self._game is None or game_seed != self.game_seed:
            self.close()
            path = game_file(self.name, self.settings, game_seed)
            with quiet_jericho():
                self._game = textworld.start(str(path), request_infos=INFOS)
            self.game_seed = game_seed
        self._state = self._game.reset()
        self.t, self.score, self.done = 0, 0.0, False
        return clean(self._state.feedback), self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        command, err = parse(action)
        if self.done:
            err = "The game is over; reset to play again."
            return err, 0.0, self.done, truncated, self._info(error=err)
        if err:
            return err, 0.0, self.done, truncated, self._info(**unparsed_info(err))
        self._state, score, self.done = self._game.step(command)
        reward, self.score = float(score) - self.score, float(score)
        obs = clean(self._state.feedback)
        extra = unparsed_info(obs) if obs.startswith(PARSER_ERRORS) else {}  # the game's parser
        return obs, reward, bool(self.done), truncated, self._info(**extra)

    def oracle_action(self) -> str | None:
        """The first command of TextWorld's walkthrough from the current state."""
        policy = None if self._state is None or self.done else self._state["policy_commands"]
        return policy[0] if policy else None

    def close(self) -> None:
        if self._game is not None:
            self._game.close()
            self._game = None


def check(name: str) -> None:
    if name not in GAMES:
        raise ValueError(f"unknown env id 'textworld:{name}': TextWorld games are {', '.join(GAMES)}")


def make(name: str, **kwargs: Any) -> TextWorldEnv:
    return TextWorldEnv(name, **kwargs)
