import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentworld.config import RewardWeights, WMRLConfig, WMSFTConfig
from agentworld.models.hf_engine import HFEngine
from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer
from agentworld.worldmodel.data import wm_examples
from agentworld.worldmodel.think import think_block
from agentworld.worldmodel.prompt import parse_prediction
from agentworld.registry import LOSSES
from learners.wm_recipe import pack, run_rl, token_logprobs

ROOT = Path(__file__).resolve().parents[1]


def episode(n=6):
    return [dict(episode_id="e", step=t, env_id="gymnasium:X", domain="grid", obs=f"s{t}", action=f"a{t}",
                 next_obs=f"s{t + 1}", reward=float(t == n - 1), terminated=t == n - 1) for t in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    texts = [e.prompt + e.target for e in wm_examples([episode()], lambda m: render_chatml(m, True), 3, think=lambda row: "")]
    tok = train_tokenizer(texts * 3, 300, out)
    build_tiny_model(tok, out)
    return HFEngine(str(out), seed=0)


def test_think_targets_and_token_budget_drop_oldest_turns(tiny):
    count = lambda t: len(tiny.tok(t).input_ids)  # noqa: E731
    full = wm_examples([episode()], tiny.render, history_turns=4, think=lambda row: "")
    assert full[-1].target.startswith(think_block("")) and parse_prediction(full[-1].target).obs == "s6"
    assert full[-1].prompt.count("Action:") == 4
    budget = count(full[-1].prompt) - 1
    cut = wm_examples([episode()], tiny.render, history_turns=4, budget_tokens=budget, count_tokens=count)
    assert cut[-1].prompt.count("Action:") < 4 and count(cut[-1].prompt) <= budget
    assert "State:\ns" in cut[-1].prompt  # the first kept turn still carries its state


def test_pack_makes_fixed_length_rows(tiny):
    rows = pack(tiny.tok, ["s0\n> a0\ns1"] * 50, 16)
    assert rows.shape[1] == 16 and rows.shape[0] >= 10
    with pytest.raises(ValueError, match="fewer than one sequence"):
        pack(tiny.tok, ["x"], 10_000)


def test_sampled_logprobs_match_recomputed_ones(tiny):
    prompt = tiny.render([{"role": "user", "content": "State:\ns0\nAction: a0"}])
    gens = tiny.generate([prompt] * 3, max_new_tokens=6, temperature=1.0)
    comps = [g.token_ids + ([tiny.tok.eos_token_id] if len(g.logprobs) > len(g.token_ids) else []) for g in gens]
    comps = [c for c in comps if c]
    new, mask = token_logprobs(tiny.model, tiny.tok, [prompt] * len(comps), comps)
    for g, row, m in zip([g for g in gens if g.logprobs], new, mask):
        assert torch.allclose(row[: int(m.sum())], torch.tensor(g.logprobs), atol=1e-4)


@pytest.mark.parametrize("algorithm", ["grpo", "gspo"])
def test_clipped_objectives(algorithm):
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    assert abs(LOSSES.get(algorithm).objective(old, old, mask, adv, 0.2).item()) < 1e-6 or algorithm == "grpo"
    big = old + 1.0  # ratio e > 1 + clip: the positive advantage is clipped
    loss = LOSSES.get(algorithm).objective(big, old, mask, torch.tensor([1.0, 1.0]), 0.2)
    assert abs(loss.item() + 1.2) < 1e-5


@pytest.mark.parametrize("kl", [0.0, 0.1])
def test_rl_raises_reward_on_a_fixed_prompt(tiny, kl):
    from learners.wm_recipe import run_sft

    ex = wm_examples([episode()], tiny.render, history_turns=1)
    sft = WMSFTConfig(steps=40, batch_size=8, lr=3e-3, weight_decay=0.0, warmup_steps=2, eval_every=100,
                      balance_transitions=0.0, balance_outcomes=0.0)
    run_sft(tiny.model, tiny.tok, ex, sft, random.Random(0), lambda step, loss: None, lambda step: None)  # the format
    cfg = WMRLConfig(steps=15, prompts_per_step=4, group_size=8, algorithm="gspo", lr=3e-3, clip=0.2, epochs=1,
                     temperature=1.0, max_new_tokens=12, kl=kl,
                     reward=RewardWeights(exact=1.0, edit=1.0, line_f1=0.5, field_f1=0.5, outcome=0.5, rubric=0.0,
                                          rubric_floor=0.5, length_penalty=0.5))
    rewards = []
    run_rl(tiny.model, tiny, tiny.tok, ex, cfg, random.Random(0), lambda step, r: rewards.append(r))
    assert len(rewards) == 15 and sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5


@pytest.mark.slow
def test_wm_train_runs_every_stage(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agentworld", "wm", "train", str(ROOT / "experiments" / "wm_recipe.yaml"),
                        f"run.output_dir={tmp_path}", "run.name=r", "world_model.data.steps=400",
                        "world_model.cpt.steps=10", "world_model.sft.steps=40", "world_model.sft.eval_every=40",
                        "world_model.rl.steps=3", "world_model.sft.eval_samples=16"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    table = json.loads((tmp_path / "r" / "wm_stages.json").read_text())["stages"]
    assert [row["stage"] for row in table] == ["untrained", "cpt", "sft", "rl"]
    assert table[2]["edit_similarity"] > table[0]["edit_similarity"]
    for stage in ("cpt", "sft", "rl"):
        assert (tmp_path / "r" / "checkpoints" / f"wm-{stage}" / "config.json").exists()
    assert "| rl |" in (tmp_path / "r" / "fidelity.md").read_text()


def test_kl_penalty_is_zero_at_the_reference_and_grows_away_from_it():
    from learners.losses import kl_penalty

    lp = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert kl_penalty(lp, lp, mask).item() == 0.0
    assert kl_penalty(lp, lp - 0.5, mask).item() > kl_penalty(lp, lp - 0.1, mask).item() > 0


def test_sft_resumed_from_a_mid_stage_checkpoint_ends_where_an_uninterrupted_one_does(tiny, tmp_path):
    """A WorldModelLearner restarted mid-SFT: weights, optimizer, scheduler and the sampler's RNG from the save at
    step 6 of 10, then steps 7-10, give the weights of 10 steps without a stop."""
    from agentworld.models.lora import load_trainable
    from learners.wm_recipe import run_sft

    ex = wm_examples([episode(), episode(4)], tiny.render, history_turns=1)
    cfg = WMSFTConfig(steps=10, batch_size=4, lr=3e-3, warmup_steps=3, eval_every=100)
    start = tiny.model.state_dict()
    tiny.model.save_pretrained(tmp_path / "start")
    tiny.tok.save_pretrained(tmp_path / "start")
    torch.manual_seed(0)
    model, tok = load_trainable(str(tmp_path / "start"))
    run_sft(model, tok, ex, cfg, random.Random(1), lambda s, v: None, lambda s: None)
    whole = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(0)
    model, tok = load_trainable(str(tmp_path / "start"))
    saved = {}

    def save(step, trainer):
        trainer.save(tmp_path / "partial", tok)
        saved.update(step=step, rng=rng.getstate())
        raise KeyboardInterrupt  # the learner dies right after its checkpoint

    rng = random.Random(1)
    with pytest.raises(KeyboardInterrupt):
        run_sft(model, tok, ex, cfg, rng, lambda s, v: None, lambda s: None, save=save, save_every=6)
    assert saved["step"] == 6
    model, tok = load_trainable(str(tmp_path / "partial"), resume=True)
    rng = random.Random()
    rng.setstate(saved["rng"])
    steps = []
    run_sft(model, tok, ex, cfg, rng, lambda s, v: steps.append(s), lambda s: None, start=6,
            resume=str(tmp_path / "partial"))
    assert steps == [7, 8, 9, 10]
    resumed = model.state_dict()
    assert any(not torch.equal(whole[k], start[k]) for k in whole)  # it trained
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k], rtol=1e-5, atol=1e-6, msg=k)
