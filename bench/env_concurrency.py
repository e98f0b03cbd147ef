"""Real env steps per second of one actor's envs, one by one against side by side in threads (arms.<i>.env_threads).

    .venv/bin/python bench/env_concurrency.py                 # terminal and MCP sqlite, 16 envs, 1 vs 8 threads
    .venv/bin/python bench/env_concurrency.py --envs miniwob:click-button --threads 1 4 8 16 --rounds 5

The envs are built and play one warm-up round first (a JVM, a browser, an MCP server start there), apart from the
figures. Then, for each thread count in turn on the same envs: a timed reset_all of every env, and `--rounds` timed
step_all calls over all of them, as a rollout actor steps its envs. Each env acts uniformly from its own menu with its
own seed, as in bench/envs.py, so every thread count plays the same actions; an env whose episode ends is reset
outside the timing. `x serial` is each figure against the first thread count's; `crashes` counts steps Supervised
truncated (a dead env process); `load` is the 1-minute load average."""

from __future__ import annotations

import argparse
import os
import random
import time

from agentworld.envs import make_env
from agentworld.worldmodel.env import env_threads, reset_all, step_all

DEFAULT = ["terminal:count-lines", "mcp:sqlite-train"]


def measure(envs: list, threads: int, rounds: int, seed: int = 0) -> dict:
    seeds = [seed + i for i in range(len(envs))]
    rngs = [random.Random(s) for s in seeds]
    with env_threads(threads):
        t0 = time.perf_counter()
        infos = [info for _, info in reset_all(envs, seeds)]
        reset_s = time.perf_counter() - t0
        stepping, crashes = 0.0, 0
        for r in range(rounds):
            actions = [rng.choice(info.get("admissible_actions") or ["look"]) for rng, info in zip(rngs, infos)]
            t1 = time.perf_counter()
            results = step_all(envs, actions)
            stepping += time.perf_counter() - t1
            infos = [out[4] for out in results]
            crashes += sum(bool(info.get("crashed")) for info in infos)
            ended = [i for i, out in enumerate(results) if out[2] or out[3]]
            restarts = reset_all([envs[i] for i in ended], [seed + 1000 * (r + 1) + i for i in ended])
            for i, (_, info) in zip(ended, restarts):
                infos[i] = info
    steps = rounds * len(envs)
    return {"threads": threads, "reset_s": reset_s, "steps_per_s": steps / stepping,
            "s_per_100": 100 * stepping / steps, "crashes": crashes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="*", default=DEFAULT)
    p.add_argument("--n", type=int, default=16, help="envs per actor (arms.<i>.envs_per_actor)")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 8], help="thread counts; the first is the baseline")
    p.add_argument("--rounds", type=int, default=10, help="timed step_all calls per thread count")
    args = p.parse_args()
    print(f"{'env':24} {'threads':>7} {'reset s':>8} {'x serial':>8} {'steps/s':>8} {'s/100 steps':>11} "
          f"{'x serial':>8} {'crashes':>7} {'load':>5}")
    for env_id in args.envs:
        envs = []
        try:
            t0 = time.perf_counter()
            envs = [make_env(env_id, max_steps=1000) for _ in range(args.n)]
            measure(envs, 1, 1)  # warm-up: servers started, first calls made
            print(f"{env_id:24} start-up of {args.n} envs, one by one: {time.perf_counter() - t0:.1f} s", flush=True)
            base = None
            for threads in args.threads:
                r = measure(envs, threads, args.rounds)
                base = base or r
                print(f"{env_id:24} {threads:7d} {r['reset_s']:8.2f} {base['reset_s'] / r['reset_s']:8.2f} "
                      f"{r['steps_per_s']:8.1f} {r['s_per_100']:11.2f} {r['steps_per_s'] / base['steps_per_s']:8.2f} "
                      f"{r['crashes']:7d} {os.getloadavg()[0]:5.1f}", flush=True)
        except Exception as e:  # one env missing must not hide the others' figures
            print(f"{env_id:24} failed: {type(e).__name__}: {str(e)[:80]}")
        finally:
            for env in envs:
                env.close()


if __name__ == "__main__":
    main()
