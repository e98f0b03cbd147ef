"""Behaviour cloning before RL (agent.bc, learners/bc.py): the oracle's episodes in a real env become a checkpoint
whose policy writes the oracle's actions after the prompts it renders in play; a finished clone is reused."""

import json

import pytest

from agentworld.config import AgentConfig, BCConfig, EnvConfig, Runtime, resolve_agent
from agentworld.envs import make_env_from
from agentworld.models.hf_engine import HFEngine
from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer
from agentworld.policy import LLMPolicy, policy_messages
from learners.bc import DEMO_SEED, clone, demonstrations

SQLITE = EnvConfig(id="mcp:sqlite-train", max_steps=6)  # a real MCP server; the oracle writes SQL and answers
EPISODES = 4


@pytest.fixture(scope="module")
def demos():
    return demonstrations(SQLITE, EPISODES, seed=0)


def test_demonstrations_are_the_oracles_whole_episodes_in_the_real_env(demos):
    rows, stats = demos
    assert stats == {"episodes": EPISODES, "steps": len(rows), "won": EPISODES}  # the oracle solves every task
    assert {r["episode_id"] for r in rows} == {f"demo-{i}" for i in range(EPISODES)}
    for r in rows:
        action = json.loads(r["action"])
        assert action.get("tool") in ("read_query", "write_query") if r["step"] == 0 else "answer" in action, r
    again, _ = demonstrations(SQLITE, EPISODES, seed=0)  # seeded: every arm of a run sees the same ones
    assert [r["action"] for r in again] == [r["action"] for r in rows]
    assert [r["action"] for r in demonstrations(SQLITE, EPISODES, seed=1)[0]] != [r["action"] for r in rows]


def test_a_clone_writes_the_oracles_actions_and_a_finished_one_is_reused(demos, tmp_path):
    rows, stats = demos
    agent = resolve_agent(AgentConfig(action_mode="generate", bc=BCConfig(episodes=EPISODES, steps=100, lr=3e-3)),
                          "mcp", 2048)
    texts = [render_chatml(policy_messages(r["env_id"], r["obs"], r["choices"]), True) + r["action"] for r in rows]
    init = build_tiny_model(train_tokenizer(texts * 5, 600, tmp_path / "tok"), tmp_path / "init", max_positions=2048)
    out = clone(str(init), str(tmp_path / "bc"), SQLITE, agent, Runtime(), seed=0, label="t")
    assert out["demo_episodes"] == EPISODES and out["demo_steps"] == stats["steps"] and out["demo_success"] == 1.0
    assert out["loss_last"] < 0.2 * out["loss_first"], out

    # the clone, greedy on the first observations of the demonstrations' own episodes, writes what the oracle wrote
    engine = HFEngine(out["path"])
    envs = [make_env_from(SQLITE) for _ in range(EPISODES)]
    try:
        firsts = [env.reset(seed=DEMO_SEED + i) for i, env in enumerate(envs)]
        acts = LLMPolicy.for_agent(engine, agent, greedy=True).act([SQLITE.id] * EPISODES, [o for o, _ in firsts],
                                                                   [i for _, i in firsts], envs=envs)
    finally:
        for e in envs:
            e.close()
    oracle = [r["action"] for r in sorted(rows, key=lambda r: r["episode_id"]) if r["step"] == 0]
    assert sum(a.action == o for a, o in zip(acts, oracle)) >= EPISODES // 2, ([a.action for a in acts], oracle)

    marker = json.loads((tmp_path / "bc" / "bc.json").read_text())
    assert marker == out
    again = clone("/nonexistent", str(tmp_path / "bc"), SQLITE, agent, Runtime(), seed=0)
    assert again == dict(out, reused=True)  # reused, not redone


def test_an_env_without_an_oracle_is_refused_by_name():
    with pytest.raises(ValueError, match="no oracle"):
        demonstrations(EnvConfig(id="gymnasium:CliffWalking-v1", max_steps=5), 1, seed=0)
