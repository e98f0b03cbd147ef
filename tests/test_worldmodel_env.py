import json

import pytest

from agentworld.envs import make_env
from agentworld.worldmodel.env import WorldModelEnv, step_all
from agentworld.worldmodel.prompt import render_state


class ScriptedEngine:
    """Replies with fixed text, so the env's bookkeeping is tested without a model (the model path is
    covered by the end-to-end test)."""

    version = 4

    def __init__(self, replies):
        self.replies = list(replies)
        self.prompts = []

    def render(self, messages):
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    def generate(self, prompts, max_new_tokens, temperature):
        from agentworld.models.hf_engine import Generation

        self.prompts += prompts
        return [Generation(self.replies.pop(0)) for _ in prompts]


def test_sim_env_takes_reward_and_termination_from_the_model():
    engine = ScriptedEngine([render_state("S[F]FF", 0, False), render_state("SF[F]F", 1, True)])
    env = WorldModelEnv(engine, "gymnasium:FrozenLake-v1", "gridworld", [("[S]FFF", {"admissible_actions": ["right"]})],
                        max_steps=10, history_turns=2)
    obs, info = env.reset(seed=0)
    assert obs == "[S]FFF" and info["admissible_actions"] == ["right"]
    assert env.step("right")[:4] == ("S[F]FF", 0.0, False, False)
    obs, r, term, trunc, info = env.step("right")
    assert (obs, r, term, info["won"], info["wm_version"]) == ("SF[F]F", 1.0, True, True, 4)
    assert "State:\n[S]FFF" in engine.prompts[1] and "S[F]FF" in engine.prompts[1]  # history kept


def test_malformed_model_output_truncates_by_max_steps():
    engine = ScriptedEngine(["garbage", "more garbage"])
    env = WorldModelEnv(engine, "e", "d", [("s", {})], max_steps=2)
    env.reset()
    _, r, term, trunc, info = env.step("x")
    assert (r, term, trunc, info.get("wm_format_error")) == (0.0, False, False, True)
    assert env.step("x")[3] is True


def test_step_all_mixes_real_and_simulated_envs():
    engine = ScriptedEngine([render_state("a", 0, False), render_state("b", 0, False)])
    sims = [WorldModelEnv(engine, "e", "d", [("s", {})]) for _ in range(2)]
    real = make_env("gymnasium:FrozenLake-v1", is_slippery=False)
    for e in sims:
        e.reset()
    real.reset(seed=0)
    out = step_all([sims[0], real, sims[1]], ["x", "right", "y"])
    assert [o[0] for o in out][0::2] == ["a", "b"] and "S[F]FF" in out[1][0]
    assert len(engine.prompts) == 2  # the two sim envs went in one batch


def play_real(env_id, seed):
    """The real env's oracle episode: its start state, and each step's action, outcome and info."""
    env = make_env(env_id, max_steps=20)
    try:
        obs, info = env.reset(seed=seed)
        steps = []
        while (action := env.oracle_action()) is not None:
            nobs, r, term, trunc, ninfo = env.step(action)
            steps.append((action, nobs, r, term, ninfo))
            if term or trunc:
                break
        return (obs, info), steps
    finally:
        env.close()


@pytest.mark.parametrize("env_id", ["search:train", "mcp:sqlite-train", "mcp:git-heldout", "mcp:time-convert",
                                    "bfcl:multi_turn_base", "terminal:train"])
def test_a_simulation_of_a_real_episode_offers_the_real_menus(env_id):
    """An LWM that predicts the real episode exactly (a scripted engine replaying it): each simulated step's menu,
    built from the predicted states by the family's menu function, is the real env's menu at that state."""
    pytest.importorskip({"mcp": "mcp", "bfcl": "bfcl_eval"}.get(env_id.split(":")[0], "json"))
    start, steps = play_real(env_id, seed=3)
    engine = ScriptedEngine([render_state(obs, r, term) for _, obs, r, term, _ in steps])
    sim = WorldModelEnv(engine, env_id, "x", [start], max_steps=20, history_turns=4)
    obs, info = sim.reset(seed=0)
    assert obs == start[0] and info["admissible_actions"] == start[1]["admissible_actions"]
    for action, real_obs, r, term, real_info in steps:
        obs, reward, terminated, _, info = sim.step(action)
        assert (obs, reward, terminated) == (real_obs.strip(), r, term)
        assert info["admissible_actions"] == real_info["admissible_actions"], action


def test_a_simulated_search_episode_offers_extract_and_answer_actions_after_a_predicted_search_result():
    """The menu comes from the predicted state, not the start state: after a predicted result list, the sim offers
    to read each predicted page and answers naming the top ones, pages no real search returned included."""
    (obs, info), steps = play_real("search:heldout", seed=5)
    kinds = lambda menu: {json.loads(a).get("tool", "answer") for a in menu}
    assert kinds(info["admissible_actions"]) == {"web_search"}
    made_up = "## Results for \"x\"\n[1] pydoc://module/madeup\nmadeup — A module no index holds.\nIt is made up."
    engine = ScriptedEngine([render_state(steps[0][1], 0, False), render_state(made_up, 0, False)])
    sim = WorldModelEnv(engine, "search:heldout", "search", [(obs, info)], history_turns=4)
    sim.reset(seed=0)
    first = sim.step(steps[0][0])[4]["admissible_actions"]
    assert first == steps[0][4]["admissible_actions"] and kinds(first) == {"web_search", "web_extractor", "answer"}
    menu = sim.step(first[0])[4]["admissible_actions"]  # another search: the LWM predicts other results
    assert '{"tool": "web_extractor", "arguments": {"url": "pydoc://module/madeup"}}' in menu
    assert '{"answer": "madeup"}' in menu and not set(menu) & {a for a in first if "extractor" in a}


def test_sim_arms_start_from_their_own_env_and_split_with_the_task():
    """A sim arm's start states are seeded resets of its own env (the heldout split here), task and all."""
    from agentworld.driver import env_facts
    from agentworld.config import EnvConfig
    from agentworld.envs.search import split_tasks

    domain, states = env_facts(EnvConfig(id="search:heldout", max_steps=6), 8)
    heldout = {t["question"] for t in split_tasks("heldout")}
    assert domain == "search" and len(states) > 1
    assert all(obs.splitlines()[0].removeprefix("Question: ") in heldout and info["open_actions"]
               for obs, info in states)
    sim = WorldModelEnv(ScriptedEngine([]), "search:heldout", domain, states)
    obs, info = sim.reset(seed=1)
    assert (obs, info["admissible_actions"]) in [(o, i["admissible_actions"]) for o, i in states]
