"""Does a policy copy the task's values into its tool calls? A checkpoint of a run dir, played greedily in `generate`
mode on fresh tasks of a train and a held-out env of that run (env seeds from `--seed0`, which neither the
demonstrations nor RL use), beside the env's oracle on the same tasks. Per env: tasks won, parse rate, and how many of
the quoted literals ('...') in each episode's first action appear in the task (the observation's first line).

    .venv/bin/python bench/copying.py runs/bcw_s1 agent-mcp-scratch
    .venv/bin/python bench/copying.py runs/bcw_s1 bc-mcp-scratch/model --envs sqlite_train sqlite_heldout --tasks 32
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from agentworld.config import agent_for, load_config, section
from agentworld.envs import make_env_from
from agentworld.episodes import evaluate
from agentworld.models.hf_engine import HFEngine
from agentworld.policy import LLMPolicy, OraclePolicy

BATCH = 8  # envs played side by side


def literals_found(action: str, task: str) -> tuple[int, int]:
    """(quoted literals of `action` that occur in `task`, all its quoted literals)."""
    lits = re.findall(r"'([^']*)'", action)
    return sum(lit in task for lit in lits), len(lits)


def play(env_cfg, policy, tasks: int, seed0: int) -> dict:
    """`evaluate`'s figures for `tasks` episodes, and each episode's (task, first action)."""
    envs = [make_env_from(env_cfg) for _ in range(min(BATCH, tasks))]
    firsts: list[tuple[str, str]] = []

    def first(i, t, obs, act, *rest):
        if t == 0:
            firsts.append((obs.split("\n")[0], act.action))

    try:
        r = evaluate(envs, policy, tasks, seed0, on_step=first)
    finally:
        for env in envs:
            env.close()
    found = [literals_found(action, task) for task, action in firsts]
    return dict(r, won=round(r["success"] * r["episodes"]), literals_in_task=sum(f for f, _ in found),
                literals=sum(n for _, n in found), example=firsts[0] if firsts else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run dir (its config.yaml says the envs and the agent)")
    ap.add_argument("checkpoint", help="a checkpoint dir, under <run>/checkpoints or a path")
    ap.add_argument("--envs", nargs="+", default=["sqlite_train", "sqlite_heldout"], help="env keys of the run's config")
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--seed0", type=int, default=20_000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(str(Path(args.run) / "config.yaml"), [])
    ckpt = Path(args.run) / "checkpoints" / args.checkpoint
    engine = HFEngine(str(ckpt if ckpt.is_dir() else args.checkpoint), seed=0)
    for key in args.envs:
        env_cfg = section(cfg.envs[key])
        policy = LLMPolicy.for_agent(engine, agent_for(cfg, key, action_mode="generate"), greedy=True)
        for name, pol in (("oracle", OraclePolicy(0)), (args.checkpoint, policy)):
            r = play(env_cfg, pol, args.tasks, args.seed0)
            print(f"{key:16s} {name:24s} won {r['won']}/{r['episodes']}  parse rate {r['parse_rate']:.2f}  first "
                  f"action's literals in the task {r['literals_in_task']}/{r['literals']}")
            if name != "oracle" and r["example"]:
                task, action = r["example"]
                print(f"{'':16s} e.g. task ...{task[80:200]!r}\n{'':21s}action {action[:240]!r}")


if __name__ == "__main__":
    main()
