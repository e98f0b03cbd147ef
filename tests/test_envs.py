import pytest

from agentworld.envs import make_env, resolve_env_id
from agentworld.envs.gym_text import ansi_to_text

FL = dict(map_name="4x4", is_slippery=False)


def test_frozenlake_render_marks_agent_cell():
    env = make_env("gymnasium:FrozenLake-v1", **FL)
    obs, info = env.reset(seed=0)
    assert obs.splitlines()[0] == "[S]FFF"
    assert "\x1b" not in obs
    obs, *_ = env.step("right")
    assert "S[F]FF" in obs
    assert info["admissible_actions"] == ["left", "down", "right", "up"]


def test_frozenlake_winning_path_wins():
    env = make_env("gymnasium:FrozenLake-v1", **FL)
    env.reset(seed=0)
    for a in ["right", "right", "down", "down", "down"]:
        _, r, term, trunc, info = env.step(a)
        assert not term and r == 0
    obs, r, term, trunc, info = env.step("right")
    assert r == 1.0 and term and info["won"] and obs.splitlines()[-1] == "HFF[G]"


def test_cliffwalking_agent_moves_and_is_deterministic():
    a, b = make_env("gymnasium:CliffWalking-v1"), make_env("gymnasium:CliffWalking-v1")
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    assert oa == ob and "x" in oa.splitlines()[-1]
    up, *_ = a.step("up")
    assert up != oa and "x" in up.splitlines()[2]
    assert b.step("UP.")[0] == up  # case and punctuation are forgiven


def test_slippery_frozenlake_is_seeded():
    def run(seed):
        env = make_env("gymnasium:FrozenLake-v1", map_name="4x4", is_slippery=True)
        env.reset(seed=seed)
        return [env.step(a)[0] for a in ["right", "down", "right", "down"]]

    assert run(5) == run(5)


@pytest.mark.parametrize("bad", ["jump", "", None, 42, "7"])
def test_invalid_action_is_an_error_observation(bad):
    env = make_env("gymnasium:FrozenLake-v1", **FL)
    before, _ = env.reset(seed=0)
    obs, r, term, trunc, info = env.step(bad)
    assert "Invalid action" in obs and before in obs
    assert r == 0 and not term and info["error"] and info["unparsed"]
    assert "unparsed" not in env.step("Left")[4]  # a move of the action set parses


def test_max_steps_truncates():
    env = make_env("gymnasium:FrozenLake-v1", max_steps=3, **FL)
    env.reset(seed=0)
    flags = [env.step("left")[3] for _ in range(3)]
    assert flags == [False, False, True]


def test_unknown_env_ids_raise_clear_errors():
    with pytest.raises(ValueError, match="NoSuchEnv"):
        resolve_env_id("gymnasium:NoSuchEnv-v0")
    with pytest.raises(ValueError, match="PREFIX:NAME"):
        make_env("nonsense")
    with pytest.raises(ValueError, match="kwargs"):
        make_env("gymnasium:FrozenLake-v1", no_such_kwarg=1)


def test_taxi_colours_become_distinct_marks():
    text = ansi_to_text("|\x1b[43m \x1b[0m|\x1b[35mY\x1b[0m|\x1b[34;1mB\x1b[0m|")
    assert text == "|[ ]|{Y}|{B}|"
    assert ansi_to_text("\x1b[35mY\x1b[0m", {"35": "<{}>"}) == "<Y>"
