"""(d) Training tokens/s, DeepSpeed against torch, measured side by side in one run.

    .venv/bin/python bench/training.py                       # tiny and medium (~34M)
    .venv/bin/python bench/training.py --sizes medium --steps 8 --batch 8 --seq-len 256

Optimizer steps of the CPT stage's causal-LM loss on packed rows of LWM text. Each engine runs in its own Ray
actor (DeepSpeed's process group is per process): `torch` and `deepspeed` (ZeRO-2) with `--threads` torch
threads, and `deepspeed x2`, ZeRO-2 data-parallel over two actors with gloo, each with threads / 2, so every
configuration has the same cores. The three run in turns, `--steps-per-turn` steps each, so that they share the
machine's load (it is shared); tok/s = tokens per step / median step time, after `--warmup` steps each."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))


def learner_runtime(kind: str, ranks: int, num_cpus: float):
    """The Runtime a learner would get: None for torch (every default), else ZeRO-2 over `ranks` with gloo."""
    from agentworld.config import DeepSpeedConfig, EngineConfig, RayConfig, Runtime

    if kind == "torch":
        return None
    return Runtime(ray=RayConfig(actor_num_cpus=num_cpus), engine=EngineConfig(
        train="deepspeed", deepspeed=DeepSpeedConfig(zero_stage=2, data_parallel=ranks, backend="gloo",
                                                     offload_optimizer=False, torch_adam=True)))


@ray.remote
class Trainer:
    def __init__(self, path: str, runtime, threads: int, seq_len: int):
        import torch

        torch.set_num_threads(threads)
        import models
        from agentworld.models.hf_engine import load_model_and_tokenizer
        from learners.train_engine import make_trainer
        from learners.wm_recipe import pack

        model, tok = load_model_and_tokenizer(path)
        self.trainer = make_trainer(model, tok, lr=1e-4, total_steps=10_000, runtime=runtime)
        self.rows, self.k = pack(tok, models.corpus(2000), seq_len), 0

    def step_times(self, steps: int, batch: int) -> list[float]:
        from learners.wm_recipe import cpt_loss

        times = []
        for _ in range(steps):
            items = [self.rows[(self.k * batch + j) % len(self.rows)] for j in range(batch)]
            self.k += 1
            t0 = time.perf_counter()
            self.trainer.step(cpt_loss, items)
            times.append(time.perf_counter() - t0)
        return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="*", default=["tiny", "medium"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps-per-turn", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--root", default="/tmp/agentworld-bench")
    args = p.parse_args()
    import models

    # the three configurations' actors (4 processes, `threads` cores each) live at once but only one configuration
    # steps at a time, so Ray may count more cores than the machine has
    ray.init(address="local", num_cpus=4 * args.threads, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent)}})
    configs = [("torch", "torch", 1), ("deepspeed", "deepspeed", 1), ("deepspeed x2", "deepspeed", 2)]
    tokens = args.batch * args.seq_len
    print(f"{'model':8} {'params':>7} " + " ".join(f"{name + ' tok/s':>18}" for name, _, _ in configs) + "  load",
          flush=True)
    try:
        for size in args.sizes:
            path = models.build(size, args.root)
            actors = []
            for _, kind, ranks in configs:
                threads = max(1, args.threads // ranks)
                actors.append(Trainer.options(num_cpus=threads).remote(
                    path, learner_runtime(kind, ranks, threads), threads, args.seq_len))
            ray.get([a.step_times.remote(args.warmup, args.batch) for a in actors])  # warm-up (untimed)
            times = [[] for _ in actors]
            while len(times[0]) < args.steps:
                for a, t in zip(actors, times):
                    t += ray.get(a.step_times.remote(args.steps_per_turn, args.batch))
            rates = [tokens / statistics.median(t) for t in times]
            for a in actors:
                ray.kill(a)  # its data-parallel ranks go with it
            cells = " ".join(f"{r:10.0f} ({r / rates[0]:4.2f}x)" for r in rates)
            print(f"{size:8} {models.parameters(path) / 1e6:6.1f}M {cells}  {os.getloadavg()[0]:4.1f}", flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
