"""Shared by the env tests: play an env's oracle from its current state, and check its menu for the oracle's calls."""

import json


def follow_oracle(env, info=None):
    """Step `env.oracle_action()` until it has none or the episode ends: (rewards, terminated flags, last info).
    With `info` (from the last reset or step), every oracle action must be one of its admissible actions."""
    rewards, terms, check = [], [], info is not None
    while (action := env.oracle_action()) is not None:
        if check:
            assert action in info["admissible_actions"]  # the oracle only offers valid actions
        _, r, term, trunc, info = env.step(action)
        rewards.append(r)
        terms.append(term)
        if term or trunc:
            break
    return rewards, terms, info or {}


def unseen_calls(menu, calls, seen: str) -> list[str]:
    """The oracle's `calls` (action texts) that `menu` offers although some of their argument values appear nowhere
    in `seen` (the task and the outputs so far). A menu built from what is visible may hold an oracle call whose values
    the task spells out (a time conversion), never one whose values it does not (the oracle's SQL, a ground-truth
    call's computed argument), so a menu that copies the solution fails this wherever the solution says something
    the agent has not seen."""
    def values(x):
        if isinstance(x, dict):
            return [v for item in x.values() for v in values(item)]
        if isinstance(x, list):
            return [v for item in x for v in values(item)]
        return [x if isinstance(x, str) else json.dumps(x)]

    return [c for c in calls if c in menu
            and not all(v in seen for v in values(json.loads(c).get("arguments", json.loads(c))))]
