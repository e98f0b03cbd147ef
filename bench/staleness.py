"""(b) Wall-clock to the quickstart's real-env success target, asynchronous (max_staleness 2) against synchronous
(max_staleness 0): one quickstart run each, measured in one invocation.

    .venv/bin/python bench/staleness.py                      # the real arm only; ~4 min of LWM, then ~3 min per run
    .venv/bin/python bench/staleness.py --arms real sim --overrides agent.updates=40 eval.every_updates=5

Both runs use one run name, so the second reuses the first's LWM data, base model and LWM (a rerun resumes) and
both policies start from the same LWM checkpoint; each arm's time runs from its first evaluation, when its learner
and actors start, to the first evaluation at or above `eval.success_target`. To keep it short, by default only the
real arm runs, it stops after 16 updates (the quickstart's real arm reaches 0.8 near update 10) and it is scored
every 2 updates on 16 episodes (finer steps to the target, at half the quickstart's eval cost). `run.max_minutes`
is raised to 40: the quickstart's 14 counts from the run's start, LWM training included, and on a loaded machine
it stopped the first (synchronous) run before its target."""

from __future__ import annotations

import argparse
import os
import subprocess
import time
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def profile(run_dir: Path) -> dict:
    """Per arm, the learner's time per update: waiting for rollouts, training, and the rest (evaluations)."""
    df = pd.read_parquet(run_dir / "metrics.parquet")
    out = {}
    for arm, t in df[df.kind == "train"].sort_values("wall_time").groupby("arm"):
        evals = df[(df.kind == "eval") & (df.arm == arm)].sort_values("wall_time")
        span = t.wall_time.iloc[-1] - evals.wall_time.iloc[0]
        out[arm] = dict(updates=len(t), s_per_update=span / len(t), wait=t.wait_s.mean(), train=t.train_s.mean(),
                        other=span / len(t) - t.wait_s.mean() - t.train_s.mean(),
                        staleness=int(t.max_staleness_seen.max()))
    return out


def time_to_target(run_dir: Path, target: float) -> dict:
    """Per arm: (seconds from its start to the target or None, updates then, final success)."""
    evals = pd.read_parquet(run_dir / "metrics.parquet").query("kind == 'eval'").sort_values("wall_time")
    out = {}
    for arm, e in evals.groupby("arm"):
        hit = e[e["success"] >= target]
        out[arm] = (None if hit.empty else float(hit.wall_time.iloc[0] - e.wall_time.iloc[0]),
                    None if hit.empty else int(hit["update"].iloc[0]), float(e["success"].iloc[-1]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    p.add_argument("--name", default="bench_staleness")
    p.add_argument("--output-dir", default="runs")
    p.add_argument("--target", type=float, default=0.8)
    p.add_argument("--arms", nargs="*", default=["real"], help="the quickstart's arms to run")
    p.add_argument("--overrides", nargs="*", default=["agent.updates=16", "eval.every_updates=2", "eval.episodes=16",
                                                          "run.max_minutes=40"])
    args = p.parse_args()
    out_dir = Path(args.output_dir if Path(args.output_dir).is_absolute() else ROOT / args.output_dir)
    raw = yaml.safe_load(Path(args.config).read_text())
    raw["arms"] = [a for a in raw["arms"] if a["name"] in args.arms]
    config = out_dir / f"{args.name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    results, profiles = {}, {}
    for staleness in (0, 2):
        cmd = [sys.executable, "-m", "agentworld", "run", str(config), f"run.name={args.name}",
               f"run.output_dir={args.output_dir}", f"agent.max_staleness={staleness}",
               f"eval.success_target={args.target}", *args.overrides]
        print("$", " ".join(cmd[2:]), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        print(f"  {time.time() - t0:.0f} s in all; load average after it {os.getloadavg()[0]:.2f}", flush=True)
        results[staleness] = time_to_target(out_dir / args.name, args.target)
        profiles[staleness] = profile(out_dir / args.name)
    print(f"\n{'arm':6} {'sync (0) s':>11} {'async (2) s':>12} {'speed-up':>9} {'updates sync/async':>19} "
          f"{'final success sync/async':>25}")
    for arm in results[0]:
        (s, us, fs), (a, ua, fa) = results[0][arm], results[2].get(arm, (None, None, None))
        speed = f"{s / a:8.2f}x" if s and a else "       -"
        fmt = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
        print(f"{arm:6} {fmt(s):>11} {fmt(a):>12} {speed:>9} {fmt(us) + '/' + fmt(ua):>19} {fs:12.2f}/{fa:.2f}")
    print("\nthe learner's time per update (s): waiting for rollouts, training, the rest (its evaluations)")
    for staleness, by_arm in profiles.items():
        for arm, p in by_arm.items():
            print(f"  max_staleness {staleness} {arm:6} {p['s_per_update']:5.2f} s/update over {p['updates']} updates: "
                  f"wait {p['wait']:5.2f}  train {p['train']:5.2f}  other {p['other']:5.2f}  "
                  f"(largest staleness trained on: {p['staleness']})")


if __name__ == "__main__":
    main()
