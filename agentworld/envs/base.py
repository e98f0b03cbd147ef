"""The text environment protocol shared by real envs and the world model (ARCHITECTURE.md)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TextEnv(Protocol):
    """Text in, text out. `info` may carry `admissible_actions`, `won`, `score`, and `error`
    (set when the action could not be parsed: the observation then explains the error)."""

    env_id: str
    domain: str

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]: ...

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]: ...

    def close(self) -> None: ...
