import json
import re
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from agentworld.config import AgentConfig, EnvConfig, resolve_agent
from agentworld.envs import make_env, make_env_from
from agentworld.episodes import evaluate, parsed, play_episodes
from agentworld.models.chat import count_tokens
from agentworld.models.hf_engine import HFEngine, completion_logprobs, encode_pairs
from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer
from agentworld.policy import LLMPolicy, RandomPolicy, episode_prompts, policy_messages, policy_prompt
from learners.agent import action_logprobs, agent_loss, with_prompts
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
        prompt = policy.prompts(["gymnasium:FrozenLake-v1"], [obs], [info])[0]
        rows = [dict(episode_id=str(i), env_id="gymnasium:FrozenLake-v1", prompt=prompt, action=a.action,
                     choices=a.choices, logprobs=a.logprobs, reward=float(a.action == "right")) for i, a in enumerate(acts)]
        advs = group_advantages(rows)
        if any(advs):
            trainer.step(partial(agent_loss, temperature=1.0, clip=0.2), list(zip(rows, advs)))
    assert p_right() > max(0.5, start + 0.2)


# -- the policy as an LLM agent: the episode in its prompt, free-form actions scored on the tokens it generated ------

LAKE = EnvConfig(id="gymnasium:FrozenLake-v1", kwargs={"map_name": "4x4", "is_slippery": False}, max_steps=3)
TASK = "Question: which stdlib module splits shell-like syntax?"
SEARCH_OBS = [f"{TASK}\n\nTools: web_search(queries), web_extractor(url), answer(answer)."] + [
    f"[{k}] https://docs.python.org/3/library/page{k}.html\nPage {k}\n" + f"snippet {k} " * 12 for k in range(1, 6)]
SEARCH_ACTS = [f'{{"tool": "web_search", "arguments": {{"queries": ["shell words {k}"]}}}}' for k in range(5)]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    """A random tiny model whose tokenizer saw policy prompts of FrozenLake and of a search episode."""
    out = tmp_path_factory.mktemp("tiny_policy")
    env, texts = make_env_from(LAKE), []
    obs, info = env.reset(seed=0)
    texts.append(render_chatml(policy_messages(env.env_id, obs, info["admissible_actions"]), True) + "left<|im_end|>")
    history = list(zip(SEARCH_OBS, SEARCH_ACTS))
    texts.append(render_chatml(policy_messages("search:q1", SEARCH_OBS[5], None, history, 6, True), True))
    build_tiny_model(train_tokenizer(texts * 5, 300, out), out)
    return HFEngine(str(out))


def test_multi_turn_prompts_keep_the_task_and_respect_the_budget(tiny_policy):
    render, count = tiny_policy.render, lambda text: count_tokens(tiny_policy.tok, text)
    history = list(zip(SEARCH_OBS[:5], SEARCH_ACTS))  # five steps taken; SEARCH_OBS[5] is the current observation

    def prompt(turns, budget=0, keep_task=True):
        return policy_prompt(render, "search:q1", SEARCH_OBS[5], None, history, keep_task, turns, budget, count)

    one = prompt(1)  # only the current observation, but the task stays
    assert TASK in one and "[5 earlier step(s) not shown]" in one and SEARCH_OBS[5] in one
    assert SEARCH_OBS[4] not in one and SEARCH_ACTS[4] not in one
    four = prompt(4)  # the last three (observation, action) turns and the current one
    assert TASK in four and "[2 earlier step(s) not shown]" in four
    assert all(o in four for o in SEARCH_OBS[2:]) and all(a in four for a in SEARCH_ACTS[2:])
    assert SEARCH_OBS[1] not in four and SEARCH_ACTS[1] not in four
    assert four.count("<|im_start|>assistant") == 3 + 1  # three actions taken, and the generation prompt
    assert prompt(6) == render(policy_messages("search:q1", SEARCH_OBS[5], None, history, 6))  # nothing dropped
    assert TASK not in prompt(2, keep_task=False)  # a grid's observation is its whole state: no task line

    budget = count(prompt(2)) + 5  # room for two turns, not three: the oldest go first
    assert count(prompt(3)) > budget
    assert prompt(4, budget) == prompt(2) and count(prompt(4, budget)) <= budget
    assert prompt(4, 1) == prompt(1)  # no budget can drop the current observation, nor the task


def play_rows(policy, n_envs: int, seed0: int = 0):
    """Rows of FrozenLake episodes as the rollout actor writes them (with the info of each step), and what
    play_episodes returned."""
    envs, rows = [make_env_from(LAKE) for _ in range(n_envs)], []

    def record(i, t, obs, act, nobs, reward, term, trunc, info):
        rows.append(dict(episode_id=str(i), step=t, env_id=envs[i].env_id, domain=envs[i].domain, obs=obs,
                         action=act.action, choices=act.choices, logprobs=act.logprobs, action_ids=act.ids,
                         reward=float(reward), policy_version=0, info=info))

    results = play_episodes(envs, policy, [seed0 + i for i in range(n_envs)], record)
    return rows, results


def test_the_learner_rebuilds_the_prompts_the_policy_acted_on(tiny_policy):
    seen = []

    class Recording(LLMPolicy):
        def prompts(self, *args, **kwargs):
            seen.append(super().prompts(*args, **kwargs))
            return seen[-1]

    agent = resolve_agent(AgentConfig(history_turns=3, history_budget_tokens=300), "gridworld")
    rows, _ = play_rows(Recording.for_agent(tiny_policy, agent), 4)
    assert max(r["step"] for r in rows) == 2 and "<|im_start|>assistant\n" + rows[0]["action"] in seen[-1][0]
    assert [r["prompt"] for r in with_prompts(rows, tiny_policy, agent)] == [p for step in seen for p in step]


def test_generated_actions_have_importance_ratio_one_at_the_behaviour_version(tiny_policy):
    """Cut off at the token limit (no EOS), ended by itself (EOS), whitespace-stripped before the env saw it: the
    learner scores each on the tokens the actor generated, so its logprob is the behaviour one."""
    agent = resolve_agent(AgentConfig(action_mode="generate", max_action_tokens=32, history_turns=2), "gridworld")
    policy = LLMPolicy.for_agent(tiny_policy, agent)
    policy.reseed(2)  # samples with replies of each kind (seed 0's all run to the limit)
    rows = with_prompts(play_rows(policy, 8)[0], tiny_policy, agent)
    model, tok = tiny_policy.model, tiny_policy.tok
    eos = set(tiny_policy.stop_ids)
    ended = [r for r in rows if r["action_ids"][-1] in eos]
    cut = [r for r in rows if r["action_ids"][-1] not in eos]
    stripped = [r for r in cut if tok.decode(r["action_ids"]) != r["action"]]
    assert ended and cut and stripped and all(len(r["action_ids"]) == 32 for r in cut)
    assert all(len(r["logprobs"]) == len(r["action_ids"]) for r in rows)
    with torch.no_grad():
        new = action_logprobs(model, tok, rows, agent.temperature)
        # what scoring the action text with an EOS appended gave: other tokens than the behaviour logprobs cover
        retokenized = completion_logprobs(model, *encode_pairs(tok, [r["prompt"] for r in rows],
                                                               [r["action"] + tok.eos_token for r in rows]))
    ratio = torch.exp(new - torch.tensor([sum(r["logprobs"]) for r in rows]))
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-4), ratio
    off = (retokenized - new).abs()
    assert all(off[i] > 1e-2 for i, r in enumerate(rows) if r in cut)  # the test can fail: the old way is off


def test_a_long_batch_in_checkpointed_chunks_has_the_gradients_of_one_forward(tiny_policy, monkeypatch):
    import learners.agent as agent_mod

    agent = resolve_agent(AgentConfig(history_turns=3, history_budget_tokens=300), "gridworld")
    rows = with_prompts(play_rows(LLMPolicy.for_agent(tiny_policy, agent), 6)[0], tiny_policy, agent)
    model, tok = tiny_policy.model, tiny_policy.tok
    longest = max(len(tok(r["prompt"], add_special_tokens=False).input_ids) for r in rows)

    def grads(budget):
        monkeypatch.setattr(agent_mod, "GRAD_TOKENS", budget)
        calls = []
        monkeypatch.setattr(agent_mod, "_action_logprobs",
                            lambda *a, _f=agent_mod._action_logprobs: calls.append(len(a[2])) or _f(*a))
        model.zero_grad(set_to_none=True)
        lp = action_logprobs(model, tok, rows, 1.0)
        (lp * torch.linspace(-1, 1, len(rows))).sum().backward()
        return lp.detach(), [p.grad.clone() for p in model.parameters()], calls

    whole, g_whole, calls = grads(10**9)
    assert calls == [len(rows)]  # one forward of every row
    chunked, g_chunked, calls = grads(2 * longest)  # two rows of the longest prompt a chunk, more of shorter ones
    forward = calls[: len(calls) // 2]
    assert len(forward) > 2 and sum(forward) == len(rows) and sorted(calls[len(forward):]) == sorted(forward)  # recomputed
    model.zero_grad(set_to_none=True)
    assert torch.allclose(whole, chunked, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_whole, g_chunked))


def test_the_parse_rate_is_the_share_of_actions_the_env_parsed(tiny_policy):
    agent = resolve_agent(AgentConfig(action_mode="generate"), "gridworld")
    rows, results = play_rows(LLMPolicy.for_agent(tiny_policy, agent), 8)
    unparsed = sum(bool(r["info"].get("unparsed")) for r in rows)  # the env's flag for a move it could not parse
    assert unparsed > 0  # a random model's free text is rarely a FrozenLake move
    assert sum(r[3] for r in results) == len(rows) - unparsed
    envs = [make_env_from(LAKE) for _ in range(8)]
    assert 0 <= evaluate(envs, LLMPolicy.for_agent(tiny_policy, agent), 8)["parse_rate"] < 1
    assert evaluate(envs, LLMPolicy(tiny_policy, mode="choice"), 8)["parse_rate"] == 1.0  # chosen moves always parse


class Failing:
    """Every action parses and then fails, as a tool error does: `error` without `unparsed`."""

    env_id, domain = "mcp:failing", "mcp"

    def reset(self, seed=None):
        return "Task: fail.", {"admissible_actions": ["a", "b"]}

    def step(self, action):
        return "Error: the tool failed.", 0.0, False, True, {"error": "the tool failed", "admissible_actions": []}

    def close(self):
        pass


def test_the_parse_rate_counts_an_action_that_parsed_and_then_failed():
    assert parsed({"error": "no such table", "won": False}) and parsed({"error": "crashed", "crashed": True})
    assert not parsed({"error": "not valid JSON", "unparsed": True})
    steps = []
    r = evaluate([Failing(), Failing()], RandomPolicy(0), 4, on_step=lambda i, t, obs, act, *rest: steps.append(obs))
    assert r["parse_rate"] == 1.0  # the row figure
    assert steps == ["Task: fail."] * 4  # each episode's one step reached the caller's on_step


def test_a_generating_agent_in_mcp_still_sees_the_tools_past_its_history_window(tiny_policy, tmp_path):
    """The tools and how to call them are in MCP's first observation, beyond its Task: paragraph: a prompt that
    dropped the first turn keeps them, within the token budget, and the learner rebuilds the same prompt."""
    pytest.importorskip("mcp")
    agent = resolve_agent(AgentConfig(action_mode="generate"), "mcp")
    env = make_env("mcp:sqlite-train")
    try:
        obs, info = env.reset(seed=0)
        tools = re.findall(r"^- (\w+): ", obs, re.M)
        calls = [{"tool": "list_tables", "arguments": {}}] + [
            {"tool": "describe_table", "arguments": {"table_name": t}} for t in ("customers", "products", "orders")] + [
            {"tool": "read_query", "arguments": {"query": "SELECT COUNT(*) FROM orders"}}]
        history = []
        for c in calls:  # more steps than the window's turns
            history.append((obs, json.dumps(c)))
            obs, *_, info = env.step(json.dumps(c))
    finally:
        env.close()
    assert len(tools) >= 5 and len(history) > agent.history_turns
    # a tokenizer that saw the episode's text, as a run's own tiny one sees its arms' (FrozenLake's splits MCP to bytes)
    texts = [render_chatml(policy_messages(env.env_id, o, None, history[:t], 6, True, "mcp"), True)
             for t, (o, _) in enumerate(history + [(obs, "")])]
    engine = SimpleNamespace(tok=train_tokenizer(texts * 5, 2000, tmp_path), render=tiny_policy.render)
    count = partial(count_tokens, engine.tok)
    policy = LLMPolicy.for_agent(engine, agent)
    prompt = policy.prompts([env.env_id], [obs], [info], envs=[env], histories=[history])[0]
    assert "earlier step(s) not shown" in prompt and count(prompt) <= agent.history_budget_tokens
    assert all(f"- {t}: " in prompt for t in tools) and '{"tool": NAME, "arguments": {...}}' in prompt
    rows = [dict(episode_id="e", step=t, env_id=env.env_id, domain="mcp", obs=o, action=a, choices=None)
            for t, (o, a) in enumerate(history + [(obs, "")])]
    rows[-1]["choices"] = info["admissible_actions"]  # the menu the generating agent was shown
    assert episode_prompts(rows, engine.render, agent.history_turns, agent.history_budget_tokens, count)[-1] == prompt


def test_a_reseeded_policy_plays_the_same_episodes_again(tiny_policy):
    """What a resumed rollout actor relies on (RolloutActor.play_round): a round's sampling follows from its seed
    alone, whatever the engine's own generator has drawn meanwhile."""
    for mode in ("choice", "generate"):  # hot: the random model is near certain of its first move
        agent = AgentConfig(action_mode=mode, max_action_tokens=8, temperature=20.0)
        policy = LLMPolicy.for_agent(tiny_policy, resolve_agent(agent, "gridworld"))
        plays = []
        for seed in (5, 5, 6):
            policy.reseed(seed)
            tiny_policy.generator.manual_seed(len(plays))  # the engine's own draws differ each time
            plays.append([(r["action"], r["logprobs"]) for r in play_rows(policy, 4)[0]])
        assert plays[0] == plays[1] and plays[0] != plays[2], mode
