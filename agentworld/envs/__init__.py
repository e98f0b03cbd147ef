"""The env registry: ids are `prefix:name`, e.g. `gymnasium:FrozenLake-v1`. Users add families with
`register`."""

from __future__ import annotations

from typing import Any, Callable

from agentworld.envs.base import TextEnv

_FAMILIES: dict[str, tuple[Callable[..., TextEnv], str, Callable[[str], None] | None]] = {}


def register(prefix: str, factory: Callable[..., TextEnv], domain: str,
             check: Callable[[str], None] | None = None) -> None:
    """`factory(name, max_steps=..., domain=..., **kwargs)` builds an env; `check(name)` raises
    ValueError for a name the family does not have."""
    _FAMILIES[prefix] = (factory, domain, check)


def resolve_env_id(env_id: str) -> None:
    """Raise ValueError with a one-line reason if `env_id` names no known env."""
    prefix, sep, name = str(env_id).partition(":")
    if not sep or prefix not in _FAMILIES:
        raise ValueError(f"unknown env id {env_id!r}: ids look like PREFIX:NAME with PREFIX one of "
                         f"{', '.join(sorted(_FAMILIES))}")
    check = _FAMILIES[prefix][2]
    if check is not None:
        check(name)


def make_env(env_id: str, max_steps: int | None = None, domain: str | None = None, **kwargs: Any) -> TextEnv:
    resolve_env_id(env_id)
    prefix, _, name = env_id.partition(":")
    factory, default_domain, _ = _FAMILIES[prefix]
    return factory(name, max_steps=max_steps, domain=domain or default_domain, **kwargs)


def _check_gym(name: str) -> None:
    import gymnasium

    if name not in gymnasium.envs.registry:
        raise ValueError(f"unknown env id 'gymnasium:{name}': gymnasium has no env {name!r}")


def _make_gym(name: str, **kwargs: Any) -> TextEnv:
    from agentworld.envs.gym_text import GymTextEnv

    return GymTextEnv(name, **kwargs)


register("gymnasium", _make_gym, "gridworld", _check_gym)
