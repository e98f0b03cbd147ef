"""AgentLearner: policy-gradient RL on the action tokens of its arm's trajectories, scored in the real env.

Algorithm (GRPO-style): each episode's return is normalised against the other episodes of the same env in
the update batch (group-relative baseline, no critic); every action of the episode takes that advantage.
The loss is the decoupled PPO objective (Hilton et al. 2022, as in AReaL): the clipped ratio is taken to the
proximal policy (the weights this update started from), and each row is reweighted by proximal / behaviour
probability, the behaviour logprob being what the actor recorded. So data from a policy up to `max_staleness`
versions old is corrected, not dropped, and not clipped away either: plain PPO would clip the ratio to a stale
behaviour policy and train nothing on exactly the rows that asynchrony makes stale.
In `choice` mode the policy is the softmax over the admissible actions' sequence logprobs, exactly as the
actor sampled it; in `generate` mode it is the logprob of the generated action text."""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from functools import partial

import ray
import torch

from agentworld.models.hf_engine import (HFEngine, choice_logprobs, completion_logprobs, encode_pairs,
                                         load_model_and_tokenizer)
from agentworld.policy import LLMPolicy, choice_logits, policy_messages


def group_advantages(rows: list[dict]) -> list[float]:
    """Episode return minus the group mean, over the group std (0 where a group has no spread)."""
    returns: dict[str, float] = defaultdict(float)
    group_of: dict[str, str] = {}
    for r in rows:
        returns[r["episode_id"]] += r["reward"]
        group_of[r["episode_id"]] = r["env_id"]
    groups: dict[str, list[float]] = defaultdict(list)
    for ep, g in group_of.items():
        groups[g].append(returns[ep])
    stats = {}
    for g, rs in groups.items():
        mean = sum(rs) / len(rs)
        std = math.sqrt(sum((x - mean) ** 2 for x in rs) / len(rs))
        stats[g] = (mean, std)
    adv = []
    for r in rows:
        mean, std = stats[group_of[r["episode_id"]]]
        adv.append(0.0 if std < 1e-8 else (returns[r["episode_id"]] - mean) / (std + 1e-6))
    return adv


MAX_BEHAVIOUR_WEIGHT = 5.0  # caps proximal / behaviour probability: one surprising stale row cannot dominate


def action_logprobs(model, tok, render, rows: list[dict], mode: str, temperature: float) -> torch.Tensor:
    """Logprob of each row's action under `model`, as the actor sampled it (differentiable)."""
    prompts = [render(policy_messages(r["env_id"], r["obs"], r["choices"])) for r in rows]
    if mode == "choice":
        scores = choice_logprobs(model, tok, prompts, [r["choices"] for r in rows])
        logps = choice_logits(scores, [len(r["choices"]) for r in rows], temperature)
        return torch.stack([lp[r["choices"].index(r["action"])] for lp, r in zip(logps, rows)])
    return completion_logprobs(model, *encode_pairs(tok, prompts, [r["action"] + tok.eos_token for r in rows]), temperature)


def policy_loss(model, tok, render, rows: list[dict], advs: list[float], mode: str, temperature: float,
                clip: float, prox: list[float] | None = None) -> torch.Tensor:
    """Decoupled PPO over `rows` (transitions) with per-row advantages: min(r A, clip(r) A) with r = pi / pi_prox,
    weighted by pi_prox / pi_behaviour (capped). `prox`: the rows' logprobs under the proximal policy; None makes
    it the behaviour policy, which is plain PPO."""
    new = action_logprobs(model, tok, render, rows, mode, temperature)
    behaviour = torch.tensor([sum(r["logprobs"] or [0.0]) for r in rows], device=new.device)
    prox_t = behaviour if prox is None else torch.tensor(prox, device=new.device, dtype=new.dtype)
    weight = torch.exp(prox_t - behaviour).clamp(max=MAX_BEHAVIOUR_WEIGHT)
    adv = torch.tensor(advs, device=new.device)
    ratio = torch.exp(new - prox_t)
    return -(weight * torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)).mean()


def agent_loss(model, tok, items: list[tuple], mode: str, temperature: float, clip: float) -> torch.Tensor:
    """`policy_loss` over (row, advantage[, proximal logprob]) items: the training engines' loss function
    (picklable, for every rank)."""
    def render(messages):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prox = [it[2] for it in items] if all(len(it) > 2 for it in items) else None
    return policy_loss(model, tok, render, [it[0] for it in items], [it[1] for it in items], mode, temperature, clip,
                       prox)


@torch.no_grad()
def proximal_logprobs(model, tok, rows: list[dict], version: int, mode: str, temperature: float) -> list[float]:
    """Each row's logprob under the weights of version `version`, held by `model` now. Rows that version produced
    already carry it (their behaviour logprob); only the stale ones cost a forward pass."""
    def render(messages):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = [sum(r["logprobs"] or [0.0]) for r in rows]
    stale = [i for i, r in enumerate(rows) if r["policy_version"] != version]
    for k in range(0, len(stale), 64):
        idx = stale[k : k + 64]
        for i, lp in zip(idx, action_logprobs(model, tok, render, [rows[i] for i in idx], mode, temperature).tolist()):
            out[i] = lp
    return out


@ray.remote(max_concurrency=2)
class AgentLearner:
    """`spec` keys: arm, source, init_path, run_dir, t0, agent, eval (configs as dicts), env (the real
    env's EnvConfig as dict, for evaluation), wm_real_steps, seed, torch_threads."""

    def __init__(self, spec: dict, replay, registry):
        torch.set_num_threads(spec.get("torch_threads", 1))
        from learners.weight_sync import make_weight_sync

        self.spec, self.replay, self.registry = spec, replay, registry
        self.sync = make_weight_sync(spec.get("engine"), registry)
        self.name = f"policy/{spec['arm']}"
        self.rows: list[dict] = []
        self.version = 0
        self.steps = {"real": 0, "sim": 0}
        self._stop = False
        self.phase = "starting"
        self.last_eval: dict = {}

    def _log(self, kind: str, **row) -> None:
        self.rows.append(dict(kind=kind, arm=self.spec["arm"], source=self.spec["source"], update=self.version,
                              real_steps=self.steps["real"], sim_steps=self.steps["sim"],
                              wm_real_steps=self.spec["wm_real_steps"], wall_time=time.time() - self.spec["t0"], **row))

    def _evaluate(self, engine, envs) -> None:
        from actors.rollout import evaluate

        self.phase = "evaluating"
        ev = self.spec["eval"]
        policy = LLMPolicy(engine, mode=self.spec["agent"]["action_mode"], temperature=self.spec["agent"]["temperature"],
                           greedy=ev["greedy"], max_action_tokens=self.spec["agent"]["max_action_tokens"])
        self.last_eval = dict(evaluate(envs, policy, ev["episodes"]), policy_version=self.version)
        self._log("eval", **self.last_eval)
        self.phase = "training"

    def run(self) -> dict:
        from agentworld.envs import make_env
        from learners.train_engine import make_trainer

        spec, a, ev = self.spec, self.spec["agent"], self.spec["eval"]
        torch.manual_seed(spec["seed"])
        model, tok = load_model_and_tokenizer(spec["init_path"])
        engine = HFEngine.from_model(model, tok)
        env = spec["env"]
        eval_envs = [make_env(env["id"], max_steps=env["max_steps"], domain=env.get("domain"), **env.get("kwargs", {}))
                     for _ in range(min(16, ev["episodes"]))]
        trainer = make_trainer(model, tok, a["lr"], a["updates"] * a["epochs"], engine=spec.get("engine"))
        loss_fn = partial(agent_loss, mode=a["action_mode"], temperature=a["temperature"], clip=a["clip"])
        rng = random.Random(spec["seed"])
        self._evaluate(engine, eval_envs)
        cursor, pending = spec.get("replay_cursor", 0), []  # rows before it belong to earlier attempts

        def landed() -> list[dict]:
            nonlocal cursor
            table, cursor = ray.get(self.replay.since.remote(cursor, arm=spec["arm"]))
            rows = table.to_pylist()
            for r in rows:
                self.steps[r["source"]] += 1
                self.steps["real"] += r.get("shadow_steps") or 0  # hybrid: real steps spent checking the LWM
            return rows

        t_wait = time.time()  # the learner's time split, per update: waiting for rollouts, then training
        while self.version < a["updates"] and not self._stop:
            self.phase = "waiting for rollouts"
            pending += landed()
            if len({r["episode_id"] for r in pending}) < a["episodes_per_update"]:
                time.sleep(0.05)
                continue
            # Close the batch: no round may start now that this update would leave too stale, and rounds under
            # way that would be are waited for, so their rows are trained on in this batch.
            if not ray.get(self.registry.close_batch.remote(self.name, self.version + 1, a["max_staleness"])):
                time.sleep(0.05)
                continue
            batch, pending = pending + landed(), []
            t_train = time.time()
            self.phase = "training"
            advs = group_advantages(batch)
            live = [(r, x) for r, x in zip(batch, advs) if x != 0.0]
            prox = proximal_logprobs(model, tok, [r for r, _ in live], self.version, a["action_mode"], a["temperature"])
            live = [(r, x, p) for (r, x), p in zip(live, prox)]
            losses = []
            for _ in range(a["epochs"] if live else 0):
                rng.shuffle(live)
                for i in range(0, len(live), 64):
                    losses.append(trainer.step(loss_fn, live[i : i + 64]))
            self.version += 1
            engine.version = self.version
            self.sync.publish(self.name, self.version, model.state_dict())
            episodes = {r["episode_id"]: 0.0 for r in batch}
            for r in batch:
                episodes[r["episode_id"]] += r["reward"]
            staleness = [self.version - 1 - r["policy_version"] for r in batch]
            self._log("train", loss=sum(losses) / len(losses) if losses else float("nan"),
                      mean_reward=sum(episodes.values()) / len(episodes), batch_episodes=len(episodes),
                      batch_steps=len(batch), max_staleness_seen=max(staleness), wait_s=t_train - t_wait,
                      train_s=time.time() - t_train)
            if self.version % ev["every_updates"] == 0 or self.version == a["updates"]:
                self._evaluate(engine, eval_envs)
            t_wait = time.time()
        if self.last_eval.get("policy_version") != self.version:  # stopped early: score what was trained
            self._evaluate(engine, eval_envs)
        self.phase = "saving"
        out = trainer.save(f"{spec['run_dir']}/checkpoints/agent-{spec['arm']}", tok)
        for e in eval_envs:
            e.close()
        self.phase = "done"
        return {"arm": spec["arm"], "path": str(out), "version": self.version, **self.last_eval}

    def stop(self) -> None:
        self._stop = True

    def status(self) -> dict:
        return {"arm": self.spec["arm"], "version": self.version, "updates": self.spec["agent"]["updates"],
                "phase": self.phase, **self.steps, "success": self.last_eval.get("success"),
                "return": self.last_eval.get("return")}

    def metrics(self, since: int = 0) -> list[dict]:
        return self.rows[since:]
