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
    learner_rows = df[df["kind"].isin(("eval", "train"))] if "arm" in df else df.iloc[0:0]  # not pool decisions
    for arm in sorted(set(learner_rows["arm"].dropna())):
        e = evals[evals["arm"] == arm].sort_values("wall_time")
        every = learner_rows[learner_rows["arm"] == arm].sort_values("wall_time")
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
                # every real env step the arm cost: its own (routed and shadow ones too) + the LWM's data
                "real_env_steps": _num((first["real_steps"] or 0) + (first.get("wm_real_steps") or 0)),
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
    if len(wm) and "obedience" in wm and not pd.isna(wm.iloc[-1]["obedience"]):  # LWM trained with hindsight controls
        lwm["final"].update(obedience=_num(wm.iloc[-1]["obedience"]),
                            obedience_without_control=_num(wm.iloc[-1]["obedience_without_control"]))
    hyb = _rows(df, "hybrid")
    for arm in sorted(set(hyb["arm"].dropna())) if len(hyb) else []:
        h = hyb[hyb["arm"] == arm].sort_values("wall_time")
        fid = h["fidelity"].dropna()
        arms.setdefault(arm, {})["hybrid"] = {
            "final_fidelity": _num(fid.iloc[-1]) if len(fid) else None, "min_fidelity": _num(fid.min()) if len(fid) else None,
            "routed_steps": _num(h["routed_steps_total"].iloc[-1]), "shadow_steps": _num(h["shadow_steps_total"].iloc[-1]),
            "sim_steps": _num(h["sim_steps"].iloc[-1]), "scored": _num(h["scored_total"].iloc[-1]),
            "match_rate": _num(h["matched_total"].iloc[-1] / h["scored_total"].iloc[-1]) if h["scored_total"].iloc[-1] else None,
            "routed_bins": int((h["routed_share"] > 0).sum()), "bins": len(h)}
    ctl = _rows(df, "control")
    for arm in sorted(set(ctl["arm"].dropna())) if len(ctl) else []:
        c = ctl[(ctl["arm"] == arm) & (ctl["final"] == True)]  # noqa: E712  (NaN on the binned rows)
        every = c[c["control"] == "all"]
        arms.setdefault(arm, {})["control"] = {
            "obedience": _num(every["obedience"].iloc[0]) if len(every) else None,
            "controlled_steps": _num(every["steps"].iloc[0]) if len(every) else 0,
            "by_control": {str(r["control"]): {"obedience": _num(r["obedience"]), "steps": _num(r["steps"])}
                           for _, r in c.iterrows() if r["control"] != "all"}}
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
    ctl = _rows(df, "control")
    fig, axes = plt.subplots(3 + bool(len(ctl)), 4, figsize=(18, 11 + 3.7 * bool(len(ctl))))
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
    pool = _rows(df, "pool")
    if len(pool) and pool["decision"].isin(["grow", "shrink"]).any():  # the actor pools' sizes, where arms autoscale
        ax = axes[2, 3]
        for k, arm in enumerate(sorted(set(pool["arm"]))):
            p = pool[pool["arm"] == arm].sort_values("wall_time")
            ax.step(p["wall_time"] / 60, p["actors"], where="post", color=colors[k % len(colors)], label=arm)
        ax.set(xlabel="wall-clock (min)", ylabel="rollout actors", title="actor pool size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    else:
        axes[2, 3].axis("off")
    hyb = _rows(df, "hybrid")
    if len(hyb):  # the hybrid arms' live fidelity and the share of their steps routed to the real env
        ax = axes[2, 2]
        for k, arm in enumerate(sorted(set(hyb["arm"]))):
            h = hyb[hyb["arm"] == arm].sort_values("wall_time")
            ax.plot(h["wall_time"] / 60, h["fidelity"], marker="o", ms=3, color=colors[k % len(colors)],
                    label=f"{arm}: live fidelity")
            ax.fill_between(h["wall_time"] / 60, 0, h["routed_share"], step="pre", alpha=0.25,
                            color=colors[(k + 5) % len(colors)], label=f"{arm}: share routed to real")
        ax.set(xlabel="wall-clock (min)", ylabel="fidelity / routed share", ylim=(-0.05, 1.05),
               title="hybrid: live fidelity (shadow exact match) and routing")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        axes[2, 2].text(0.01, 0.02, "Every arm is scored in the real env.", transform=ax.transAxes, fontsize=8)
    else:
        axes[2, 2].axis("off")
        axes[2, 2].text(0, 0.9, "Every arm is scored in the real env.\nSolid: trains on real steps; dashed: trains in the LWM.\n"
                    "Real env steps of LWM-based arms include the LWM's data budget.", va="top", fontsize=10)
    if len(ctl):  # controlled arms: obedience over time, and per control
        _plot_obedience(axes[3], ctl, colors)
    fig.suptitle("AgentWorld: sim-vs-real learning curves", fontsize=14)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_obedience(axes, ctl: pd.DataFrame, colors) -> None:
    """Obedience: the share of controlled sim steps whose outcome the labeler confirms."""
    final = ctl["final"] == True  # noqa: E712
    names = sorted(set(ctl.loc[final & (ctl["control"] != "all"), "control"]))
    arms = sorted(set(ctl["arm"]))
    for k, arm in enumerate(arms):
        c = ctl[(ctl["arm"] == arm) & ~final & (ctl["control"] == "all")].sort_values("wall_time")
        axes[0].plot(c["wall_time"] / 60, c["obedience"], marker="o", ms=3, color=colors[k % len(colors)], label=arm)
        f = ctl[(ctl["arm"] == arm) & final].set_index("control")
        width = 0.8 / len(arms)
        axes[1].bar([i + k * width for i in range(len(names))], [f["obedience"].get(n, 0.0) for n in names], width,
                    color=colors[k % len(colors)], label=arm)
    axes[0].set(xlabel="wall-clock (min)", ylabel="obedience (cumulative)", ylim=(-0.05, 1.05),
                title="controlled sim steps the labeler confirms")
    axes[1].set(ylabel="obedience", ylim=(0, 1.05), title="obedience by control")
    axes[1].set_xticks([i + 0.4 - 0.4 / len(arms) for i in range(len(names))], names, fontsize=8)
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[2:]:
        ax.axis("off")


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
    hyb_rows = "".join(f"<tr><td>{e(name)}</td><td>{e(json.dumps(a['hybrid']))}</td></tr>"
                       for name, a in summary["arms"].items() if a.get("hybrid"))
    hyb_html = (f"<h2>Hybrid arms: live fidelity and routing to the real env</h2><table>{hyb_rows}</table>"
                "<p>`hybrid` rows of metrics.parquet, and the panel below, give both over time.</p>") if hyb_rows else ""
    ctl_rows = "".join(f"<tr><td>{e(name)}</td><td>{a['control']['obedience']}</td><td>{a['control']['controlled_steps']}</td>"
                       f"<td>{e(json.dumps(a['control']['by_control']))}</td></tr>"
                       for name, a in summary["arms"].items() if a.get("control"))
    ctl_html = (f"<h2>Controls: obedience of the simulator</h2><table><tr><th>arm</th><th>obedience</th>"
                 f"<th>controlled sim steps</th><th>by control</th></tr>{ctl_rows}</table><p>Obedience: the share "
                 "of controlled sim steps whose outcome the labeler confirms (`control` rows of metrics.parquet)."
                 "</p>") if ctl_rows else ""
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
        f"{hyb_html}{ctl_html}<h2>LWM fidelity on held-out real transitions</h2><table>{lwm_rows}</table>"
        f"<img src='data:image/png;base64,{png}' style='max-width:100%'>{cfg}</body></html>")
    return summary
