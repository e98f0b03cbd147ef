"""Asynchrony where rollouts dominate: wall-clock to the held-out success target and trained rows per second, one run
per `max_staleness` value, side by side in one invocation.

    .venv/bin/python bench/staleness.py                  # experiments/staleness.yaml (the terminal), staleness 0 1 2
    .venv/bin/python bench/staleness.py --config experiments/quickstart.yaml --arms real --staleness 0 2 \
        --overrides agent.updates=16 eval.every_updates=2 eval.episodes=16 run.max_minutes=40

First `agentworld wm train` makes one run dir holding the LWM data, the base model and the LWM (`<name>_lwm`, kept and
reused by later invocations). Each staleness value then runs in a fresh copy of it (`<name>_s<k>`), so every run
starts from the same data and LWM checkpoint and trains only its arms. An arm's time runs from its first evaluation,
when its learner and actors start, to its first evaluation at or above `eval.success_target`. `rows/s` counts the
transitions its updates trained on over that span; `x sync` divides by the first staleness value's figure."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def profile(run_dir: Path, target: float) -> dict:
    """Per arm: seconds per update split into waiting for rollouts, training and the rest (its evaluations), trained
    rows per second, and the time to the success target (None if never reached)."""
    df = pd.read_parquet(run_dir / "metrics.parquet")
    out = {}
    for arm, t in df[df.kind == "train"].sort_values("wall_time").groupby("arm"):
        evals = df[(df.kind == "eval") & (df.arm == arm)].sort_values("wall_time")
        span = t.wall_time.iloc[-1] - evals.wall_time.iloc[0]
        hit = evals[evals.success >= target]
        out[arm] = dict(updates=len(t), s_per_update=span / len(t), wait=t.wait_s.mean(), train=t.train_s.mean(),
                        other=span / len(t) - t.wait_s.mean() - t.train_s.mean(), rows_per_s=t.batch_steps.sum() / span,
                        staleness=int(t.max_staleness_seen.max()), success=evals.success.tolist(),
                        to_target=None if hit.empty else float(hit.wall_time.iloc[0] - evals.wall_time.iloc[0]),
                        update_at_target=None if hit.empty else int(hit["update"].iloc[0]))
    return out


def run(cmd: list[str]) -> None:
    print("$", " ".join(["agentworld", *cmd[3:]]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"  {time.time() - t0:.0f} s; load average after it {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "experiments" / "staleness.yaml"))
    p.add_argument("--name", default="bench_staleness")
    p.add_argument("--output-dir", default=str(ROOT / "runs"))
    p.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="*", default=None, help="the config's arms to run (default: all)")
    p.add_argument("--overrides", nargs="*", default=[], help="dotted overrides for every run")
    args = p.parse_args()
    out_dir = Path(args.output_dir).resolve()
    raw = yaml.safe_load(Path(args.config).read_text())
    if args.arms:
        raw["arms"] = [a for a in raw["arms"] if a["name"] in args.arms]
    config = out_dir / f"{args.name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    target = float(next((o.split("=", 1)[1] for o in args.overrides if o.startswith("eval.success_target=")),
                        raw.get("eval", {}).get("success_target", 0.8)))
    cli = [sys.executable, "-m", "agentworld"]
    common = [f"run.output_dir={out_dir}", *args.overrides]
    lwm = out_dir / f"{args.name}_lwm"
    if not (lwm / "checkpoints" / "wm_done.json").exists():
        run([*cli, "wm", "train", str(config), f"run.name={lwm.name}", *common])
    profiles = {}
    for k in args.staleness:
        name = f"{args.name}_s{k}"
        shutil.rmtree(out_dir / name, ignore_errors=True)
        shutil.copytree(lwm, out_dir / name, symlinks=True)
        run([*cli, "run", str(config), f"run.name={name}", f"agent.max_staleness={k}", *common])
        profiles[k] = profile(out_dir / name, target)
    first = args.staleness[0]
    fmt = lambda x, f="{:.0f}": "-" if x is None else f.format(x)  # noqa: E731
    print(f"\nper arm and max_staleness: seconds to held-out success >= {target} (update then), trained rows per "
          "second, the learner's seconds per update (waiting for rollouts / training / the rest), largest staleness "
          "trained on, held-out success at each evaluation")
    for arm in profiles[first]:
        base = profiles[first][arm]
        for k, by_arm in profiles.items():
            a = by_arm.get(arm)
            if a is None:
                continue
            speed = f"x{base['to_target'] / a['to_target']:.2f}" if base["to_target"] and a["to_target"] else "-"
            print(f"  {arm:8} staleness {k}: to target {fmt(a['to_target']):>5} s ({fmt(a['update_at_target'])}) "
                  f"{speed:>6} | rows/s {a['rows_per_s']:6.1f} x{a['rows_per_s'] / base['rows_per_s']:.2f} | "
                  f"{a['s_per_update']:5.2f} s/update = {a['wait']:5.2f} / {a['train']:5.2f} / {a['other']:5.2f} "
                  f"over {a['updates']} | staleness {a['staleness']} | success {[round(s, 2) for s in a['success']]}")


if __name__ == "__main__":
    main()
