"""The env registry: ids are `prefix:name`, e.g. `gymnasium:FrozenLake-v1` or `terminal:count-lines`.
Users add families with `register`. Built-in families live in modules imported only when first used, so
an env whose package is not installed costs nothing until an experiment names it."""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

from agentworld.envs.base import Menu, MenuFn, Supervised, TextEnv

_FAMILIES: dict[str, tuple[Callable[..., TextEnv], str, Callable[[str], None] | None, MenuFn | None]] = {}

# prefix -> (module, domain, install hint). Each module has `make(name, max_steps=None, domain=..., **kw)`
# and `check(name)` (ValueError for a name it does not have); a family whose actions are open-ended (tool calls,
# shell commands) also has `menu(observations, actions)`: what its `choice` menu offers (base.Menu).
BUILTIN = {
    "gymnasium": ("agentworld.envs.gym_text", "gridworld", "pip install -e ."),
    "terminal": ("agentworld.envs.terminal", "terminal", "apt-get install bubblewrap tmux"),
    "swe": ("agentworld.envs.swe", "swe", "apt-get install bubblewrap"),
    "mcp": ("agentworld.envs.mcp_tools", "mcp", "pip install -e '.[envs]'"),
    "bfcl": ("agentworld.envs.bfcl", "mcp", "pip install -e '.[envs]' (bfcl-eval --no-deps)"),
    "search": ("agentworld.envs.search", "search", "pip install -e ."),
    "miniwob": ("agentworld.envs.miniwob_web", "web", "pip install -e '.[envs]' and apt-get install chromium chromium-driver"),
    "textworld": ("agentworld.envs.textworld_games", "textgame", "pip install -e '.[envs]'"),
    "twx": ("agentworld.envs.textworld_express", "textgame", "pip install -e '.[envs]'"),
    "scienceworld": ("agentworld.envs.scienceworld_env", "science", "pip install -e '.[envs]' and a JRE"),
    "alfworld": ("agentworld.envs.alfworld_pddl", "embodied", "pip install -e '.[envs]'"),
    "babyai": ("agentworld.envs.babyai", "embodied", "pip install -e '.[envs]'"),
}

# Domains whose state outlives one observation (shell state, database contents, files written earlier, what a game
# showed before): an LWM learning one keeps more history by default (config.resolve_history), and its prompts keep
# the episode's task when older turns are dropped (worldmodel/prompt.py window).
STATEFUL = frozenset({"terminal", "swe", "mcp", "search", "web", "textgame", "science", "embodied"})


# Families whose env runs a process tree of its own (a JVM, a browser) or native code in-process (the ALFWorld planner)
# or evals the agent's calls (BFCL): each env runs whole in a sandbox, behind a JSON proxy (agentworld/envs/remote.py).
# The shell families sandbox their own commands. Not textworld: the games it compiles (~3 s each) are cached on the
# host for all its envs, where a sandboxed env would compile each one anew.
SANDBOXED = frozenset({"bfcl", "scienceworld", "twx", "miniwob", "alfworld"})

MENUS = ("visible", "oracle")  # an env's `menu` kwarg: what its choice menu is built from (base.Menu)


def register(prefix: str, factory: Callable[..., TextEnv], domain: str,
             check: Callable[[str], None] | None = None, menu: MenuFn | None = None) -> None:
    """`factory(name, max_steps=..., domain=..., **kwargs)` builds an env; `check(name)` raises
    ValueError for a name the family does not have; `menu(observations, actions)` is the family's menu."""
    _FAMILIES[prefix] = (factory, domain, check, menu)


def _family(prefix: str):
    if prefix not in _FAMILIES and prefix in BUILTIN:
        module, domain, hint = BUILTIN[prefix]
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"env family {prefix!r} needs a package that is not installed ({e.name}): {hint}") from None
        register(prefix, mod.make, domain, getattr(mod, "check", None), getattr(mod, "menu", None))
    return _FAMILIES.get(prefix)


def resolve_env_id(env_id: str) -> None:
    """Raise ValueError with a one-line reason if `env_id` names no known env."""
    prefix, sep, name = str(env_id).partition(":")
    known = sorted(set(_FAMILIES) | set(BUILTIN))
    if not sep or prefix not in known:
        raise ValueError(f"unknown env id {env_id!r}: ids look like PREFIX:NAME with PREFIX one of {', '.join(known)}")
    check = _family(prefix)[2]
    if check is not None:
        check(name)


def family_module(env_id: str):
    """The built-in module of the env's family (e.g. agentworld.envs.search), for what it offers beyond `make`: its
    controlled observations (`perturbed`, `fictional`: agentworld/controls.py); None for a user-registered family or
    one whose package is not installed."""
    entry = BUILTIN.get(str(env_id).partition(":")[0])
    try:
        return importlib.import_module(entry[0]) if entry else None
    except ImportError:
        return None


def menu_of(env_id: str) -> MenuFn | None:
    """The `menu(observations, actions)` of the env's family; None where the env's own action set is its menu."""
    family = _family(str(env_id).partition(":")[0])
    return family[3] if family else None


def check_menu(env_id: str, menu: Any) -> None:
    """ValueError unless `menu` is a value of MENUS that the env's family can build."""
    if menu not in MENUS:
        raise ValueError(f"menu must be one of {', '.join(MENUS)} (got {menu!r})")
    if menu == "oracle" and menu_of(env_id) is None:
        raise ValueError(f"{env_id}: menu 'oracle' is for envs with open-ended actions; this env's menu is its "
                         "own action set")


def make_env(env_id: str, max_steps: int | None = None, domain: str | None = None, menu: str = "visible",
             **kwargs: Any) -> TextEnv:
    """Build an env by id; one of the SANDBOXED families runs in a sandbox of its own. It is supervised: if its
    underlying process crashes, the episode is truncated with the reason and the env is recreated, so the actor
    that holds it lives on. Where its family has a `menu`, that builds `info["admissible_actions"]` (base.Menu;
    `menu="oracle"` adds the oracle's next action)."""
    resolve_env_id(env_id)
    check_menu(env_id, menu)
    prefix, _, name = env_id.partition(":")
    factory, default_domain, _, menu_fn = _family(prefix)
    if prefix in SANDBOXED:
        from agentworld.envs.remote import SandboxedEnv

        factory = functools.partial(SandboxedEnv, prefix)
    env = Supervised(lambda: factory(name, max_steps=max_steps, domain=domain or default_domain, **kwargs))
    return env if menu_fn is None else Menu(env, menu_fn, oracle=menu == "oracle")


def domain_of(cfg) -> str:
    """The domain of an `envs.<key>` section: its own `domain`, else its family's."""
    if cfg.domain:
        return cfg.domain
    prefix = str(cfg.id).partition(":")[0]
    return _FAMILIES[prefix][1] if prefix in _FAMILIES else BUILTIN.get(prefix, ("", "unknown"))[1]


def make_env_from(cfg) -> TextEnv:
    """`make_env` from an EnvConfig (an `envs.<key>` section)."""
    return make_env(cfg.id, max_steps=cfg.max_steps, domain=cfg.domain, **cfg.kwargs)
