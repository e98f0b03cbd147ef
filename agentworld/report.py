"""The run report: metrics.parquet (the canonical record), curves.png, report.html and summary.json."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import pandas as pd


def _num(x):
    """JSON-safe number: NaN and missing become None."""
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else (int(x) if x.is_integer() and abs(x) < 2**53 else x)


def load_metrics(run_dir) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / "metrics.parquet")


def _rows(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    return df[df["kind"] == kind] if "kind" in df else df.iloc[0:0]


def summarize(df: pd.DataFrame, config: dict | None, success_target: float) -> dict:
    evals, wm = _rows(df, "eval"), _rows(df, "wm")
    arms = {}
    for arm in sorted(set(df["arm"].dropna())) if "arm" in df else []:
        e = evals[evals["arm"] == arm].sort_values("wall_time")
        every = df[df["arm"] == arm].sort_values("wall_time")
        last = every.iloc[-1]
        reached = e[e["success"] >= success_target]
        first = reached.iloc[0] if len(reached) else None
        arms[arm] = {
            "source": str(last.get("source")),
            "final_success": _num(e["success"].iloc[-1]) if len(e) else None,
            "final_return": _num(e["return"].iloc[-1]) if len(e) else None,
            "best_success": _num(e["success"].max()) if len(e) else None,
            "real_steps": _num(last.get("real_steps")),
            "sim_steps": _num(last.get("sim_steps")),
            "wm_real_steps": _num(last.get("wm_real_steps")),
            "wall_clock_s": _num(last.get("wall_time")),
            "updates": _num(last.get("update")),
            "reached_target": first is not None,
            "to_target": None if first is None else {
                "real_steps": _num(first["real_steps"]), "sim_steps": _num(first["sim_steps"]),
                "wall_clock_s": _num(first["wall_time"]), "update": _num(first["update"])},
        }
    fid = ("exact_match", "edit_similarity", "outcome_accuracy")
    wm = wm.sort_values("wall_time") if len(wm) else wm
    untrained = wm[wm["wm_version"] == 0] if len(wm) else wm
    lwm = {
        "untrained": {k: _num(untrained.iloc[0][k]) for k in fid} if len(untrained) else None,
        "final": dict({k: _num(wm.iloc[-1][k]) for k in fid}, wm_version=_num(wm.iloc[-1]["wm_version"]),
                      train_step=_num(wm.iloc[-1]["train_step"])) if len(wm) else None,
        "versions": int(wm["wm_version"].nunique()) if len(wm) else 0,
    }
    run = (config or {}).get("run", {}).get("name")
    return {"run": run, "success_target": success_target, "arms": arms, "lwm": lwm}


def plot_curves(df: pd.DataFrame, path: Path, success_target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals, wm = _rows(df, "eval").copy(), _rows(df, "wm")
    if len(evals):
        evals["x_real"] = evals["real_steps"].fillna(0) + evals["wm_real_steps"].fillna(0)
        evals["x_total"] = evals["x_real"] + evals["sim_steps"].fillna(0)
        evals["x_wall"] = evals["wall_time"] / 60
    xs = [("x_real", "real env steps (own + LWM data)"), ("sim_steps", "simulated env steps"),
          ("x_total", "all env steps (real + simulated)"), ("x_wall", "wall-clock (min)")]
    fig, axes = plt.subplots(3, 4, figsize=(18, 11))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    arms = sorted(set(evals["arm"])) if len(evals) else []
    for row, (metric, label) in enumerate((("success", "real-env success"), ("return", "real-env return"))):
        for col, (x, xlabel) in enumerate(xs):
            ax = axes[row, col]
            for k, arm in enumerate(arms):
                e = evals[evals["arm"] == arm].sort_values("wall_time")
                style = "-" if (e["source"] == "real").all() else "--"
                ax.plot(e[x], e[metric], style, marker="o", ms=3, color=colors[k % len(colors)],
                        label=f"{arm} ({e['source'].iloc[0]})")
            if metric == "success":
                ax.axhline(success_target, ls=":", color="grey", label=f"target {success_target:g}")
                ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            ax.set_title(f"{label} vs {xlabel}", fontsize=10)
            ax.grid(alpha=0.3)
            if arms:
                ax.legend(fontsize=8)
    for col, (x, xlabel) in enumerate((("train_step", "LWM training step"), ("wall_time", "wall-clock (min)"))):
        ax = axes[2, col]
        if len(wm):
            w = wm.sort_values("wall_time")
            xv = w[x] / (60 if x == "wall_time" else 1)
            for k, m in enumerate(("exact_match", "edit_similarity", "outcome_accuracy")):
                ax.plot(xv, w[m], marker="o", ms=3, label=m.replace("_", " "), color=colors[(k + 3) % len(colors)])
            ax.legend(fontsize=8)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out next-state fidelity")
        ax.set_title(f"LWM fidelity vs {xlabel}", fontsize=10)
        ax.grid(alpha=0.3)
    for col in (2, 3):
        axes[2, col].axis("off")
    axes[2, 2].text(0, 0.9, "Every arm is scored in the real env.\nSolid: trains on real steps; dashed: trains in the LWM.\n"
                    "Real env steps of LWM-based arms include the LWM's data budget.", va="top", fontsize=10)
    fig.suptitle("AgentWorld: sim-vs-real learning curves", fontsize=14)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(run_dir, metrics, config: dict | None = None, success_target: float = 0.8) -> dict:
    """Write the four report files into `run_dir`; returns the summary."""
    run_dir = Path(run_dir)
    df = pd.DataFrame(metrics) if not isinstance(metrics, pd.DataFrame) else metrics
    if "kind" not in df:
        df["kind"] = pd.Series(dtype=str)
    df.to_parquet(run_dir / "metrics.parquet", index=False)
    summary = summarize(df, config, success_target)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_curves(df, run_dir / "curves.png", success_target)
    png = base64.b64encode((run_dir / "curves.png").read_bytes()).decode()
    e = html.escape
    arm_rows = "".join(
        f"<tr><td>{e(name)}</td><td>{e(a['source'])}</td><td>{a['final_success']}</td><td>{a['final_return']}</td>"
        f"<td>{a['real_steps']}</td><td>{a['sim_steps']}</td><td>{a['wm_real_steps']}</td>"
        f"<td>{e(json.dumps(a['to_target']))}</td><td>{a['wall_clock_s']}</td></tr>" for name, a in summary["arms"].items())
    lwm = summary["lwm"]
    lwm_rows = "".join(f"<tr><td>{k}</td><td>{e(json.dumps(v))}</td></tr>" for k, v in lwm.items())
    cfg = f"<h2>Config</h2><pre>{e(json.dumps(config, indent=2, default=str))}</pre>" if config else ""
    title = e(f"AgentWorld report: {summary['run'] or run_dir.name}")
    (run_dir / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
        "table{border-collapse:collapse;margin-bottom:1em}</style></head><body>"
        f"<h1>{title}</h1><h2>Arms, scored in the real env (target success {success_target:g})</h2>"
        "<table><tr><th>arm</th><th>trains in</th><th>final success</th><th>final return</th><th>real steps</th>"
        f"<th>sim steps</th><th>LWM data steps</th><th>to target</th><th>wall-clock s</th></tr>{arm_rows}</table>"
        f"<h2>LWM fidelity on held-out real transitions</h2><table>{lwm_rows}</table>"
        f"<img src='data:image/png;base64,{png}' style='max-width:100%'>{cfg}</body></html>")
    return summary
