"""ScienceWorld on the real jar (one JVM per env, ~2 s to start), on a task with a short gold path."""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from agentworld.envs import make_env, resolve_env_id
from agentworld.envs.scienceworld_env import NO_MATCH
from tests.oracle import follow_oracle

TASK = "scienceworld:lifespan-longest-lived"  # gold paths of 5-7 steps
STABLE_SEED = 2  # variation 2 gave the same world and gold path on 15 of 15 loads (many others do not)


def our_jvms() -> list[str]:
    """Pids of the JVMs this test process started: each runs in its env's sandbox, a descendant, not a child."""
    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:  # exited
                return False
        return False

    return [p for p in subprocess.run(["pgrep", "java"], capture_output=True, text=True).stdout.split() if ours(int(p))]


@pytest.fixture(scope="module")
def env():
    env = make_env(TASK, max_steps=50)
    yield env
    env.close()


def test_gold_path_solves_the_task(env):
    for seed in (0, 1):
        obs, info = env.reset(seed=seed)
        assert obs.startswith("Task Description:") and "This room is called" in obs
        start = info["score"]
        rewards, terms, info = follow_oracle(env)
        assert info["won"] and terms[-1] and not any(terms[:-1])
        assert info["score"] == 1.0 and sum(rewards) == pytest.approx(1.0 - start)  # per-step rewards
        assert env.oracle_action() is None and info["admissible_actions"] == []


def test_menu_is_a_sample_of_the_valid_actions(env):
    obs, info = env.reset(seed=0)
    sim = env.env._env
    menu = info["admissible_actions"]
    assert info["open_actions"] and 5 <= len(menu) <= 15 and "reset task" not in menu
    assert set(menu) <= set(sim.get_valid_action_object_combinations())
    assert len({a.split()[0] for a in menu}) >= 5  # several verbs, not fifteen `focus on X`
    env.step(env.oracle_action())  # open a door, then walk through it: a new room gets a new menu
    obs, _, _, _, info = env.step(env.oracle_action())
    assert obs.startswith("You move to") and info["admissible_actions"] != menu
    assert set(info["admissible_actions"]) <= set(sim.get_valid_action_object_combinations())
    action = next(a for a in info["admissible_actions"] if not a.startswith("focus"))  # focus may end the task
    obs, r, term, trunc, info = env.step(action)
    assert obs != NO_MATCH and "error" not in info


def gold_trace(env, seed):
    obs, info = env.reset(seed=seed)
    trace = [obs, info["admissible_actions"]]
    while (action := env.oracle_action()) is not None:
        trace.append((action, *env.step(action)[:3]))
    return trace


def test_reload_gives_the_same_world_and_gold_path(env):
    assert gold_trace(env, STABLE_SEED) == gold_trace(env, STABLE_SEED)


@pytest.mark.slow
def test_another_jvm_gives_the_same_world(env):
    other = make_env(TASK)
    assert gold_trace(other, STABLE_SEED) == gold_trace(env, STABLE_SEED)
    other.close()


@pytest.mark.parametrize("bad", ["", "xyzzy", None, 4, "look around\ninventory"])
def test_malformed_action_is_an_error_observation(env, bad):
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step(bad)
    assert info["error"] and info["unparsed"] and obs and r == 0 and not term and not trunc
    assert follow_oracle(env)[2]["won"]  # the task carries on unharmed


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="boil"):
        resolve_env_id("scienceworld:make-coffee")


@pytest.mark.slow
def test_crashed_jvm_is_recreated_by_the_supervisor():
    env = make_env(TASK)
    env.reset(seed=0)
    [java] = [p for p in env.env.sandbox.pids() if Path(f"/proc/{p}/comm").read_text().strip() == "java"]
    os.kill(java, signal.SIGKILL)  # the JVM, in the env's sandbox
    obs, r, term, trunc, info = env.step("look around")
    assert trunc and info["crashed"] and env.crashes == 1
    env.reset(seed=0)
    assert follow_oracle(env)[2]["won"]
    env.close()


@pytest.mark.slow
def test_close_leaves_no_jvm_of_ours():
    before = set(our_jvms())
    env = make_env(TASK)
    env.reset(seed=0)
    assert set(our_jvms()) - before  # the env's JVM is our child
    env.close()
    env.close()  # idempotent
    assert set(our_jvms()) <= before
    with pytest.raises(ValueError, match="simplification"):
        make_env(TASK, simplifications="no-gravity")  # a failed build stops its JVM too
    assert set(our_jvms()) <= before


def test_splits_are_scienceworlds_train_and_test_variations(env):
    heldout = make_env(TASK, max_steps=50, split="heldout")
    try:
        assert heldout.variations == heldout.env._env.get_variations_test()
        assert env.variations == env.env._env.get_variations_train()  # no split: train, as before
        played = {}
        for e, split in ((env, "train"), (heldout, "heldout")):
            seen = []
            for seed in (0, 1, 0):
                e.reset(seed=seed)
                seen.append(e.variation)
            assert seen[0] == seen[2] != seen[1]
            played[split] = set(seen)
        assert played["train"] and played["heldout"] and not played["train"] & played["heldout"]
        assert not set(env.variations) & set(heldout.variations)
    finally:
        heldout.close()
    with pytest.raises(ValueError, match="split must be train or heldout, not 'x'"):
        make_env(TASK, split="x")
