"""TextWorldExpress games on the real TWX jar (one JVM per env)."""

import os
import random
import signal
from pathlib import Path

import pytest

from agentworld.envs import make_env, resolve_env_id
from tests.oracle import follow_oracle


def jvm_pids(env) -> list[int]:
    """Host pids of the env's JVM: it runs in the env's sandbox (agentworld/envs/remote.py)."""
    return [p for p in env.env.sandbox.pids() if Path(f"/proc/{p}/comm").read_text().strip() == "java"]


@pytest.fixture(scope="module")
def coin():
    env = make_env("twx:coin", max_steps=100)
    yield env
    env.close()


@pytest.mark.parametrize("game", ["coin", "cookingworld"])
def test_gold_path_wins(game):
    env = make_env(f"twx:{game}", max_steps=200)
    for seed in range(3):
        obs, info = env.reset(seed=seed)
        assert env.env._env.getTaskDescription() in obs and "You are in the" in obs
        assert info["admissible_actions"] and info["score"] == 0 and not info["won"]
        rewards, terms, info = follow_oracle(env, info)
        assert info["won"] and terms[-1] and not any(terms[:-1])
        assert sum(rewards) == pytest.approx(info["score"]) == pytest.approx(1.0)  # per-step rewards add up
        assert env.oracle_action() is None and info["admissible_actions"] == []
    env.close()


def test_random_episode_runs_and_truncates(coin):
    obs, info = coin.reset(seed=5)
    rng = random.Random(0)
    for t in range(1, 101):
        obs, r, term, trunc, info = coin.step(rng.choice(info["admissible_actions"]))
        assert obs and "error" not in info  # every menu action is understood
        if term:
            break
    assert term or trunc


def test_seeded_resets_are_deterministic_across_jvms(coin):
    other = make_env("twx:coin")

    def run(env):
        obs, info = env.reset(seed=7)
        rng, trace = random.Random(1), [(obs, info["admissible_actions"])]
        for _ in range(20):
            obs, r, term, _, info = env.step(rng.choice(info["admissible_actions"]))
            trace.append((obs, r, info["admissible_actions"]))
            if term:
                break
        return trace

    assert run(coin) == run(other) == run(coin)
    assert coin.reset(seed=8)[0] != coin.reset(seed=7)[0]
    other.close()


@pytest.mark.parametrize("bad", ["", "xyzzy", None, 3, "look around; inventory"])
def test_malformed_action_is_an_error_observation(coin, bad):
    coin.reset(seed=0)
    obs, r, term, trunc, info = coin.step(bad)
    assert info["error"] and info["unparsed"] and obs and r == 0 and not term and not trunc
    assert follow_oracle(coin, info)[2]["won"]  # the game carries on unharmed


def test_game_params_shape_the_world():
    small = make_env("twx:coin", numLocations=1)
    obs, info = small.reset(seed=0)
    assert "take coin" in info["admissible_actions"]  # one room: the coin is right here
    small.close()
    with pytest.raises(ValueError, match="numLocations"):
        make_env("twx:coin", numRooms=3)
    with pytest.raises(ValueError, match="coin"):
        resolve_env_id("twx:zork")


def test_crashed_jvm_is_recreated_by_the_supervisor():
    env = make_env("twx:coin")
    env.reset(seed=0)
    [java] = jvm_pids(env)
    os.kill(java, signal.SIGKILL)
    obs, r, term, trunc, info = env.step("look around")
    assert trunc and info["crashed"] and env.crashes == 1
    obs, info = env.reset(seed=0)
    assert follow_oracle(env, info)[2]["won"]
    env.close()


def test_close_stops_the_jvm():
    env = make_env("twx:cookingworld")
    [java], box = jvm_pids(env), env.env.sandbox
    env.reset(seed=0)
    env.close()
    assert not box.pids()  # the JVM and all else in its sandbox exited and were reaped
    with pytest.raises(ProcessLookupError):
        os.kill(java, 0)
    env.close()  # idempotent


def test_splits_are_twxs_train_and_test_folds(coin):
    heldout = make_env("twx:coin", max_steps=100, split="heldout")
    try:
        assert coin.fold == "train" and heldout.fold == "test"  # no split: train, as before
        played = {}
        for env in (coin, heldout):
            seeds = []
            for seed in (0, 1, 0):
                env.reset(seed=seed)
                seeds.append(env.seed)
            assert seeds[0] == seeds[2] != seeds[1]  # deterministic, and seeds pick different worlds
            played[env.fold] = set(seeds)
        assert played["train"] and played["test"] and not played["train"] & played["test"]
        assert not set(coin.seeds) & set(heldout.seeds)
    finally:
        heldout.close()
    with pytest.raises(ValueError, match="split='heldout' is fold 'test', but fold='train'"):
        make_env("twx:coin", split="heldout", fold="train")
    with pytest.raises(ValueError, match="split must be train or heldout, not 'x'"):
        make_env("twx:coin", split="x")
