"""The text environment protocol shared by real envs and the world model (docs/architecture.md), and the
supervisor that keeps a crashed env from taking its actor down."""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class TextEnv(Protocol):
    """Text in, text out. `info` may carry `admissible_actions` (the whole action set where it is finite;
    a menu of useful candidates where it is open, with `open_actions: True`), `won`, `score`, and `error`
    (set when the action could not be parsed: the observation then explains the error). Envs with an
    oracle (walkthrough, gold path, bot, ground truth) also have `oracle_action() -> str | None`."""

    env_id: str
    domain: str

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]: ...

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]: ...

    def close(self) -> None: ...


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


HELDOUT_PERCENT = 20  # share of a generated family's tasks held out


def split_of(key: str) -> str:
    """`train` or `heldout` for a generated task, by a stable hash of its key (template and parameters, or the
    page its facts come from): the same on every machine, and disjoint by construction."""
    import hashlib

    return "heldout" if int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100 < HELDOUT_PERCENT else "train"
