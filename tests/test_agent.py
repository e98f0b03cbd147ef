from functools import partial

import torch

from agentworld.models.hf_engine import HFEngine
from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer
from agentworld.policy import LLMPolicy, policy_messages
from learners.agent import agent_loss
from learners.losses import group_advantages
from learners.torch_engine import TorchEngine


def test_group_advantages_are_relative_to_the_group():
    rows = [dict(episode_id=e, env_id="x", reward=r) for e, r in [("a", 0), ("a", 1), ("b", 0), ("c", 0), ("c", 0)]]
    adv = group_advantages(rows)
    assert adv[0] == adv[1] > 0 and adv[2] == adv[3] == adv[4] < 0
    assert group_advantages([dict(episode_id="a", env_id="x", reward=0.0)]) == [0.0]


def test_policy_gradient_raises_probability_of_rewarded_action(tmp_path):
    obs = "[S]FFF\nFHFH"
    choices = ["left", "down", "right", "up"]
    corpus = [render_chatml(policy_messages("gymnasium:FrozenLake-v1", obs, choices), True) + c + "<|im_end|>"
              for c in choices] * 5
    tok = train_tokenizer(corpus, 300, tmp_path)
    build_tiny_model(tok, tmp_path)
    engine = HFEngine(str(tmp_path))
    policy = LLMPolicy(engine, mode="choice", temperature=1.0)
    info = {"admissible_actions": choices}

    def p_right():
        act_scores = engine.score_choices(policy.prompts(["gymnasium:FrozenLake-v1"], [obs], [info]), [choices])
        return torch.softmax(act_scores, -1)[2].item()

    start = p_right()
    trainer = TorchEngine(engine.model, lr=1e-2, total_steps=20, tok=engine.tok)
    for step in range(10):
        acts = policy.act(["gymnasium:FrozenLake-v1"] * 8, [obs] * 8, [info] * 8)
        rows = [dict(episode_id=str(i), env_id="gymnasium:FrozenLake-v1", obs=obs, action=a.action, choices=a.choices,
                     logprobs=a.logprobs, reward=float(a.action == "right")) for i, a in enumerate(acts)]
        advs = group_advantages(rows)
        if any(advs):
            trainer.step(partial(agent_loss, mode="choice", temperature=1.0, clip=0.2), list(zip(rows, advs)))
    assert p_right() > max(0.5, start + 0.2)
