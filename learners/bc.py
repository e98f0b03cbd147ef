"""Behaviour cloning before RL (`agent.bc`): an arm's start checkpoint fine-tuned on the oracle's actions in its real
env, so that RL starts from a policy that writes actions the env takes.

The demonstrations are `agent.bc.episodes` episodes of the env's own solver (`env.oracle_action()`) in the arm's env,
its train split, played once per arm before the arm starts; their real env steps count against the arm. The policy is
trained on each action's text and stop id after the prompt the policy renders for that step in play
(`policy.episode_prompts`: the episode so far, within the arm's history budget), the token-mean negative
log-likelihood: a `generate` arm learns to write the call, a `choice` arm to score it (a menu entry is scored as its
text and stop id too). The arms of one run see the same demonstrations (seeded by run.seed), so arms that differ in
`init` differ in nothing else. The result is a checkpoint dir, written whole before `bc.json`, which a rerun reuses."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import ray
import torch

from agentworld.config import AgentConfig, EnvConfig, Runtime
from agentworld.episodes import play_episodes
from agentworld.envs import make_env_from
from agentworld.models.hf_engine import completion_logprobs, encode_pairs
from agentworld.policy import OraclePolicy
from agentworld.worldmodel.env import env_threads

DEMO_SEED = 77_000_000  # demonstration episodes' env seeds start here (+ run.seed * 10,000): apart from the arms' own
MAX_ENVS = 8  # envs played side by side


def demonstrations(env_cfg: EnvConfig, episodes: int, seed: int) -> tuple[list[dict], dict]:
    """`episodes` episodes of the oracle in the env `env_cfg` describes, as replay-like rows (episode_id, step, obs,
    action, choices, env_id, domain), and their counts: episodes, steps, won."""
    envs = [make_env_from(env_cfg) for _ in range(min(MAX_ENVS, episodes))]
    try:
        if not hasattr(envs[0], "oracle_action"):
            raise ValueError(f"agent.bc: env {env_cfg.id} has no oracle (oracle_action) to clone")
        rows, stats = [], {"episodes": 0, "won": 0}
        while stats["episodes"] < episodes:
            batch, base = envs[: episodes - stats["episodes"]], stats["episodes"]

            def record(i, t, obs, act, nobs, reward, term, trunc, info):
                rows.append(dict(episode_id=f"demo-{base + i}", step=t, env_id=env_cfg.id, domain=envs[i].domain,
                                 obs=obs, action=act.action, choices=act.choices))

            seeds = [DEMO_SEED + seed * 10_000 + base + i for i in range(len(batch))]
            with env_threads(len(batch)):
                results = play_episodes(batch, OraclePolicy(seed), seeds, record)
            stats["episodes"] += len(batch)
            stats["won"] += sum(bool(r[1]) for r in results)
        return rows, dict(stats, steps=len(rows))
    finally:
        for env in envs:
            env.close()


def bc_loss(model, tok, items: list[tuple[str, list[int]]]) -> torch.Tensor:
    """Token-mean negative log-likelihood of each (prompt, target ids) item's target after its prompt."""
    ids, attn, comp = encode_pairs(tok, [p for p, _ in items], [t for _, t in items])
    return -completion_logprobs(model, ids, attn, comp).sum() / comp.sum()


def clone(init_path: str, out_dir: str, env_cfg: EnvConfig, agent: AgentConfig, runtime: Runtime, seed: int,
          label: str = "") -> dict:
    """The checkpoint at `init_path` fine-tuned on the oracle's actions (module doc), saved to `out_dir`; returns what
    `out_dir/bc.json` holds. A finished `out_dir` is returned as it is, with `reused` set."""
    from learners.agent import with_prompts
    from learners.train_engine import make_trainer
    from agentworld.models.hf_engine import HFEngine
    from agentworld.models.lora import load_trainable

    done = Path(out_dir) / "bc.json"
    if done.is_file():
        return dict(json.loads(done.read_text()), reused=True)
    torch.set_num_threads(runtime.ray.torch_threads)
    torch.manual_seed(seed)
    bc, t0 = agent.bc, time.time()
    rows, stats = demonstrations(env_cfg, bc.episodes, seed)
    model, tok = load_trainable(init_path, runtime.dtype, runtime.device, runtime.lora,
                                gradient_checkpointing=runtime.gradient_checkpointing)
    engine = HFEngine.from_model(model, tok)
    stop = engine.stop_ids[0]
    items = [(r["prompt"], tok(r["action"], add_special_tokens=False).input_ids + [stop])
             for r in with_prompts(rows, engine, agent)]
    trainer = make_trainer(model, tok, bc.lr, bc.steps, runtime=runtime)
    rng, losses = random.Random(seed), []
    for step in range(bc.steps):
        losses.append(trainer.step(bc_loss, rng.sample(items, min(bc.batch_size, len(items)))))
        if (step + 1) % max(1, bc.steps // 10) == 0 or step + 1 == bc.steps:
            print(f"bc {label}: step {step + 1}/{bc.steps}, loss {sum(losses[-10:]) / len(losses[-10:]):.3f}",
                  flush=True)
    path = trainer.save(Path(out_dir) / "model", tok)
    k = max(1, min(10, len(losses) // 4))  # first and last tenth-ish of the steps
    out = {"path": str(path), "init": init_path, "env": env_cfg.id, "demo_episodes": stats["episodes"],
           "demo_steps": stats["steps"], "demo_success": stats["won"] / max(1, stats["episodes"]),
           "steps": bc.steps, "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
           "seconds": time.time() - t0}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(done)  # the clone counts from here on
    return out


behaviour_clone = ray.remote(clone)  # the driver runs one per arm, side by side (driver.clone_arms)
