"""Shared by the env tests: play an env's oracle from its current state."""


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
