"""`agentworld/Sim-v0`: the LWM as a gymnasium env with the real FrozenLake's spaces, on a real tiny model."""

import gymnasium as gym
import numpy as np
import pytest

from agentworld.envs.gym_text import GymTextEnv, ansi_to_text
from agentworld.gym_sim import SIM_ID, SimEnv, grid_cell
from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer
from agentworld.worldmodel.prompt import render_state

LAKE = dict(map_name="4x4", is_slippery=False)


@pytest.fixture(scope="module")
def tiny_lwm(tmp_path_factory):
    """An untrained tiny LWM: it writes no valid grid, which is what the parse-error path needs."""
    out = tmp_path_factory.mktemp("lwm")
    real = GymTextEnv("FrozenLake-v1", **LAKE)
    text, _ = real.reset(seed=0)
    corpus = [render_chatml([{"role": "user", "content": f"State:\n{text}\nAction: {a}"},
                             {"role": "assistant", "content": render_state(text, 0.0, False)}]) for a in real.actions] * 5
    build_tiny_model(train_tokenizer(corpus, 300, out), out)
    return str(out)


@pytest.mark.parametrize("map_name", ["4x4", "8x8"])
def test_grid_cell_reads_the_real_state_in_every_cell(map_name):
    env = gym.make("FrozenLake-v1", map_name=map_name, render_mode="ansi")
    env.reset(seed=0)
    nrow, ncol = env.unwrapped.desc.shape
    for s in range(nrow * ncol):
        env.unwrapped.s = s
        assert grid_cell(ansi_to_text(env.render()), nrow, ncol) == s


@pytest.mark.parametrize("text", ["", "SFFF\nFHFH\nFFFH\nHFFG", "[S]FFF\nF[H]FH\nFFFH\nHFFG", "[S]FFF\nFHFH\nFFFH",
                                  "[S]FF\nFHFH\nFFFH\nHFFG", "[S][F]FF\nFHFH\nFFFH\nHFFG", "[S]FFF\nFHFH\nFFFH\nHFFG\nFFFF"])
def test_grid_cell_rejects_malformed_states(text):
    assert grid_cell(text, 4, 4) is None


@pytest.mark.parametrize("path,goal", [(["right", "right", "down", "down", "down", "right"], 1.0), (["down", "right"], 0.0)])
def test_perfect_lwm_replies_replay_the_real_episode(tiny_lwm, path, goal):
    """Fed the real env's own next states, the sim returns exactly the real observations, rewards and ends."""
    sim, real = SimEnv(tiny_lwm, env_kwargs=LAKE), GymTextEnv("FrozenLake-v1", **LAKE)
    obs, _ = sim.reset(seed=0)
    real.reset(seed=0)
    assert obs == real.env.unwrapped.s == 0
    for action in path:
        text, reward, terminated, truncated, _ = real.step(action)
        got = sim.result(*sim.wm.observe(action, render_state(text, reward, terminated)))
        assert got[:4] == (real.env.unwrapped.s, reward, terminated, truncated)
        assert not got[4]["sim_parse_error"]
    assert terminated and reward == goal  # the goal, or a hole


def test_gymnasium_make_gives_the_real_spaces_and_ends_on_an_unparseable_state(tiny_lwm):
    env = gym.make(SIM_ID, model_path=tiny_lwm, env_kwargs=LAKE, max_new_tokens=8)
    real = gym.make("FrozenLake-v1", **LAKE)
    assert env.observation_space == real.observation_space and env.action_space == real.action_space
    obs, info = env.reset(seed=1)
    assert obs == 0 and info["text"].startswith("[S]")
    obs, reward, terminated, truncated, info = env.step(2)
    assert info["sim_parse_error"] and terminated and reward == 0.0 and env.observation_space.contains(obs)
    assert env.unwrapped.parse_errors == 1 and env.unwrapped.steps == 1


def test_sim_refuses_an_env_it_cannot_decode(tiny_lwm):
    with pytest.raises(ValueError, match="no decoder"):
        SimEnv(tiny_lwm, env_id="CliffWalking-v1")


def test_vector_sim_batches_one_generation_and_resets_on_the_next_step(tiny_lwm):
    vec = gym.make_vec(SIM_ID, num_envs=3, vectorization_mode="vector_entry_point", model_path=tiny_lwm,
                       env_kwargs=LAKE, max_new_tokens=8)
    sims = vec.unwrapped.envs
    engine = sims[0].wm.engine
    assert all(s.wm.engine is engine for s in sims)  # one model in memory for all envs
    batches, generate = [], engine.generate
    engine.generate = lambda prompts, **kw: batches.append(len(prompts)) or generate(prompts, **kw)
    obs, _ = vec.reset(seed=0)
    assert obs.tolist() == [0, 0, 0] and vec.observation_space.contains(obs)
    obs, rew, term, trunc, info = vec.step(np.array([2, 1, 0]))
    assert batches == [3] and term.all() and info["sim_parse_error"].all()
    obs, rew, term, trunc, info = vec.step(np.array([2, 1, 0]))  # next-step autoreset: no generation
    assert batches == [3] and obs.tolist() == [0, 0, 0] and not term.any()
    assert vec.unwrapped.steps == 3 and vec.unwrapped.parse_errors == 3
    vec.close()
