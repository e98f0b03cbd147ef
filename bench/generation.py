"""(a) Generation throughput, vLLM against HF, measured side by side in one run.

    .venv/bin/python bench/generation.py                         # tiny and medium (~34M), batch 1, 16, 64
    .venv/bin/python bench/generation.py --sizes medium --batches 64 --threads 2

Both engines run in this process on the same checkpoint with the same torch threads (1 by default, as every run
process has: on a shared 2-core machine two OpenMP threads wait on each other's time slices, and both engines ran
3-8x slower with 2), greedy, `--new-tokens` tokens
per reply after ~100-token LWM prompts; tok/s counts the tokens actually generated. Each figure is the best of
`--repeats` timed calls after one warm-up call, taken in turns (HF, vLLM, HF, ...) so both see the same load.

`GEMM tok/s` is the ceiling both engines share: the tokens/s of the model's weight matmuls alone at that batch
(random inputs through every linear layer's shape, in the engines' dtype, same threads), with no attention,
sampling or Python; at batch 64 decoding is bound by them, so no engine can beat that figure."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def tokens_per_s(engine, prompts: list[str], new_tokens: int) -> float:
    t0 = time.perf_counter()
    gens = engine.generate(prompts, max_new_tokens=new_tokens, temperature=0.0)
    return sum(len(g.logprobs) for g in gens) / (time.perf_counter() - t0)


def gemm_tokens_per_s(path: str, batch: int, dtype: str = "float32", seconds: float = 1.0) -> float:
    """Decode tokens/s of the weight matmuls alone: one token per sequence through every linear layer."""
    import torch
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(path)
    kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    shapes = [(c.hidden_size, c.hidden_size), (2 * kv, c.hidden_size), (c.hidden_size, c.hidden_size),
              (2 * c.intermediate_size, c.hidden_size), (c.hidden_size, c.intermediate_size)] * c.num_hidden_layers
    shapes.append((c.vocab_size, c.hidden_size))  # lm_head; (out, in) as nn.Linear holds them
    dt = getattr(torch, dtype)
    weights = [torch.randn(o, i, dtype=dt) for o, i in shapes]
    xs = {i: torch.randn(batch, i, dtype=dt) for _, i in shapes}
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for w in weights:
            torch.nn.functional.linear(xs[w.shape[1]], w)
        steps += 1
    return steps * batch / (time.perf_counter() - t0)


def profile(engines: dict, prompts: list[str], new_tokens: int, top: int = 12) -> None:
    """Where one generate call's time goes (in-process vLLM runs its model in this process, so cProfile sees it)."""
    import cProfile
    import pstats

    for name, engine in engines.items():
        prof = cProfile.Profile()
        prof.runcall(engine.generate, prompts, max_new_tokens=new_tokens, temperature=0.0)
        print(f"\n-- {name}, batch {len(prompts)}: top {top} functions by own time")
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="*", default=["tiny", "medium"])
    p.add_argument("--batches", nargs="*", type=int, default=[1, 16, 64])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vllm-dtype", default="float32", help="bfloat16 halves vLLM's GEMM time on CPUs with avx512_bf16")
    p.add_argument("--root", default="/tmp/agentworld-bench")
    p.add_argument("--profile", action="store_true", help="then cProfile one call per engine at the last batch size")
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)  # before vLLM starts: it pins torch's thread count from then on
    import models
    from agentworld.config import VLLMConfig
    from agentworld.models.engine import make_engine

    print(f"{'model':8} {'params':>7} {'batch':>5} {'HF tok/s':>9} {'vLLM tok/s':>10} {'vLLM/HF':>8} {'GEMM tok/s':>10} "
          f"{'load':>5}", flush=True)
    for size in args.sizes:
        path = models.build(size, args.root)
        hf = make_engine("hf", path)
        vllm = make_engine("vllm", path, vllm=VLLMConfig(kv_cache_gb=1.0, max_model_len=2048, dtype=args.vllm_dtype))
        for batch in args.batches:
            prompts = models.prompts(batch)
            for engine in (hf, vllm):
                engine.generate(prompts, max_new_tokens=4)  # warm-up
            best = {"hf": 0.0, "vllm": 0.0, "gemm": 0.0}
            for _ in range(args.repeats):
                for name, engine in (("hf", hf), ("vllm", vllm)):
                    best[name] = max(best[name], tokens_per_s(engine, prompts, args.new_tokens))
                best["gemm"] = max(best["gemm"], gemm_tokens_per_s(path, batch, args.vllm_dtype))
            gemm = best["gemm"]
            print(f"{size:8} {models.parameters(path) / 1e6:6.1f}M {batch:5d} {best['hf']:9.0f} {best['vllm']:10.0f} "
                  f"{best['vllm'] / best['hf']:7.2f}x {gemm:10.0f} {os.getloadavg()[0]:5.1f}", flush=True)
        if args.profile:
            profile({"HF": hf, "vLLM": vllm}, models.prompts(args.batches[-1]), args.new_tokens)
        del hf, vllm


if __name__ == "__main__":
    main()
