"""Policies map observations to action text. The LLM policy either chooses among the env's admissible
actions by their likelihood, or generates free text that the env parses."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

AGENT_SYSTEM = "You are an agent in the {env_id} environment. Reply with exactly one action."


@dataclass
class Act:
    action: str
    logprobs: list[float]  # behaviour logprob(s) of the action: one entry in choice mode, per token otherwise
    choices: list[str] | None


def policy_messages(env_id: str, obs: str, admissible: Sequence[str] | None) -> list[dict]:
    user = f"Observation:\n{obs}"
    if admissible:
        user += "\nValid actions: " + ", ".join(admissible)
    return [{"role": "system", "content": AGENT_SYSTEM.format(env_id=env_id)}, {"role": "user", "content": user}]


def choice_logits(scores: torch.Tensor, sizes: Sequence[int], temperature: float) -> list[torch.Tensor]:
    """Split flat per-choice sequence logprobs into per-state log-distributions over choices."""
    t = temperature if temperature > 0 else 1.0
    return [torch.log_softmax(chunk / t, -1) for chunk in torch.split(scores, list(sizes))]


class RandomPolicy:
    """Uniform over admissible actions: the behaviour policy that gathers the LWM's data."""

    version = 0

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def act(self, env_ids: Sequence[str], observations: Sequence[str], infos: Sequence[dict], envs=None) -> list[Act]:
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

    def act(self, env_ids: Sequence[str], observations: Sequence[str], infos: Sequence[dict], envs=None) -> list[Act]:
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
    def __init__(self, engine, mode: str = "choice", temperature: float = 1.0, greedy: bool = False,
                 max_action_tokens: int = 8):
        self.engine, self.mode, self.temperature = engine, mode, temperature
        self.greedy, self.max_action_tokens = greedy, max_action_tokens
        self.generator = torch.Generator().manual_seed(0)

    @property
    def version(self) -> int:
        return self.engine.version

    def prompts(self, env_ids, observations, infos) -> list[str]:
        return [self.engine.render(policy_messages(e, o, i.get("admissible_actions")))
                for e, o, i in zip(env_ids, observations, infos)]

    def act(self, env_ids: Sequence[str], observations: Sequence[str], infos: Sequence[dict], envs=None) -> list[Act]:
        prompts = self.prompts(env_ids, observations, infos)
        if self.mode == "generate" or any(not i.get("admissible_actions") for i in infos):
            temp = 0.0 if self.greedy else self.temperature
            gens = self.engine.generate(prompts, max_new_tokens=self.max_action_tokens, temperature=temp)
            return [Act(g.text.strip(), g.logprobs, list(i.get("admissible_actions") or []) or None)
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

    def act(self, env_ids: Sequence[str], observations: Sequence[str], infos: Sequence[dict], envs=None) -> list[Act]:
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
