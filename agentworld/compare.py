"""`agentworld compare RUN_DIR... --out DIR`: overlay every arm of several runs, scored in the real env.

Runs whose configs differ only in run.name, run.seed and where they write are seeds of one experiment:
each of its arms is drawn as the mean over seeds with a band from the lowest to the highest seed. Reads
only metrics.parquet and config.yaml, so it works on run dirs fetched from a cluster."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

X_AXES = [("x_real", "real env steps (own + LWM data)"), ("x_total", "total env steps (real + simulated)"),
          ("x_wall", "wall-clock (min)")]
METRICS = [("success", "real-env success"), ("return", "real-env return")]
_NOT_THE_EXPERIMENT = {"run": ("name", "seed", "output_dir", "storage"), "replay": ("dir",)}


def load_run(run_dir) -> tuple[dict, pd.DataFrame]:
    run_dir = Path(run_dir)
    for name in ("metrics.parquet", "config.yaml"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}: no {name} (is it a finished run dir?)")
    return yaml.safe_load((run_dir / "config.yaml").read_text()), pd.read_parquet(run_dir / "metrics.parquet")


def experiment_key(config: dict) -> str:
    """Fingerprint of what a run tested: its config without its name, seed and output places."""
    c = json.loads(json.dumps(config, default=str))
    for section, keys in _NOT_THE_EXPERIMENT.items():
        for k in keys:
            c.get(section, {}).pop(k, None)
    return hashlib.sha1(json.dumps(c, sort_keys=True).encode()).hexdigest()[:8]


def _group_name(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    prefix = re.sub(r"[-_.]*(s|seed)?$", "", os.path.commonprefix(names))
    return prefix or "+".join(names)


def series(run_dirs) -> list[dict]:
    """One entry per (experiment, arm): its label, source and one eval/pool frame per seed."""
    groups: dict[str, list] = {}
    for d in run_dirs:
        config, df = load_run(d)
        groups.setdefault(experiment_key(config), []).append((config, df))
    out = []
    for runs in groups.values():
        gname = _group_name([c["run"]["name"] for c, _ in runs])
        arms = sorted({a for _, df in runs for a in df.loc[df["kind"] == "eval", "arm"].dropna()})
        for arm in arms:
            evals, pools, seeds = [], [], []
            for config, df in runs:
                e = df[(df["kind"] == "eval") & (df["arm"] == arm)].sort_values("wall_time").copy()
                if not len(e):
                    continue
                e["x_real"] = e["real_steps"].fillna(0) + e["wm_real_steps"].fillna(0)
                e["x_total"] = e["x_real"] + e["sim_steps"].fillna(0)
                e["x_wall"] = e["wall_time"] / 60
                evals.append(e)
                seeds.append(config["run"].get("seed"))
                pools.append(df[(df["kind"] == "pool") & (df["arm"] == arm)].sort_values("wall_time"))
            label = arm if len(groups) == 1 else f"{arm} · {gname}"
            out.append(dict(label=label, arm=arm, source=str(evals[0]["source"].iloc[0]), evals=evals,
                            pools=pools, seeds=seeds))
    return out


def band(curves: list[pd.DataFrame], x: str, y: str, points: int = 60):
    """Mean, min and max over seeds on a common x grid; at each x, over the seeds whose curve reaches it
    (seeds run at different speeds, so their wall-clock ranges may barely overlap)."""
    lo, hi = min(c[x].min() for c in curves), max(c[x].max() for c in curves)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    ys = np.stack([np.interp(grid, c[x].to_numpy(float), c[y].to_numpy(float), left=np.nan, right=np.nan)
                   for c in curves])
    with warnings.catch_warnings():  # an x no seed reaches stays NaN: a gap in the line, not an error
        warnings.simplefilter("ignore", RuntimeWarning)
        return grid, np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)


def plot(all_series: list[dict], path: Path, success_target: float | None) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the pool panel only where a pool scaled (fixed pools log holds, their start and their stop)
    has_pool = any(len(p) and p["decision"].isin(["grow", "shrink"]).any() for s in all_series for p in s["pools"])
    fig, axes = plt.subplots(3 if has_pool else 2, 3, figsize=(17, 13 if has_pool else 9), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, s in enumerate(all_series):
        color, style = colors[k % len(colors)], "-" if s["source"] == "real" else "--"
        n = len(s["evals"])
        label = f"{s['label']} ({s['source']}, {n} seed{'s' if n > 1 else ''})"
        for row, (metric, _) in enumerate(METRICS):
            for col, (x, _) in enumerate(X_AXES):
                ax = axes[row, col]
                if n == 1 or all(e[x].nunique() == 1 for e in s["evals"]):
                    # one seed, or an axis the arm does not move along (a sim arm's real steps): every point
                    for k, e in enumerate(s["evals"]):
                        ax.plot(e[x], e[metric], style, marker="o", ms=3, color=color,
                                label=label if n == 1 else f"{label}: mean, band min-max" if k == 0 else None)
                else:
                    grid, mean, lo, hi = band(s["evals"], x, metric)
                    ax.plot(grid, mean, style, color=color, label=f"{label}: mean, band min-max")
                    ax.fill_between(grid, lo, hi, color=color, alpha=0.18, lw=0)
        if has_pool:
            for p in s["pools"]:
                if len(p):
                    axes[2, 0].step(p["wall_time"] / 60, p["actors"], where="post", color=color, ls=style,
                                    label=label)
    for row, (metric, ylabel) in enumerate(METRICS):
        for col, (_, xlabel) in enumerate(X_AXES):
            ax = axes[row, col]
            if metric == "success":
                if success_target is not None:
                    ax.axhline(success_target, ls=":", color="grey", label=f"target {success_target:g}")
                ax.set_ylim(-0.05, 1.05)
            ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{ylabel} vs {xlabel}")
            ax.grid(alpha=0.3)
    if has_pool:
        ax = axes[2, 0]
        ax.set(xlabel="wall-clock (min)", ylabel="rollout actors", title="actor pool size (autoscaling)")
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        axes[2, 1].axis("off")
        axes[2, 2].axis("off")
    # one legend for all panels: every panel draws the same series in the same colours
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=10, frameon=False)
    fig.suptitle("AgentWorld: arms compared across runs, all scored in the real env (solid: trains on real "
                 "steps, dashed: trains in the LWM)", fontsize=13)
    fig.tight_layout(rect=(0, 0.03 + 0.02 * ((len(labels) + 2) // 3), 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _final(s: dict) -> dict:
    last = [e.iloc[-1] for e in s["evals"]]

    def stat(key, scale=1.0):
        v = np.array([float(r[key]) for r in last]) / scale
        return f"{v.mean():.2f}" + (f" ± {v.std():.2f}" if len(v) > 1 else "")

    return {"arm": s["label"], "trains in": s["source"], "seeds": ", ".join(str(x) for x in s["seeds"]),
            "final success": stat("success"), "final return": stat("return"),
            "real env steps": stat("x_real"), "total env steps": stat("x_total"), "wall-clock min": stat("x_wall")}


def compare(run_dirs, out) -> Path:
    """Write compare.png and compare.html to `out`; returns the HTML's path."""
    if not run_dirs:
        raise ValueError("give at least one run dir")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_series = series(run_dirs)
    if not all_series:
        raise ValueError("no eval rows in any of the run dirs")
    targets = {(yaml.safe_load((Path(d) / "config.yaml").read_text()).get("eval") or {}).get("success_target")
               for d in run_dirs}
    plot(all_series, out / "compare.png", targets.pop() if len(targets) == 1 else None)
    rows = [_final(s) for s in all_series]
    e = html.escape
    table = "<tr>" + "".join(f"<th>{e(k)}</th>" for k in rows[0]) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    runs = "".join(f"<li>{e(str(Path(d).resolve()))}</li>" for d in run_dirs)
    png = base64.b64encode((out / "compare.png").read_bytes()).decode()
    (out / "compare.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>AgentWorld: runs compared</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
        "table{border-collapse:collapse;margin-bottom:1em}</style></head><body>"
        "<h1>AgentWorld: runs compared</h1><h2>At the last real-env evaluation (mean ± std over seeds)</h2>"
        f"<table>{table}</table><img src='data:image/png;base64,{png}' style='max-width:100%'>"
        f"<h2>Run dirs</h2><ul>{runs}</ul></body></html>")
    return out / "compare.html"
