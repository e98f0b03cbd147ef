"""Real env steps per second, every env measured in one run with the same random policy.

    .venv/bin/python bench/envs.py                 # every built-in env family, 100 steps each
    .venv/bin/python bench/envs.py --steps 300 --envs twx:coin babyai:GoToLocal

Start-up (building the env: a JVM, a browser, a sandboxed shell) is timed apart from stepping. The random
policy samples `admissible_actions`, resetting when an episode ends, so the figure is the env's own cost."""

from __future__ import annotations

import argparse
import random
import time

from agentworld.envs import make_env

DEFAULT = [
    "gymnasium:FrozenLake-v1", "terminal:count-lines", "swe:textwrap", "mcp:sqlite-query", "bfcl:multi_turn_base",
    "search:python-docs", "miniwob:click-button", "textworld:custom", "twx:coin", "twx:cookingworld",
    "scienceworld:boil", "alfworld:mug-in-coffeemachine", "babyai:GoToLocal",
]


def measure(env_id: str, steps: int, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    env = make_env(env_id, max_steps=50)
    rng = random.Random(seed)
    try:
        _, info = env.reset(seed=seed)
        start = time.perf_counter() - t0
        episodes, t1 = 1, time.perf_counter()
        for k in range(steps):
            action = rng.choice(info.get("admissible_actions") or ["look"])
            _, _, term, trunc, info = env.step(action)
            if term or trunc:
                _, info = env.reset(seed=seed + k + 1)
                episodes += 1
        elapsed = time.perf_counter() - t1
    finally:
        env.close()
    return {"env": env_id, "startup_s": start, "steps": steps, "episodes": episodes,
            "steps_per_s": steps / elapsed, "s_per_100": 100 * elapsed / steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--envs", nargs="*", default=DEFAULT)
    args = p.parse_args()
    print(f"{'env':32} {'start-up s':>10} {'steps/s':>9} {'s/100 steps':>11} {'episodes':>8}")
    for env_id in args.envs:
        try:
            r = measure(env_id, args.steps)
        except Exception as e:  # one env missing must not hide the others' figures
            print(f"{env_id:32} failed: {type(e).__name__}: {str(e)[:80]}")
            continue
        print(f"{r['env']:32} {r['startup_s']:10.2f} {r['steps_per_s']:9.1f} {r['s_per_100']:11.2f} {r['episodes']:8d}",
              flush=True)


if __name__ == "__main__":
    main()
