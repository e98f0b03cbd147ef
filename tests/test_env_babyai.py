import random
import re

import numpy as np
import pytest

pytest.importorskip("minigrid")

from agentworld.envs import make_env, resolve_env_id
from agentworld.envs.babyai import ACTIONS


def _solve(env, seed: int, limit: int = 200) -> dict:
    env.reset(seed=seed)
    for _ in range(limit):
        obs, r, term, trunc, info = env.step(env.oracle_action())
        if term or trunc:
            break
    return {"won": info["won"], "reward": r}


def test_level_names_map_to_gym_ids():
    resolve_env_id("babyai:GoToLocal")
    resolve_env_id("babyai:GoToObjS6-v1")
    with pytest.raises(ValueError, match="GoToLocal"):
        resolve_env_id("babyai:GoToNowhere")


def _cell_at(u, phrase: str):
    """The grid cell a phrase like "2 steps ahead and 1 to the left" points at, from the agent."""
    ahead = re.search(r"(\d+) steps? ahead", phrase)
    side = re.search(r"(\d+) to the (left|right)", phrase)
    offset = (int(ahead.group(1)) if ahead else 0) * u.dir_vec
    if side:
        offset = offset + int(side.group(1)) * (1 if side.group(2) == "right" else -1) * u.right_vec
    return u.grid.get(*(np.array(u.agent_pos) + offset))


def test_observation_names_what_is_where_relative_to_the_agent():
    env = make_env("babyai:GoToLocal")
    obs, info = env.reset(seed=0)
    u = env.env.env.unwrapped
    assert obs.startswith(f"Mission: {u.mission}.\nYou are facing ")
    assert info["admissible_actions"] == ACTIONS and not info["won"]
    rng = random.Random(0)
    objects = walls = 0
    for _ in range(30):  # walk around; every object and wall the text names is really where it says
        for item in re.search(r"You see (.*)\.\n", obs).group(1).split("; "):
            if item != "no objects":
                color, kind = item.split()[1:3]
                obj = _cell_at(u, item)
                assert obj is not None and (obj.color, obj.type) == (color, kind), item
                objects += 1
        for item in (re.search(r"Nearest walls: (.*)\.\n", obs) or [None, ""])[1].split(", "):
            if item:
                assert _cell_at(u, item).type == "wall", item
                walls += 1
        obs, *_ = env.step(rng.choice(["left", "right", "forward"]))
    assert objects > 10 and walls > 10
    env.close()


def test_bot_solves_gotolocal_on_ten_seeds():
    env = make_env("babyai:GoToLocal", max_steps=100)
    results = [_solve(env, seed) for seed in range(10)]
    assert all(r["won"] and r["reward"] > 0 for r in results)
    env.close()


def test_bot_solves_open_and_pickuploc():
    for level in ("Open", "PickupLoc"):
        env = make_env(f"babyai:{level}", max_steps=200)
        assert all(_solve(env, seed)["won"] for seed in range(3)), level
        env.close()


def test_bot_recovers_after_random_detours():
    env = make_env("babyai:GoToLocal", max_steps=100)
    env.reset(seed=4)
    for a in ["left", "forward", "forward", "right"]:
        env.step(a)
    for _ in range(100):
        obs, r, term, trunc, info = env.step(env.oracle_action())
        if term or trunc:
            break
    assert info["won"]
    env.close()


def test_seeded_reset_and_actions_are_deterministic():
    def run(seed):
        env = make_env("babyai:PickupLoc")
        obs, _ = env.reset(seed=seed)
        rng = random.Random(1)
        seen = [obs] + [env.step(rng.choice(ACTIONS))[0] for _ in range(20)]
        env.close()
        return seen

    assert run(3) == run(3)
    assert run(3)[0] != run(4)[0]


@pytest.mark.parametrize("bad", ["", "jump", None, 2, "turn left"])
def test_malformed_action_is_an_error_observation(bad):
    env = make_env("babyai:GoToLocal", max_steps=5)
    before, _ = env.reset(seed=0)
    obs, r, term, trunc, info = env.step(bad)
    assert obs.startswith("Invalid action") and before in obs
    assert r == 0 and not term and not trunc and info["error"] and info["unparsed"]
    assert env.step("Left.")[0] != before  # the episode goes on; case and punctuation are forgiven
    env.close()


def test_max_steps_truncates_and_close_is_idempotent():
    env = make_env("babyai:GoToLocal", max_steps=2)
    env.reset(seed=0)
    assert [env.step("left")[3] for _ in range(2)] == [False, True]
    env.close()
    env.close()
    assert env.env.bot is None


def test_splits_play_disjoint_seeds():
    from agentworld.envs.babyai import SPLIT_SEEDS
    from agentworld.envs.base import split_of

    played = {}
    for split in ("train", "heldout"):
        env = make_env("babyai:GoToLocal", split=split)
        views, seeds = [], []
        for seed in (0, 1, 0, SPLIT_SEEDS):  # SPLIT_SEEDS wraps to 0
            obs, _ = env.reset(seed=seed)
            views.append(obs)
            seeds.append(env.seed)
        env.close()
        assert seeds[0] == seeds[2] == seeds[3] != seeds[1] and views[0] == views[2] == views[3]
        assert all(split_of(f"BabyAI-GoToLocal-v0:{s}") == split for s in seeds)
        alias = make_env("babyai:GoToLocal-v0", split=split)
        alias.reset(seed=1)
        assert alias.seed == seeds[1]  # the level's gym id is the key, however it is named
        alias.close()
        played[split] = set(seeds)
    assert not played["train"] & played["heldout"]
    with pytest.raises(ValueError, match="split must be train or heldout, not 'x'"):
        make_env("babyai:GoToLocal", split="x")
