"""AgentLearner: policy-gradient RL on the action tokens of its arm's trajectories, scored in the real env.

Algorithm (GRPO-style): each episode's return is normalised against the other episodes of the same env in
the update batch (group-relative baseline, no critic); every action of the episode takes that advantage.
The loss is the decoupled PPO objective (Hilton et al. 2022, as in AReaL): the clipped ratio is taken to the
proximal policy (the weights this update started from), and each row is reweighted by proximal / behaviour
probability, the behaviour logprob being what the actor recorded. So data from a policy up to `max_staleness`
versions old is corrected, not dropped, and not clipped away either: plain PPO would clip the ratio to a stale
behaviour policy and train nothing on exactly the rows that asynchrony makes stale.
Each row is scored after the prompt the actor rendered for it (the episode so far: policy.episode_prompts). A chosen
action's policy is the softmax over the admissible actions' sequence logprobs, exactly as the actor sampled it; a
generated action's is the logprob of its sampled token ids, the stop id included only where the reply ended by
itself, so the behaviour and learner logprobs cover the same tokens."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from functools import partial
from typing import Any

import ray
import torch

from agentworld.config import AgentConfig, ArmConfig, EnvConfig, EvalConfig, Runtime
from agentworld.envs import make_env_from
from agentworld.metrics import metric_row
from agentworld.episodes import evaluate
from agentworld.models.chat import count_tokens
from agentworld.models.hf_engine import HFEngine, choice_logprobs, completion_logprobs, encode_pairs
from agentworld.models.lora import load_trainable, merged_state_dict
from agentworld.policy import LLMPolicy, choice_logits, episode_prompts
from learners.losses import GRPO, Loss, group_advantages


MAX_BEHAVIOUR_WEIGHT = 5.0  # caps proximal / behaviour probability: one surprising stale row cannot dominate
# padded prompt tokens (rows x longest prompt) a training forward holds at once (action_logprobs): ~2 GB with the
# tiny default at 1,536-token prompts and ten choices each, where 64 such rows at once held ~9 GB
GRAD_TOKENS = 16384


def action_logprobs(model, tok, rows: list[dict], temperature: float) -> torch.Tensor:
    """Logprob of each row's action after its `prompt` (the policy's prompt in play: policy.episode_prompts), as the
    actor sampled it (differentiable): a chosen action under the softmax over the admissible actions' sequence
    logprobs; a generated one summed over its `action_ids`, the tokens the behaviour logprobs cover (the stop id only
    where the reply ended by itself), never a re-tokenization of its (stripped) text.
    With more than GRAD_TOKENS padded prompt tokens, the rows go in chunks of at most that many; with gradients on,
    each chunk is recomputed in the backward pass (activation checkpointing): a long-prompt batch holds one chunk's
    activations at a time, and the gradients are the same."""
    chunks = token_chunks(tok, rows)
    if len(chunks) == 1:
        return _action_logprobs(model, tok, rows, temperature)
    if not torch.is_grad_enabled():
        return torch.cat([_action_logprobs(model, tok, rows[a:b], temperature) for a, b in chunks])
    from torch.utils.checkpoint import checkpoint
    return torch.cat([checkpoint(_action_logprobs, model, tok, rows[a:b], temperature, use_reentrant=False)
                      for a, b in chunks])


def token_chunks(tok, rows: list[dict]) -> list[tuple[int, int]]:
    """Consecutive (start, end) spans of `rows`, each as many rows as fit GRAD_TOKENS padded prompt tokens (rows x
    the longest prompt among them), and at least one."""
    lengths = [len(ids) for ids in tok([r["prompt"] for r in rows], add_special_tokens=False).input_ids]
    chunks, start = [], 0
    for end in range(1, len(rows) + 1):
        if end - start > 1 and (end - start) * max(lengths[start:end]) > GRAD_TOKENS:
            chunks.append((start, end - 1))
            start = end - 1
    return chunks + [(start, len(rows))]


def _action_logprobs(model, tok, rows: list[dict], temperature: float) -> torch.Tensor:
    out: list = [None] * len(rows)
    chosen = [i for i, r in enumerate(rows) if r.get("action_ids") is None]
    generated = [i for i, r in enumerate(rows) if r.get("action_ids") is not None]
    if chosen:
        sub = [rows[i] for i in chosen]
        scores = choice_logprobs(model, tok, [r["prompt"] for r in sub], [r["choices"] for r in sub])
        for i, r, lp in zip(chosen, sub, choice_logits(scores, [len(r["choices"]) for r in sub], temperature)):
            out[i] = lp[r["choices"].index(r["action"])]
    if generated:
        sub = [rows[i] for i in generated]
        ids = encode_pairs(tok, [r["prompt"] for r in sub], [r["action_ids"] for r in sub])
        for i, lp in zip(generated, completion_logprobs(model, *ids, temperature)):
            out[i] = lp
    return torch.stack(out)


def policy_loss(model, tok, rows: list[dict], advs: list[float], temperature: float, clip: float,
                prox: list[float] | None = None, loss: Loss = GRPO) -> torch.Tensor:
    """Decoupled PPO over `rows` (transitions) with per-row advantages: `loss`'s clipped objective on r = pi / pi_prox,
    weighted by pi_prox / pi_behaviour (capped). `prox`: the rows' logprobs under the proximal policy; None makes
    it the behaviour policy, which is plain PPO."""
    new = action_logprobs(model, tok, rows, temperature)
    behaviour = torch.tensor([sum(r["logprobs"] or [0.0]) for r in rows], device=new.device)
    prox_t = behaviour if prox is None else torch.tensor(prox, device=new.device, dtype=new.dtype)
    weight = torch.exp(prox_t - behaviour).clamp(max=MAX_BEHAVIOUR_WEIGHT)
    adv = torch.tensor(advs, device=new.device)
    # one summed logprob per row: a sequence of one "token"
    return loss.objective(new[:, None], prox_t[:, None], torch.ones_like(new)[:, None], adv, clip, weight)


def agent_loss(model, tok, items: list[tuple], temperature: float, clip: float, loss: Loss = GRPO) -> torch.Tensor:
    """`policy_loss` over (row, advantage[, proximal logprob]) items, each row with its `prompt`: the training
    engines' loss function (picklable, for every rank; so is the `Loss`, passed whole so that one registered in a
    script reaches them)."""
    prox = [it[2] for it in items] if all(len(it) > 2 for it in items) else None
    return policy_loss(model, tok, [it[0] for it in items], [it[1] for it in items], temperature, clip, prox, loss)


@torch.no_grad()
def proximal_logprobs(model, tok, rows: list[dict], version: int, temperature: float) -> list[float]:
    """Each row's logprob under the weights of version `version`, held by `model` now. Rows that version produced
    already carry it (their behaviour logprob); only the stale ones cost a forward pass."""
    out = [sum(r["logprobs"] or [0.0]) for r in rows]
    stale = [i for i, r in enumerate(rows) if r["policy_version"] != version]
    if stale:  # in chunks of GRAD_TOKENS (action_logprobs)
        for i, lp in zip(stale, action_logprobs(model, tok, [rows[i] for i in stale], temperature).tolist()):
            out[i] = lp
    return out


def with_prompts(rows: list[dict], engine, agent: AgentConfig) -> list[dict]:
    """The rows (whole episodes), each with the prompt its action was taken after, as the policy rendered it."""
    prompts = episode_prompts(rows, engine.render, agent.history_turns, agent.history_budget_tokens,
                              partial(count_tokens, engine.tok))
    return [dict(r, prompt=p) for r, p in zip(rows, prompts)]


@dataclass
class LearnerSpec:
    """What one arm's AgentLearner trains and how it is scored; built by the driver from the config sections."""
    arm: ArmConfig
    kind: Any  # the arm's ArmKind (agentworld/arms)
    loss: Loss  # agent.algorithm, resolved by the driver (a loss registered in the driver's process reaches here)
    init_path: str  # the checkpoint the policy starts from
    run_dir: str
    t0: float
    agent: AgentConfig
    eval: EvalConfig
    env: EnvConfig  # the real env every evaluation plays: envs[arms[i].eval_env], else the arm's own
    seed: int
    runtime: Runtime
    eval_env: str = ""  # its key in `envs`, on every eval row
    fault_env: EnvConfig | None = None  # envs[arms[i].fault_env]: a real env with faults, scored in once at the end
    fault_env_key: str = ""
    wm_real_steps: int = 0  # real env steps the LWM's data cost, counted against arms that use the LWM
    demo_real_steps: int = 0  # real env steps of the oracle episodes its start checkpoint was cloned on (agent.bc)
    replay_cursor: int | list = 0  # the replay's rows before it belong to earlier attempts of the run dir
    checkpoint_every: int = 0  # checkpoint.every_updates: the learner's whole state, every this many updates (0: never)


def checkpoint_pointer(run_dir: str, arm: str) -> Path:
    """The file naming an arm's last complete learner checkpoint (written last, atomically)."""
    return Path(run_dir) / "checkpoints" / f"agent-{arm}-last.json"


@ray.remote(max_concurrency=2)
class AgentLearner:
    def __init__(self, spec: LearnerSpec, replay, registry):
        torch.set_num_threads(spec.runtime.ray.torch_threads)
        from learners.weight_sync import make_weight_sync

        self.spec, self.replay, self.registry = spec, replay, registry
        self.sync = make_weight_sync(spec.runtime, registry)
        self.name = f"policy/{spec.arm.name}"
        self.rows: list[dict] = []
        self.version = 0
        self.steps = {"real": spec.demo_real_steps, "sim": 0}  # behaviour cloning's demonstrations were its own
        self._stop = False
        self.phase = "starting"
        self.last_eval: dict = {}
        self.cursor = spec.replay_cursor
        self.resumed: dict | None = None  # the checkpoint this learner resumes from
        self.t0 = spec.t0
        self._restore()

    # -- checkpoints: a dead learner restarts from the last one, and a rerun of the run dir resumes from it ------
    def _restore(self) -> None:
        """The arm's last checkpoint, when there is one: counters, metric rows, eval and replay cursor here; weights,
        optimizer, scheduler and RNG when `run` loads the model. Rows the arm wrote after it (a lost timeline's) are
        counted as steps spent, not trained on."""
        pointer = checkpoint_pointer(self.spec.run_dir, self.spec.arm.name)
        if not pointer.is_file():
            return
        state = json.loads(pointer.read_text())
        self.resumed = state
        self.version, self.steps, self.rows = state["version"], state["steps"], state["rows"]
        self.last_eval, self.cursor = state["last_eval"], state["cursor"]
        if self.rows:  # a rerun's clock goes on from the checkpoint's; a restart's keeps the time the death cost
            self.t0 = min(self.t0, time.time() - self.rows[-1]["wall_time"])
        self._landed()

    def _checkpoint(self, trainer, tok, rng: random.Random) -> None:
        run_dir, arm = self.spec.run_dir, self.spec.arm.name
        self.phase = "checkpointing"
        path = trainer.save(f"{run_dir}/checkpoints/agent-{arm}-u{self.version}", tok)
        state = {"path": str(path), "version": self.version, "pid": os.getpid(),  # which process is this arm's learner
                 "steps": self.steps, "rows": self.rows, "last_eval": self.last_eval, "cursor": self.cursor,
                 "rng": rng.getstate()}
        pointer = checkpoint_pointer(run_dir, arm)
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, default=str))
        os.replace(tmp, pointer)  # the checkpoint counts from here on
        for old in Path(run_dir, "checkpoints").glob(f"agent-{arm}-u*"):
            if old != Path(path):
                shutil.rmtree(old, ignore_errors=True)

    def resumes_from(self) -> tuple[str, int] | None:
        """(checkpoint dir, update) this learner resumes from; None: it starts from its init checkpoint."""
        return (self.resumed["path"], self.resumed["version"]) if self.resumed else None

    def _log(self, kind: str, **row) -> None:
        s = self.spec
        self.rows.append(metric_row(kind, arm=s.arm.name, source=s.arm.source, init=s.agent.init,
                              action_mode=s.agent.action_mode, update=self.version,
                              real_steps=self.steps["real"], sim_steps=self.steps["sim"],
                              wm_real_steps=s.wm_real_steps, wall_time=time.time() - self.t0, **row))

    def _evaluate(self, engine, envs) -> None:
        self.phase = "evaluating"
        a, ev = self.spec.agent, self.spec.eval
        policy = LLMPolicy.for_agent(engine, a, greedy=ev.greedy)
        self.last_eval = dict(evaluate(envs, policy, ev.episodes), policy_version=self.version)
        self._log("eval", eval_env=self.spec.eval_env or None, **self.last_eval)
        self.phase = "training"

    def _landed(self) -> list[dict]:
        """The arm's rows that reached the replay since the last call; counts its real and simulated steps."""
        table, self.cursor = ray.get(self.replay.since.remote(self.cursor, arm=self.spec.arm.name))
        rows = table.to_pylist()
        for r in rows:
            self.steps[r["source"]] += 1
            self.steps["real"] += r.get("shadow_steps") or 0  # hybrid: real steps spent checking the LWM
        return rows

    def _batch(self) -> list[dict] | None:
        """Wait for `episodes_per_update` episodes, then close the batch: no round may start now that this update
        would leave too stale, and rounds under way that would be are waited for, so they land in this batch.
        None when stopped first."""
        a, pending = self.spec.agent, []
        while not self._stop:
            self.phase = "waiting for rollouts"
            pending += self._landed()
            if len({r["episode_id"] for r in pending}) >= a.episodes_per_update and ray.get(
                    self.registry.close_batch.remote(self.name, self.version + 1, a.max_staleness)):
                return pending + self._landed()
            time.sleep(0.05)
        return None

    def run(self) -> dict:
        from learners.train_engine import make_trainer

        spec, a, ev = self.spec, self.spec.agent, self.spec.eval
        torch.manual_seed(spec.seed)
        rt = spec.runtime  # model.dtype on the learner's device, with new adapters when model.lora is enabled
        start = self.resumed["path"] if self.resumed else spec.init_path
        model, tok = load_trainable(start, rt.dtype, rt.device, rt.lora, resume=self.resumed is not None,
                                    gradient_checkpointing=rt.gradient_checkpointing)
        engine = HFEngine.from_model(model, tok)
        engine.version = self.version
        eval_envs = [make_env_from(spec.env) for _ in range(min(16, ev.episodes))]
        trainer = make_trainer(model, tok, a.lr, a.updates * a.epochs, runtime=spec.runtime)
        loss = spec.loss
        loss_fn = partial(agent_loss, temperature=a.temperature, clip=a.clip, loss=loss)
        rng = random.Random(spec.seed)
        if self.resumed:
            trainer.load_trainer_state(start)
            v, internal, gauss = self.resumed["rng"]
            rng.setstate((v, tuple(internal), gauss))
        else:
            self._evaluate(engine, eval_envs)
        t_wait = time.time()  # the learner's time split, per update: waiting for rollouts, then training
        while self.version < a.updates and (batch := self._batch()) is not None:
            t_train = time.time()
            self.phase = "training"
            advs = group_advantages(batch, loss)
            live = [(r, x) for r, x in zip(batch, advs) if x != 0.0]  # whole episodes: they share an advantage
            rows = with_prompts([r for r, _ in live], engine, a)
            prox = proximal_logprobs(model, tok, rows, self.version, a.temperature)
            live = [(r, x, p) for r, (_, x), p in zip(rows, live, prox)]
            losses = []
            for _ in range(a.epochs if live else 0):
                rng.shuffle(live)
                for i in range(0, len(live), 64):
                    losses.append(trainer.step(loss_fn, live[i : i + 64]))
            self.version += 1
            engine.version = self.version
            self.sync.publish(self.name, self.version, merged_state_dict(model))
            self._log_train(batch, losses, wait_s=t_train - t_wait, train_s=time.time() - t_train)
            if self.version % ev.every_updates == 0 or self.version == a.updates:
                self._evaluate(engine, eval_envs)
            if spec.checkpoint_every and (self.version % spec.checkpoint_every == 0 or self.version == a.updates):
                self._checkpoint(trainer, tok, rng)
            t_wait = time.time()
        if self.last_eval.get("policy_version") != self.version:  # stopped early: score what was trained
            self._evaluate(engine, eval_envs)
        if spec.fault_env is not None:  # robustness: the trained policy once more, in the real env with real faults
            self.phase = "evaluating under faults"
            faulty = [make_env_from(spec.fault_env) for _ in range(min(16, ev.episodes))]
            try:
                policy = LLMPolicy.for_agent(engine, a, greedy=ev.greedy)
                self._log("robust", eval_env=spec.fault_env_key,
                          **dict(evaluate(faulty, policy, ev.episodes), policy_version=self.version))
            finally:
                for e in faulty:
                    e.close()
        self.phase = "saving"
        out = trainer.save(f"{spec.run_dir}/checkpoints/agent-{spec.arm.name}", tok)
        for e in eval_envs:
            e.close()
        self.phase = "done"
        return {"arm": spec.arm.name, "path": str(out), "version": self.version, **self.last_eval}

    def _log_train(self, batch: list[dict], losses: list[float], **seconds) -> None:
        episodes = {r["episode_id"]: 0.0 for r in batch}
        for r in batch:
            episodes[r["episode_id"]] += r["reward"]
        staleness = [self.version - 1 - r["policy_version"] for r in batch]
        parsed = [r["parsed"] for r in batch if r.get("parsed") is not None]
        self._log("train", loss=sum(losses) / len(losses) if losses else float("nan"),
                  mean_reward=sum(episodes.values()) / len(episodes), batch_episodes=len(episodes),
                  batch_steps=len(batch), max_staleness_seen=max(staleness),
                  parse_rate=sum(parsed) / len(parsed) if parsed else None, **seconds)

    def stop(self) -> None:
        self._stop = True

    def status(self) -> dict:
        return {"arm": self.spec.arm.name, "version": self.version, "updates": self.spec.agent.updates,
                "phase": self.phase, **self.steps, "success": self.last_eval.get("success"),
                "return": self.last_eval.get("return"), "rows": len(self.rows)}

    def metrics(self, since: int = 0) -> list[dict]:
        return self.rows[since:]
