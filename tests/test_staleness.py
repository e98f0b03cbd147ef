"""Asynchrony with bounded staleness, on real Ray with the real FrozenLake env and a real tiny policy: two rollout
actors and a learner run concurrently, and every row in the replay is trained on at most `max_staleness` versions
after the policy version that produced it; `max_staleness: 0` is the synchronous loop."""

import math
import random
import time

import pytest
import ray
import torch

from actors.rollout import RolloutActor, RolloutSpec
from agentworld.arms.real import Real
from agentworld.config import AgentConfig, ArmConfig, EnvConfig, EvalConfig, Runtime, resolve_agent
from agentworld.envs import make_env_from
from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer
from agentworld.policy import policy_messages
from agentworld.replay import ReplayService
from agentworld.models.hf_engine import HFEngine
from agentworld.policy import LLMPolicy
from learners.agent import AgentLearner, LearnerSpec, agent_loss, proximal_logprobs
from learners.losses import GRPO
from learners.weight_sync import WeightRegistry

ENV = EnvConfig(id="gymnasium:FrozenLake-v1", kwargs={"map_name": "4x4", "is_slippery": False}, max_steps=12)


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory):
    env, rng, texts = make_env_from(ENV), random.Random(0), []
    for ep in range(20):
        obs, info = env.reset(seed=ep)
        for _ in range(6):
            action = rng.choice(info["admissible_actions"])
            texts.append(render_chatml(policy_messages(env.env_id, obs, info["admissible_actions"]), True) + action)
            obs, _, term, trunc, info = env.step(action)
            if term or trunc:
                break
    out = tmp_path_factory.mktemp("policy")
    build_tiny_model(train_tokenizer(texts, 400, out), out)
    return str(out)


def run_arm(policy_path: str, run_dir, max_staleness: int, updates: int = 5) -> tuple[list[dict], list[dict]]:
    """One real arm: a learner and two actors, concurrently. Returns (the arm's replay rows, its train rows)."""
    replay = ReplayService.options(num_cpus=0).remote(str(run_dir / "replay"))
    registry = WeightRegistry.remote()
    agent = resolve_agent(AgentConfig(updates=updates, episodes_per_update=8, epochs=1, max_staleness=max_staleness),
                          "gridworld")
    arm = ArmConfig(name="a", envs_per_actor=4)
    learner = AgentLearner.options(num_cpus=0).remote(LearnerSpec(
        arm=arm, kind=Real(), loss=GRPO, init_path=policy_path, run_dir=str(run_dir), t0=time.time(), agent=agent,
        eval=EvalConfig(every_updates=100, episodes=2), env=ENV, seed=0, runtime=Runtime()), replay, registry)
    actors = [RolloutActor.options(num_cpus=0).remote(RolloutSpec(
        run_id="r", arm=arm, kind=Real(), env=ENV, domain="gridworld", agent=agent, runtime=Runtime(), seed=k,
        policy=policy_path, actor_id=f"a{k}"), replay, registry) for k in range(2)]
    runs = [a.run.remote() for a in actors]
    ray.get(learner.run.remote())
    for a in actors:
        a.stop.remote()
    assert all(not s["errors"] for s in ray.get(runs))
    train = [m for m in ray.get(learner.metrics.remote()) if m["kind"] == "train"]
    return ray.get(replay.sample.remote(arm="a")).to_pylist(), train


def consumed_staleness(rows: list[dict], train: list[dict]) -> list[int]:
    """The learner trains on the arm's rows in replay order, `batch_steps` per update: update k (made with policy
    version k) consumes the next batch. Staleness of a row = k - the policy version that produced it. Rows that
    landed after the last update would go to the next one, k = len(train): they are held to the bound too."""
    out, start = [], 0
    for k, t in enumerate(train):
        out += [k - r["policy_version"] for r in rows[start : start + t["batch_steps"]]]
        start += t["batch_steps"]
    return out + [len(train) - r["policy_version"] for r in rows[start:]]


@pytest.mark.slow
@pytest.mark.parametrize("max_staleness", [0, 1])
def test_every_replay_row_is_trained_within_the_staleness_bound(ray_local, policy_path, tmp_path, max_staleness):
    rows, train = run_arm(policy_path, tmp_path, max_staleness)
    staleness = consumed_staleness(rows, train)
    trained = sum(t["batch_steps"] for t in train)
    assert len(train) == 5 and len(staleness) == len(rows) >= trained > 0
    assert {r["actor_id"] for r in rows} == {"a0", "a1"}
    assert min(staleness) >= 0 and max(staleness) <= max_staleness  # every row of the replay
    assert max(t["max_staleness_seen"] for t in train) == max(staleness[:trained])
    assert all(r["parsed"] for r in rows) and all(t["parse_rate"] == 1.0 for t in train)  # chosen moves all parse
    assert {t["init"] for t in train} == {"lwm"}  # agent.init, as every row of the learner says
    if max_staleness:  # actors ran ahead of the learner: the run really was asynchronous
        assert max(staleness[:trained]) == 1


def test_the_agent_loss_corrects_stale_rows_instead_of_clipping_them_away(policy_path):
    """A row whose behaviour policy gave its action e^-1 of the current probability: plain PPO's ratio to the
    behaviour policy (e > 1 + clip) is clipped and the row trains nothing; the decoupled loss clips the ratio to
    the proximal policy (the current weights, ratio 1) and weights the row by proximal / behaviour probability."""
    torch.manual_seed(0)
    engine = HFEngine(policy_path)
    env = make_env_from(ENV)
    obs, info = env.reset(seed=0)
    act = LLMPolicy(engine, mode="choice", temperature=1.0).act([env.env_id], [obs], [info])[0]
    prompt = LLMPolicy(engine).prompts([env.env_id], [obs], [info])[0]
    row = dict(prompt=prompt, action=act.action, choices=act.choices, policy_version=0)
    model, tok = engine.model, engine.tok
    (now,) = proximal_logprobs(model, tok, [dict(row, logprobs=[0.0], policy_version=-1)], 0, 1.0)
    assert now == pytest.approx(act.logprobs[0], abs=1e-5)  # the version that acted: its recorded logprob
    stale = dict(row, logprobs=[now - 1.0], policy_version=-1)
    assert proximal_logprobs(model, tok, [stale], 0, 1.0) == pytest.approx([now], abs=1e-5)

    def grad_norm(items):
        model.zero_grad()
        loss = agent_loss(model, tok, items, temperature=1.0, clip=0.2)
        loss.backward()
        return float(loss.detach()), sum(float(p.grad.norm()) for p in model.parameters() if p.grad is not None)

    ppo_loss, ppo_grad = grad_norm([(stale, 1.0)])  # no proximal logprob: plain PPO
    loss, grad = grad_norm([(stale, 1.0, now)])
    assert ppo_grad == 0 and ppo_loss == pytest.approx(-1.2)  # clipped at 1 + clip: nothing learned
    assert grad > 0 and loss == pytest.approx(-math.e, rel=1e-4)  # ratio 1, weight e
    assert grad_norm([(dict(row, logprobs=act.logprobs), 1.0, act.logprobs[0])])[0] == pytest.approx(-1.0, rel=1e-4)
