import os
import random

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("fast_downward")

from agentworld.envs import make_env, resolve_env_id
from agentworld.envs.alfworld_pddl import DATA, problems


def _children() -> set[str]:
    return {c for t in os.listdir("/proc/self/task") for c in open(f"/proc/self/task/{t}/children").read().split()}


def test_problems_are_listed_and_unknown_names_rejected():
    assert {"mug-in-coffeemachine", "apple-in-fridge", "clean-mug-in-coffeemachine",
            "hot-potato-on-diningtable", "book-under-desklamp"} <= set(problems())
    resolve_env_id("alfworld:apple-in-fridge")
    with pytest.raises(ValueError, match="apple-in-fridge"):
        resolve_env_id("alfworld:no-such-problem")


def test_episode_speaks_alfworld_and_its_commands_work():
    env = make_env("alfworld:apple-in-fridge")
    obs, info = env.reset()
    assert "Your task is to: put some apple in fridge." in obs and "a fridge 1" in obs
    assert "go to fridge 1" in info["admissible_actions"] and not info["won"]
    obs, r, term, trunc, info = env.step("Go to fridge 1.")  # case and a final period are forgiven
    assert obs == "You arrive at fridge 1. The fridge 1 is closed." and r == 0 and not term
    assert "open fridge 1" in info["admissible_actions"]
    obs, *_ = env.step("open fridge 1")
    assert "In it, you see a egg 1." in obs
    env.close()


@pytest.mark.parametrize("name", problems())
def test_planner_oracle_solves_every_problem(name):
    env = make_env(f"alfworld:{name}", max_steps=30)
    obs, info = env.reset()
    for _ in range(30):
        action = env.oracle_action()
        assert action in info["admissible_actions"]  # the engine's admissible commands
        obs, r, term, trunc, info = env.step(action)
        if term or trunc:
            break
    assert term and info["won"] and r == 1.0 and info["score"] == 1.0
    assert env.oracle_action() is None
    env.close()


def test_oracle_replans_after_a_detour():
    env = make_env("alfworld:clean-mug-in-coffeemachine")
    env.reset()
    env.step("go to cabinet 1")  # off the plan: the mug is on the countertop
    assert env.oracle_action() == "go to countertop 1"
    env.close()


def test_same_actions_give_same_observations():
    def run():
        env = make_env("alfworld:mug-in-coffeemachine")
        rng = random.Random(7)
        obs, info = env.reset(seed=1)
        seen = [obs]
        for _ in range(12):
            obs, *_, info = env.step(rng.choice(info["admissible_actions"]))
            seen.append(obs)
        env.close()
        return seen

    assert run() == run()


@pytest.mark.parametrize("bad", ["", "fly away", None, 3, "take mug 1 from cabinet 1"])
def test_malformed_or_inadmissible_action_is_an_error_observation(bad):
    env = make_env("alfworld:mug-in-coffeemachine", max_steps=5)
    env.reset()
    obs, r, term, trunc, info = env.step(bad)
    assert obs.startswith("Nothing happens") and "go to cabinet 1" in obs
    assert r == 0 and not term and not trunc and info["error"] and info["unparsed"] and not info["won"]
    obs, *_, info = env.step("go to cabinet 1")
    assert obs.startswith("You arrive at cabinet 1") and "unparsed" not in info  # the episode goes on
    env.close()


def test_max_steps_truncates():
    env = make_env("alfworld:apple-in-fridge", max_steps=2)
    env.reset()
    assert [env.step("look")[3] for _ in range(2)] == [False, True]
    env.close()


def test_close_runs_in_process_and_is_idempotent():
    from agentworld.envs.alfworld_pddl import make  # the env itself, not make_env's sandboxed proxy

    before = _children()
    env = make("book-under-desklamp")
    env.reset()
    env.step("go to bed 1")
    assert _children() == before  # the engine and planner run in this process: nothing to leave behind
    env.close()
    env.close()
    assert env.env is None


def test_splits_hold_disjoint_problems():
    from agentworld.envs.base import split_of

    played = {}
    for split in ("train", "heldout"):
        env = make_env("alfworld:all", split=split)
        seen = []
        for seed in range(4):
            obs, _ = env.reset(seed=seed)
            task = (DATA / f"{env.problem}.pddl").read_text().split(";; task: ", 1)[1].split("\n")[0]
            assert f"Your task is to: {task}" in obs  # the problem is the one played
            seen.append(env.problem)
        problems_played = env.problems  # read before close: the env lives in a sandbox that close ends
        env.close()
        assert seen == [problems_played[s % len(problems_played)] for s in range(4)]  # the seed cycles through them
        assert set(seen) == set(problems_played[:4]) and all(split_of(p) == split for p in problems_played)
        played[split] = set(problems_played)
    assert played["train"] and played["heldout"] and not played["train"] & played["heldout"]
    assert played["train"] | played["heldout"] == set(problems())
    with pytest.raises(ValueError, match="split must be train or heldout, not 'x'"):
        make_env("alfworld:all", split="x")
    one = sorted(played["heldout"])[0]
    with pytest.raises(ValueError, match=f"{one} is in the heldout split"):
        make_env(f"alfworld:{one}", split="train")
