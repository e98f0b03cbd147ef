"""Probe CliffWalking LWMs on fresh random transitions, greedy: is the agent's mark kept, is the state exact, and
(for LWMs trained with the describer's think traces) does the trace start from the agent's real cell?

    python experiments/grid_probe.py runs/cliff_think_empty_s0 runs/cliff_think_describe_s0 [--n 40]
"""

from __future__ import annotations

import argparse
import random
import re

import torch

from agentworld.envs import make_env
from agentworld.models.hf_engine import HFEngine
from agentworld.worldmodel.data import wm_examples
from agentworld.worldmodel.prompt import parse_prediction
from agentworld.worldmodel.think import agent_cell, describe


def transitions(n: int, seed: int = 123) -> list[dict]:
    """`n` random CliffWalking transitions, 5 per episode, from seeds the LWMs' data did not use."""
    env, rng, out = make_env("gymnasium:CliffWalking-v1", max_steps=50), random.Random(seed), []
    while len(out) < n:
        obs, _ = env.reset(seed=1000 + len(out))
        for _ in range(min(5, n - len(out))):
            a = rng.choice(["up", "right", "down", "left"])
            nxt, r, term, _, _ = env.step(a)
            out.append(dict(env_id=env.env_id, domain=env.domain, obs=obs, action=a, next_obs=nxt, reward=r,
                            terminated=term))
            obs = nxt
    return out


def probe(run: str, rows: list[dict], max_new_tokens: int) -> dict:
    engine = HFEngine(f"{run}/checkpoints/wm", seed=0)
    think = describe if "describe" in run else None
    examples = [wm_examples([[r]], engine.render, 1, think)[0] for r in rows]
    counts = dict(n=len(rows), mark=0, exact=0, trace_start_right=0)
    for r, g in zip(rows, engine.generate([e.prompt for e in examples], max_new_tokens=max_new_tokens)):
        pred = parse_prediction(g.text)
        counts["mark"] += agent_cell(pred.obs) is not None
        counts["exact"] += pred.obs == r["next_obs"]
        m, true = re.search(r"row (\d+), column (\d+)", g.text), agent_cell(r["obs"])
        counts["trace_start_right"] += bool(m and true and (int(m[1]), int(m[2])) == true[:2])
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run dirs of `agentworld wm train` on CliffWalking")
    ap.add_argument("--n", type=int, default=40, help="fresh transitions")
    ap.add_argument("--max-new-tokens", type=int, default=272, help="the think block's budget included")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = transitions(args.n)
    for run in args.runs:
        c = probe(run, rows, args.max_new_tokens)
        print(f"{run}: {c['mark']}/{c['n']} keep the agent's mark, {c['exact']} exact, "
              f"think trace starts at the right cell in {c['trace_start_right']}")


if __name__ == "__main__":
    main()
