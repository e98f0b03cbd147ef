"""Policies map observations to action text. The LLM policy either chooses among the env's admissible
actions by their likelihood, or generates free text that the env parses."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import torch

from agentworld.models import chat
from agentworld.worldmodel.prompt import STATEFUL, fit_window, window

AGENT_SYSTEM = "You are an agent in the {env_id} environment. Reply with exactly one action."


@dataclass
class Act:
    action: str
    logprobs: list[float]  # behaviour logprob(s) of the action: one entry in choice mode, per token otherwise
    choices: list[str] | None
    # generated actions: the sampled token ids, with the stop id when the reply ended by itself. The action text
    # may be stripped; these are the tokens `logprobs` cover, and the learner scores exactly them
    ids: list[int] | None = None


def policy_messages(env_id: str, obs: str, admissible: Sequence[str] | None, history: Sequence[tuple[str, str]] = (),
                    history_turns: int = 1, keep_task: bool = False, domain: str | None = None) -> list[dict]:
    """The policy's chat: its instruction, then user turns with observations and assistant turns with the actions
    taken after them, the current observation last (with the valid actions). `history`: the episode's earlier
    (observation, action) pairs, of which the last `history_turns - 1` are kept; with `keep_task`, a window that
    dropped turns starts with the episode's task in `domain` (prompt.window and task_text, as the LWM's prompts do:
    in MCP the tools and how to call them too)."""
    observations = [o for o, _ in history] + [obs]
    # the LWM's window over the same episode: after action i comes observation i + 1; the action to choose is last
    state, turns = window(observations, [a for _, a in history] + [""], observations[1:], history_turns, keep_task,
                          domain)
    messages = [{"role": "system", "content": AGENT_SYSTEM.format(env_id=env_id)},
                {"role": "user", "content": f"Observation:\n{state}"}]
    for action, nxt in turns[:-1]:
        messages += [{"role": "assistant", "content": action}, {"role": "user", "content": f"Observation:\n{nxt}"}]
    if admissible:
        messages[-1]["content"] += "\nValid actions: " + ", ".join(admissible)
    return messages


def policy_prompt(render, env_id: str, obs: str, admissible: Sequence[str] | None,
                  history: Sequence[tuple[str, str]] = (), keep_task: bool = False, history_turns: int = 1,
                  budget_tokens: int = 0, count_tokens=None, domain: str | None = None) -> str:
    """`policy_messages` rendered (`render`: the checkpoint's chat template) with as many of the last
    `history_turns` turns as fit in `budget_tokens` (0: no budget), the oldest dropped first."""
    def build(k):
        messages = policy_messages(env_id, obs, admissible, history, k, keep_task, domain)
        return render(messages), sum(m["role"] == "user" for m in messages)
    return fit_window(build, history_turns, budget_tokens, count_tokens)


def episode_prompts(rows: Sequence[dict], render, history_turns: int = 1, budget_tokens: int = 0,
                    count_tokens=None) -> list[str]:
    """The prompt each replay row's action was chosen after, rebuilt from the earlier rows of its episode exactly as
    `LLMPolicy` built it in play. `rows` hold whole episodes (a round lands in the replay whole), in any order."""
    episodes: dict[str, list[dict]] = {}
    for r in rows:
        episodes.setdefault(r["episode_id"], []).append(r)
    prompts: dict[tuple[str, int], str] = {}
    for eid, ep in episodes.items():
        ep = sorted(ep, key=lambda r: r["step"])
        for t, r in enumerate(ep):
            prompts[eid, r["step"]] = policy_prompt(render, r["env_id"], r["obs"], r["choices"],
                                                    [(p["obs"], p["action"]) for p in ep[:t]], r["domain"] in STATEFUL,
                                                    history_turns, budget_tokens, count_tokens, r["domain"])
    return [prompts[r["episode_id"], r["step"]] for r in rows]


def choice_logits(scores: torch.Tensor, sizes: Sequence[int], temperature: float) -> list[torch.Tensor]:
    """Split flat per-choice sequence logprobs into per-state log-distributions over choices."""
    t = temperature if temperature > 0 else 1.0
    return [torch.log_softmax(chunk / t, -1) for chunk in torch.split(scores, list(sizes))]


class RandomPolicy:
    """Uniform over admissible actions: the behaviour policy that gathers the LWM's data."""

    version = 0

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def act(self, env_ids: Sequence[str], observations: Sequence[str], infos: Sequence[dict], envs=None,
            histories=None) -> list[Act]:
        acts = []
        for info in infos:
            choices = list(info["admissible_actions"])
            acts.append(Act(self.rng.choice(choices), [-math.log(len(choices))], choices))
        return acts


class OraclePolicy:
    """The env's own solver (walkthrough, gold path, bot, ground truth): `env.oracle_action()`. Where it has
    none left, it falls back to a uniform choice among the admissible actions."""

    version = 0

    def __init__(self, seed: int = 0):
        self.fallback = RandomPolicy(seed)

    def act(self, env_ids: Sequence[str], observations: Sequence[str], infos: Sequence[dict], envs=None,
            histories=None) -> list[Act]:
        if envs is None:
            raise ValueError("the oracle policy needs the envs it acts in")
        acts = []
        for env, env_id, obs, info in zip(envs, env_ids, observations, infos):
            action = env.oracle_action() if hasattr(env, "oracle_action") else None
            if action is None:
                if not info.get("admissible_actions"):
                    raise ValueError(f"{env_id}: no oracle action and no admissible actions to fall back on")
                acts += self.fallback.act([env_id], [obs], [info])
            else:
                acts.append(Act(action, [0.0], list(info.get("admissible_actions") or []) or None))
        return acts


class LLMPolicy:
    """The policy LLM. Its prompt holds the episode so far (`history_turns` turns within `budget_tokens`, the task kept
    where the env's domain is STATEFUL). `choice` mode samples among the admissible actions by their likelihood;
    `generate` mode (and any state without admissible actions) writes up to `max_action_tokens` of free text, which
    the env parses."""

    def __init__(self, engine, mode: str = "choice", temperature: float = 1.0, greedy: bool = False,
                 max_action_tokens: int = 8, history_turns: int = 1, budget_tokens: int = 0):
        self.engine, self.mode, self.temperature = engine, mode, temperature
        self.greedy, self.max_action_tokens = greedy, max_action_tokens
        self.history_turns, self.budget_tokens = history_turns, budget_tokens
        self.generator = torch.Generator().manual_seed(0)

    @classmethod
    def for_agent(cls, engine, agent, greedy: bool = False) -> "LLMPolicy":
        """The policy an `agent` section (resolved for its arm: config.agent_for) describes."""
        return cls(engine, mode=agent.action_mode, temperature=agent.temperature, greedy=greedy,
                   max_action_tokens=agent.max_action_tokens, history_turns=agent.history_turns,
                   budget_tokens=agent.history_budget_tokens)

    @property
    def version(self) -> int:
        return self.engine.version

    def reseed(self, seed: int) -> None:
        """Sample from here on as a policy made with `seed` would (a rollout actor's round: rollout.play_round)."""
        self.generator.manual_seed(seed)

    def prompts(self, env_ids, observations, infos, envs=None, histories=None) -> list[str]:
        histories = histories or [()] * len(env_ids)
        domains = [getattr(e, "domain", None) for e in envs] if envs is not None else [None] * len(env_ids)
        count = partial(chat.count_tokens, self.engine.tok)
        return [policy_prompt(self.engine.render, e, o, i.get("admissible_actions"), h, d in STATEFUL,
                              self.history_turns, self.budget_tokens, count, d)
                for e, o, i, h, d in zip(env_ids, observations, infos, histories, domains)]

    def act(self, env_ids: Sequence[str], observations: Sequence[str], infos: Sequence[dict], envs=None,
            histories=None) -> list[Act]:
        """`histories[k]`: the (observation, action) pairs of env k's episode before `observations[k]`."""
        prompts = self.prompts(env_ids, observations, infos, envs, histories)
        if self.mode == "generate" or any(not i.get("admissible_actions") for i in infos):
            temp = 0.0 if self.greedy else self.temperature
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))  # reproducible, on any engine
            gens = self.engine.generate(prompts, max_new_tokens=self.max_action_tokens, temperature=temp, seed=seed)
            return [Act(g.text.strip(), g.logprobs, list(i.get("admissible_actions") or []) or None, g.reply_ids)
                    for g, i in zip(gens, infos)]
        choices = [list(i["admissible_actions"]) for i in infos]
        scores = self.engine.score_choices(prompts, choices)
        acts = []
        for cs, logp in zip(choices, choice_logits(scores, [len(c) for c in choices], self.temperature)):
            # sampled on cpu, where the generator is (the scores are on the model's device)
            k = int(logp.argmax()) if self.greedy else int(torch.multinomial(logp.exp().cpu(), 1,
                                                                             generator=self.generator))
            acts.append(Act(cs[k], [float(logp[k])], cs))
        return acts


class MixPolicy:
    """Each step of each env, the oracle with probability `p`, else a uniform admissible action: data that covers
    both what a competent agent does and what a random one does."""

    version = 0

    def __init__(self, p: float, seed: int = 0):
        self.p, self.rng = p, random.Random(seed)
        self.oracle, self.random = OraclePolicy(seed), RandomPolicy(seed + 1)

    def act(self, env_ids: Sequence[str], observations: Sequence[str], infos: Sequence[dict], envs=None,
            histories=None) -> list[Act]:
        acts = []
        for k, args in enumerate(zip(env_ids, observations, infos)):
            pick = self.oracle if self.rng.random() < self.p else self.random
            acts += pick.act(*([x] for x in args), envs=None if envs is None else [envs[k]])
        return acts


def behaviour_policy(policy: str, seed: int, key: str = "policy"):
    """`random`, `oracle`, `mix:<p>`, or the path of an HF checkpoint (choice among admissible actions where the env
    offers them, free generation otherwise): the policies that gather data for the LWM. `key` names the
    setting in the error."""
    if policy == "random":
        return RandomPolicy(seed)
    if policy == "oracle":
        return OraclePolicy(seed)
    if policy.startswith("mix:"):
        return MixPolicy(float(policy[4:]), seed)
    if not (Path(policy) / "config.json").is_file():
        raise ValueError(f"{key} must be random, oracle or an HF checkpoint dir (no config.json at {policy!r})")
    from agentworld.models.hf_engine import HFEngine

    return LLMPolicy(HFEngine(policy, seed=seed), mode="choice", max_action_tokens=64)
