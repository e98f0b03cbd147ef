"""The text environment protocol shared by real envs and the world model (docs/architecture.md), the
supervisor that keeps a crashed env from taking its actor down, and the menu of envs with open-ended actions."""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class TextEnv(Protocol):
    """Text in, text out. `info` may carry `admissible_actions` (the whole action set where it is finite;
    a menu of useful candidates where it is open, with `open_actions: True`), `won`, `score`, `error` (set
    when the action could not be parsed or failed: the observation then explains it) and `unparsed` (the
    action could not be parsed into a well-formed action of the family: `unparsed_info`). Envs with an
    oracle (walkthrough, gold path, bot, ground truth) also have `oracle_action() -> str | None`."""

    env_id: str
    domain: str

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]: ...

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]: ...

    def close(self) -> None: ...


def unparsed_info(error: str) -> dict[str, Any]:
    """The info keys of an action the env could not parse into a well-formed action of its family: malformed JSON,
    an unknown tool or function, missing required arguments, a command outside the action set or grammar, an empty
    action. An action that parsed and then failed (a tool's or SQL error, a missing file, the episode already over)
    has `error` alone. The parse rate counts `unparsed` (agentworld/episodes.py parsed)."""
    return {"error": error, "unparsed": True}


class Supervised:
    """Wraps an env built by `factory`. An exception out of `step` means the env's process (a JVM, a
    browser, a shell) crashed or hung: the episode is truncated with the reason, and the env is closed and
    built anew. Unparseable actions never get here: envs answer them with an error observation."""

    def __init__(self, factory: Callable[[], Any]):
        self._factory = factory
        self.env = factory()
        self.env_id, self.domain = self.env.env_id, self.env.domain
        self.crashes = 0

    def __getattr__(self, name: str):  # oracle_action, actions, ... of the wrapped env
        return getattr(self.env, name)

    def _recreate(self) -> None:
        try:
            self.env.close()
        except Exception:  # the process is already gone
            pass
        self.env = self._factory()

    def reset(self, seed: int | None = None):
        try:
            return self.env.reset(seed=seed)
        except Exception as e:  # one retry on a fresh env; a second failure is a real error
            log.warning("%s: reset failed (%s); recreating the env", self.env_id, e)
            self.crashes += 1
            self._recreate()
            return self.env.reset(seed=seed)

    def step(self, action: str):
        try:
            return self.env.step(action)
        except Exception as e:
            self.crashes += 1
            reason = f"{type(e).__name__}: {e}".strip()[:500]
            log.warning("%s: env crashed (%s); truncating the episode and recreating the env", self.env_id, reason)
            self._recreate()
            obs = f"[environment error: {reason}. The episode was ended.]"
            return obs, 0.0, False, True, {"error": reason, "crashed": True, "won": False, "admissible_actions": []}

    def close(self) -> None:
        self.env.close()


# A family's menu: the episode as the agent has seen it (its observations, the first holding the task, and its
# actions) -> the actions its `choice` menu offers. Only what the agent could know goes in, so the LWM simulator
# (worldmodel/env.py) builds its menus from predicted observations with the same function.
MenuFn = Callable[[Sequence[str], Sequence[str]], list]


class Menu:
    """Sets `info["admissible_actions"]` of an env with open-ended actions to its family's menu of the episode so
    far (empty once it has ended). With `oracle` (YAML: `envs.<key>.kwargs.menu: oracle`), the oracle's next action
    is added, the menu sorted so that action has no place of its own, and `info["menu"] = "oracle"` says so."""

    def __init__(self, env, menu: MenuFn, oracle: bool = False):
        self.env, self.menu, self.oracle = env, menu, oracle
        self.env_id, self.domain = env.env_id, env.domain
        self.observations: list[str] = []
        self.actions: list[str] = []

    def __getattr__(self, name: str):  # oracle_action, crashes, ... of the wrapped env
        return getattr(self.env, name)

    def reset(self, seed: int | None = None):
        obs, info = self.env.reset(seed=seed)
        self.observations, self.actions = [obs], []
        return obs, self._info(info, False)

    def step(self, action: str):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.observations.append(obs)
        self.actions.append(action)
        return obs, reward, terminated, truncated, self._info(info, terminated or truncated)

    def _info(self, info: dict, ended: bool) -> dict:
        menu = [] if ended else self.menu(self.observations, self.actions)
        if not self.oracle:
            return dict(info, admissible_actions=menu)
        oracle = None if ended else self.env.oracle_action()
        return dict(info, admissible_actions=sorted(set(menu + ([oracle] if oracle else []))), menu="oracle")

    def close(self) -> None:
        self.env.close()


HELDOUT_PERCENT = 20  # share of a generated family's tasks held out


def split_of(key: str) -> str:
    """`train` or `heldout` for a generated task, by a stable hash of its key (template and parameters, or the
    page its facts come from): the same on every machine, and disjoint by construction."""
    import hashlib

    return "heldout" if int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100 < HELDOUT_PERCENT else "train"


def retry_ast(fn, *args):
    """`fn(*args)`, an `ast` call, retried: CPython 3.11's AST validator keeps its recursion depth in state that threads
    share, and a call racing another thread's can fail with a spurious SystemError ("recursion depth mismatch")."""
    for attempt in range(5):
        try:
            return fn(*args)
        except SystemError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")
