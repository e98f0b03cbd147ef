"""(d) Training tokens/s, DeepSpeed against torch, measured side by side in one run; and (--lora) seconds per SFT step,
LoRA against full fine-tuning, SmolLM2-135M against the tiny model.

    .venv/bin/python bench/training.py                       # tiny and medium (~34M)
    .venv/bin/python bench/training.py --sizes medium --steps 8 --batch 8 --seq-len 256
    .venv/bin/python bench/training.py --lora                # tiny and models/smollm2-135m-instruct, batch 4 x 128
    .venv/bin/python bench/training.py --checkpointing --seq-len 1024   # SmolLM2 LoRA, with and without

Optimizer steps of the CPT stage's causal-LM loss on packed rows of LWM text. Each engine runs in its own Ray
actor (DeepSpeed's process group is per process): `torch` and `deepspeed` (ZeRO-2) with `--threads` torch
threads, and `deepspeed x2`, ZeRO-2 data-parallel over two actors with gloo, each with threads / 2, so every
configuration has the same cores. The three run in turns, `--steps-per-turn` steps each, so that they share the
machine's load (it is shared); tok/s = tokens per step / median step time, after `--warmup` steps each.

`--lora`: torch-engine SFT steps (the LWM's SFT loss on `--batch` examples of `--seq-len` tokens: half prompt, half
target) of the full model and of the same model with model.lora's defaults (r 16 on q/k/v/o), in this process, in
turns, on the tiny model and on SmolLM2-135M-Instruct (`make smollm2`; left out with a note when missing).

`--checkpointing`: the same LoRA SFT step on SmolLM2 (the tiny model without it) without and with
model.gradient_checkpointing, each in a child process of its own, one after the other: seconds per step and the
child's peak RSS (its whole memory high-water mark: the model, the step's activations)."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
SMOLLM2 = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m-instruct"


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


def sft_batch(tok, batch: int, seq_len: int) -> list:
    """`batch` SFT examples of `seq_len` tokens of LWM text (re-tokenizing the halves may move a token or two)."""
    import models
    from agentworld.worldmodel.data import Example

    ids = tok("".join(models.corpus(40)), add_special_tokens=False).input_ids
    out = []
    for i in range(batch):
        row = ids[i * seq_len : (i + 1) * seq_len]
        out.append(Example(prompt=tok.decode(row[: seq_len // 2]), target=tok.decode(row[seq_len // 2 :]),
                           next_obs="", reward=0.0, done=False))
    return out


def sft_step_seconds(path: str, args) -> dict:
    """Median seconds per SFT step of full fine-tuning and of LoRA on the checkpoint at `path`, run in turns."""
    import statistics

    from agentworld.config import LoRAConfig
    from agentworld.models.lora import load_trainable, trainable_parameters
    from learners.train_engine import make_trainer
    from learners.wm_recipe import sft_loss

    trainers, share = {}, 0.0
    for name, lora in (("full", None), ("lora", LoRAConfig(enabled=True))):
        model, tok = load_trainable(path, lora=lora)
        trainers[name] = make_trainer(model, tok, lr=1e-4, total_steps=10_000)
        if lora:
            share = sum(p.numel() for p in trainable_parameters(model)) / sum(p.numel() for p in model.parameters())
    batch = sft_batch(tok, args.batch, args.seq_len)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for k in range(args.warmup + args.steps):
        for name, trainer in trainers.items():
            t0 = time.perf_counter()
            trainer.step(sft_loss, batch)
            if k >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    return {"share": share, **{name: statistics.median(t) for name, t in times.items()}}


def lora_main(args) -> None:
    """LoRA against full fine-tuning, SmolLM2 against tiny: seconds per SFT step at the same batch, one run."""
    import torch

    import models

    torch.set_num_threads(args.threads)
    paths = {"tiny": models.build("tiny", args.root)}
    if (SMOLLM2 / "config.json").is_file():
        paths["smollm2"] = str(SMOLLM2)
    else:
        print(f"(no {SMOLLM2}: make smollm2 puts SmolLM2-135M-Instruct there; measuring tiny only)")
    print(f"SFT step, batch {args.batch} x {args.seq_len} tokens, {args.threads} threads, median of {args.steps} "
          f"steps after {args.warmup}")
    print(f"{'model':8} {'params':>7} {'lora share':>10} {'full s/step':>12} {'lora s/step':>12} {'lora/full':>9} "
          f"{'full vs tiny':>12} {'lora vs tiny':>12}  load", flush=True)
    first = None
    for name, path in paths.items():
        r = sft_step_seconds(path, args)
        first = first or r
        print(f"{name:8} {models.parameters(path) / 1e6:6.1f}M {100 * r['share']:9.2f}% {r['full']:12.3f} "
              f"{r['lora']:12.3f} {r['lora'] / r['full']:8.2f}x {r['full'] / first['full']:11.1f}x "
              f"{r['lora'] / first['lora']:11.1f}x  {os.getloadavg()[0]:4.1f}", flush=True)


def checkpointing_child(path: str, checkpointing: bool, args, out) -> None:
    import resource

    import torch

    from agentworld.config import LoRAConfig
    from agentworld.models.lora import load_trainable
    from learners.train_engine import make_trainer
    from learners.wm_recipe import sft_loss

    torch.set_num_threads(args.threads)
    model, tok = load_trainable(path, lora=LoRAConfig(enabled=True), gradient_checkpointing=checkpointing)
    trainer = make_trainer(model, tok, lr=1e-4, total_steps=10_000)
    batch, times = sft_batch(tok, args.batch, args.seq_len), []
    for k in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        trainer.step(sft_loss, batch)
        if k >= args.warmup:
            times.append(time.perf_counter() - t0)
    out.put((statistics.median(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))


def checkpointing_main(args) -> None:
    """LoRA SFT steps without and with gradient checkpointing: seconds per step and peak RSS, one run."""
    import multiprocessing

    import models

    path = str(SMOLLM2) if (SMOLLM2 / "config.json").is_file() else models.build("tiny", args.root)
    print(f"LoRA SFT step on {path}, batch {args.batch} x {args.seq_len} tokens, {args.threads} threads, median of "
          f"{args.steps} steps after {args.warmup}")
    print(f"{'checkpointing':13} {'s/step':>8} {'peak RSS GB':>12} {'time':>6} {'memory':>7}  load", flush=True)
    ctx, first = multiprocessing.get_context("spawn"), None
    for checkpointing in (False, True):
        out = ctx.Queue()
        child = ctx.Process(target=checkpointing_child, args=(path, checkpointing, args, out))
        child.start()
        seconds, rss = out.get()
        child.join()
        first = first or (seconds, rss)
        print(f"{'on' if checkpointing else 'off':13} {seconds:8.2f} {rss:12.2f} {seconds / first[0]:5.2f}x "
              f"{rss / first[1]:6.2f}x  {os.getloadavg()[0]:4.1f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="*", default=["tiny", "medium"])
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (10; --lora: 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (2; --lora: 1)")
    p.add_argument("--steps-per-turn", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="sequences per step (8; --lora: 4)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (256; --lora: 128)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--root", default="/tmp/agentworld-bench")
    p.add_argument("--lora", action="store_true", help="LoRA vs full SFT steps, SmolLM2 vs tiny, instead")
    p.add_argument("--checkpointing", action="store_true",
                   help="LoRA SFT steps without and with gradient checkpointing: time and peak memory, instead")
    args = p.parse_args()
    for key, engines, lora in (("steps", 10, 4), ("warmup", 2, 1), ("batch", 8, 4), ("seq_len", 256, 128)):
        if getattr(args, key) is None:
            setattr(args, key, lora if args.lora or args.checkpointing else engines)
    if args.checkpointing:
        return checkpointing_main(args)
    if args.lora:
        return lora_main(args)
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
