"""The simulator's edge (issue 19, item 3): steps per second of a trained LWM standing in for a real env, against that
real env, per actor, at 1 and 16 envs, measured side by side in one run.

    .venv/bin/python bench/sim_edge.py RUN_DIR                          # every env of the run's YAML, HF engine
    .venv/bin/python bench/sim_edge.py RUN_DIR --envs sqlite_train --engines hf vllm --rounds 5
    .venv/bin/python bench/sim_edge.py RUN_DIR engine.vllm.max_model_len=2048     # prompts over vLLM's 1,024 default

RUN_DIR is a finished run or `agentworld wm train` dir: its `config.yaml` names the envs, and `checkpoints/wm` is the
LWM. Per env (a key of the YAML's `envs`): the real env steps its envs as a rollout actor does (`step_all` on
`--threads` threads, arms.<i>.env_threads); the LWM steps as many `WorldModelEnv`s with one batched generation per
step, on one engine, with the run's history window, token budget and temperature, from real start states. Both act
uniformly from each env's menu (info["admissible_actions"], else the family's menu of the predicted state), with the
same seeds, and an episode that ends is reset outside the timing. One warm-up round first for each. torch uses
`--torch-threads` threads (1: what a run gives each actor process). `sim x real` is the ratio of steps/s."""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path


def rate(envs: list, rounds: int, threads: int, seed: int = 0) -> float:
    """Steps/s of `rounds` step_all calls over `envs`, each acting at random from its own menu."""
    from agentworld.worldmodel.env import env_threads, reset_all, step_all

    rngs = [random.Random(seed + i) for i in range(len(envs))]
    with env_threads(threads):
        state = list(reset_all(envs, [seed + i for i in range(len(envs))]))
        steps, busy = 0, 0.0
        for _ in range(rounds):
            actions = [r.choice(info.get("admissible_actions") or ["look"]) for r, (_, info) in zip(rngs, state)]
            t0 = time.perf_counter()
            results = step_all(envs, actions)
            busy += time.perf_counter() - t0
            steps += len(envs)
            for i, (obs, _, term, trunc, info) in enumerate(results):
                state[i] = envs[i].reset(seed=seed + 1000 * steps + i) if term or trunc else (obs, info)
    return steps / busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("overrides", nargs="*", help="dotted overrides of the run's config: engine.vllm.max_model_len=2048")
    ap.add_argument("--envs", nargs="*", help="keys of the YAML's envs (default: all)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 16], help="envs per actor")
    ap.add_argument("--engines", nargs="+", default=["hf"], choices=["hf", "vllm"])
    ap.add_argument("--rounds", type=int, default=5, help="timed steps of every env")
    ap.add_argument("--threads", type=int, default=8, help="threads stepping the real envs")
    ap.add_argument("--torch-threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.torch_threads)
    from agentworld.config import lwm_generation, load_config
    from agentworld.envs import domain_of, make_env_from
    from agentworld.models.engine import make_engine
    from agentworld.worldmodel.env import WorldModelEnv

    run = Path(args.run_dir)
    cfg = load_config(str(run / "config.yaml"), args.overrides)
    wm, gen = cfg.world_model, lwm_generation(cfg.world_model)
    engines = {kind: make_engine(kind, str(run / "checkpoints" / "wm"), 0, 1, cfg.engine.vllm, cfg.model.dtype)
               for kind in args.engines}
    print(f"{'env':16s} {'envs':>4s} {'real steps/s':>13s} " + " ".join(f"{k + ' sim steps/s':>17s} {'sim x real':>10s}"
                                                                    for k in args.engines) + "   load")
    for key in args.envs or list(cfg.envs):
        env_cfg = cfg.envs[key]
        for n in args.sizes:
            real = [make_env_from(env_cfg) for _ in range(n)]
            try:
                starts = [e.reset(seed=10_000 + i) for i, e in enumerate(real)]
                rate(real, 1, args.threads, seed=1)  # warm-up: processes and servers start here
                real_rate = rate(real, args.rounds, args.threads)
            finally:
                for e in real:
                    e.close()
            cells = []
            for kind, engine in engines.items():
                sim = [WorldModelEnv(engine, env_cfg.id, domain_of(env_cfg), starts, max_steps=env_cfg.max_steps,
                                     history_turns=wm.history_turns, max_new_tokens=gen.max_new_tokens,
                                     temperature=gen.temperature, notes=dict(wm.prompts)) for _ in range(n)]
                rate(sim, 1, 1, seed=1)
                sim_rate = rate(sim, args.rounds, 1)
                cells.append(f"{sim_rate:17.2f} {sim_rate / real_rate:10.2f}")
            print(f"{key:16s} {n:4d} {real_rate:13.2f} " + " ".join(cells) + f"   {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
