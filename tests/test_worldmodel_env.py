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
