"""The losses registry: every built-in on fixed batches. grpo/gspo must give, to the bit, the numbers of the code they
replaced (learners/agent.py's group_advantages and policy_loss, wm_recipe's rl_objective and group advantages):
the reference values below were computed with that code."""

import math
import pickle
from functools import partial

import pytest
import torch

import learners.agent
from agentworld.registry import LOSSES
from learners.agent import agent_loss
from learners.losses import Loss, group_advantages, kl_penalty, normalised, token_clip

# agent: (env_id, episode_id, per-step rewards); y's returns differ by an ulp only (0.1 + 0.2 vs 0.3): no spread
EPISODES = [("x", "e1", [0.1, 0.2]), ("y", "f1", [0.1, 0.2]), ("x", "e2", [0.7]), ("x", "e3", [0.0]),
            ("z", "g1", [0.5]), ("x", "e4", [0.3, 0.3, 0.05]), ("y", "f2", [0.2, 0.1]), ("w", "h1", [0.0]),
            ("x", "e5", [1.0]), ("x", "e6", [0.45]), ("y", "f3", [0.3]), ("w", "h2", [1.0])]
ROWS = [dict(episode_id=e, env_id=g, reward=r) for g, e, rs in EPISODES for r in rs]
ROWS_ADV = [-0.6832626759065901, -0.6832626759065901, 0.0, 0.0, 0.5781453411517298, -1.6293186887003304, 0.0,
            0.42046933901943995, 0.42046933901943995, 0.42046933901943995, 0.0, 0.0, -0.999998000004, 1.52420135394547,
            -0.21023466950972017, 0.0, 0.999998000004]

# agent objective: the model's summed logprobs, the behaviour ones, the proximal ones, the advantages
NEW, BEH, PROX, ADV = [-0.5, -1.2, -0.1, -2.0, -0.7], [-0.6, -0.2, -0.1, -3.5, -0.4], \
    [-0.55, -1.0, -0.1, -2.2, -0.75], [1.0, -0.5, 0.3, 2.0, -1.5]
AGENT_REF = {  # with proximal logprobs (decoupled) and without (plain PPO): loss, d loss / d new
    True: (-1.7832629680633545, [-0.2210341840982437, 0.03678794205188751, -0.06000000238418579, 0.0,
                                 0.22224543988704681]),
    False: (-0.4410342276096344, [-0.2210341989994049, 0.0, -0.06000000238418579, 0.0, 0.0]),
}

# world model: per-token logprobs [B, T], their mask, per-row advantages
WNEW = [[-0.5, -1.0, -0.2, -3.0], [-0.1, -0.4, -2.0, 0.0], [-1.5, -0.3, -0.9, -0.6]]
WOLD = [[-0.7, -0.9, -0.2, -2.0], [-0.3, -0.4, -1.0, 0.0], [-1.0, -0.5, -0.9, -0.2]]
MASK = [[1.0, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]
WADV = [0.8, -1.1, 0.4]
WM_REF = {
    "grpo": (-0.019693633541464806, [[0.0, -0.08042999356985092, -0.08888889104127884, -0.032700397074222565],
                                     [0.1492825597524643, 0.12222222238779068, 0.0, 0.0],
                                     [-0.026956919580698013, 0.0, -0.0, 0.0]]),
    "gspo": (-0.03436536714434624, [[-0.053234416991472244] * 4, [0.0] * 4,
                                    [-0.05738053470849991, -0.05738053470849991, -0.0, -0.0]]),
}
WM_RETURNS = [[0.1, 0.7, 0.7, 0.25], [0.0, 1.0, 0.5, 0.5]]
WM_ADV = [-1.0914067029953003, 0.8488718867301941, 0.8488718867301941, -0.6063370704650879, -1.224741816520691,
          1.224741816520691, 0.0, 0.0]


def wm_advantages(loss: Loss, r: torch.Tensor) -> torch.Tensor:
    """As run_rl computes them: torch's unbiased std over each group (a row)."""
    return loss.advantage(r, r.mean(1, keepdim=True), r.std(1, keepdim=True), r.shape[1])


def test_builtins_are_registered():
    assert {"grpo", "gspo", "ppo", "rloo"} <= set(LOSSES.names())


@pytest.mark.parametrize("name", ["grpo", "gspo"])
def test_agent_advantages_and_loss_are_the_old_ones(name, monkeypatch):
    loss = LOSSES.get(name)
    assert group_advantages(ROWS, loss) == ROWS_ADV
    for decoupled, (value, grad) in AGENT_REF.items():
        new = torch.tensor(NEW, requires_grad=True)
        monkeypatch.setattr(learners.agent, "action_logprobs", lambda *a, **k: new)
        items = [(dict(logprobs=[b]), x) + ((p,) if decoupled else ()) for b, x, p in zip(BEH, ADV, PROX)]
        out = agent_loss(None, None, items, temperature=1.0, clip=0.2, loss=loss)
        out.backward()
        assert (out.item(), new.grad.tolist()) == (value, grad)


@pytest.mark.parametrize("name", ["grpo", "gspo"])
def test_world_model_advantages_and_objective_are_the_old_ones(name):
    loss = LOSSES.get(name)
    assert wm_advantages(loss, torch.tensor(WM_RETURNS)).view(-1).tolist() == WM_ADV
    new = torch.tensor(WNEW, requires_grad=True)
    out = loss.objective(new, torch.tensor(WOLD), torch.tensor(MASK), torch.tensor(WADV), 0.2)
    out.backward()
    assert (out.item(), new.grad.tolist()) == WM_REF[name]


@pytest.mark.parametrize("name, expected", [("ppo", [-2.0, -1.0, 0.0, 3.0]),
                                            ("rloo", [1 - 11 / 3, 2 - 10 / 3, 3 - 9 / 3, 6 - 6 / 3])])
def test_baselines_without_std(name, expected):
    loss = LOSSES.get(name)
    # world model: a group of four returns (mean 3; rloo: each against the mean of the other three)
    assert wm_advantages(loss, torch.tensor([[1.0, 2.0, 3.0, 6.0]])).view(-1).tolist() == pytest.approx(expected)
    # agent: the same four episodes in one env, plus one alone in another (no baseline: 0)
    rows = [dict(episode_id=str(i), env_id="x", reward=r) for i, r in enumerate([1.0, 2.0, 3.0, 6.0])]
    assert group_advantages(rows + [dict(episode_id="s", env_id="y", reward=1.0)], loss) == pytest.approx(expected + [0])
    # objective: the clipped token ratio; at ratio e > 1 + clip a positive advantage is clipped, a negative one not
    old = torch.zeros(2, 2)
    out = loss.objective(old + 1.0, old, torch.ones(2, 2), torch.tensor([1.0, -1.0]), 0.2)
    assert out.item() == pytest.approx((math.e - 1.2) / 2)


def test_no_spread_means_no_advantage_for_every_loss():
    rows = [dict(episode_id=e, env_id="x", reward=r) for e, r in [("a", 0.1), ("a", 0.2), ("b", 0.3)]]
    for name in ("grpo", "gspo", "ppo", "rloo"):
        assert group_advantages(rows, LOSSES.get(name)) == [0.0, 0.0, 0.0]


def test_kl_penalty_is_the_old_one():
    assert kl_penalty(torch.tensor(WNEW), torch.tensor(WOLD), torch.tensor(MASK)).item() == 0.1829608827829361


def test_a_loss_registered_by_a_user_is_found_by_name_and_pickles():
    LOSSES.register("half_grpo", Loss(lambda r, mean, std, n: normalised(r, mean, std, n) / 2, token_clip))
    try:
        rows = [dict(episode_id=e, env_id="x", reward=r) for e, r in [("a", 0.0), ("b", 1.0)]]
        assert group_advantages(rows, LOSSES.get("half_grpo")) == pytest.approx([-0.5, 0.5], abs=1e-5)
    finally:
        LOSSES.unregister("half_grpo")
    assert "half_grpo" not in LOSSES
    fn = partial(agent_loss, temperature=1.0, clip=0.2, loss=LOSSES.get("rloo"))
    assert pickle.loads(pickle.dumps(fn)).keywords["loss"] == LOSSES.get("rloo")  # what data-parallel ranks get


def test_an_unknown_loss_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"unknown loss 'nope' \(one of .*grpo.*\)") as e:
        LOSSES.get("nope")
    assert "\n" not in str(e.value)
