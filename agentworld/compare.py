"""`agentworld compare RUN_DIR... --out DIR`: overlay every arm of several runs, scored in the real env.

Runs whose configs differ only in run.name, run.seed and where they write are seeds of one experiment:
each of its arms is drawn as the mean over seeds with a band from the lowest to the highest seed. Reads
only metrics.parquet and config.yaml, so it works on run dirs fetched from a cluster."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from agentworld.metrics import KINDS, TIME, Kind
from agentworld.report import (MARKERS, curve_rows, fmt, headline_measures, key_text, measure_panels, series_of,
                               sim_vs_real_axes, x_values)

X_AXES = [("x_real", "real env steps (own + LWM data)"), ("x_total", "total env steps (real + simulated)"),
          ("x_wall", "wall-clock (min)")]
COLUMNS = 3  # panels per row of compare.png
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


def _groups(run_dirs) -> list[tuple[str, list[tuple[dict, pd.DataFrame]]]]:
    """The runs grouped by experiment: (group name, [(config, metrics) per seed])."""
    groups: dict[str, list] = {}
    for d in run_dirs:
        config, df = load_run(d)
        groups.setdefault(experiment_key(config), []).append((config, df))
    return [(_group_name([c["run"]["name"] for c, _ in runs]), runs) for runs in groups.values()]


def _of(df: pd.DataFrame, kind: str, arm: str | None = None) -> pd.DataFrame:
    rows = df[df["kind"] == kind]
    return (rows[rows["arm"] == arm] if arm is not None else rows).sort_values(TIME)


def series(run_dirs) -> list[dict]:
    """One entry per (experiment, arm): its label, source, seeds, and per seed its eval frame (with the
    sim-vs-real axes), its pool frame and its rows of every kind that has an arm."""
    return _arm_series(_groups(run_dirs))


def _arm_series(groups) -> list[dict]:
    out = []
    for gname, runs in groups:
        arms = sorted({a for _, df in runs for a in df.loc[df["kind"] == "eval", "arm"].dropna()})
        for arm in arms:
            seeded = [(config, df) for config, df in runs if len(_of(df, "eval", arm))]
            evals = [sim_vs_real_axes(_of(df, "eval", arm)) for _, df in seeded]
            rows = {k.name: [_of(df, k.name, arm) for _, df in seeded] for k in KINDS.values() if "arm" in k.keys}
            out.append(dict(label=arm if len(groups) == 1 else f"{arm} · {gname}", arm=arm,
                            source=str(evals[0]["source"].iloc[0]), init=key_text(evals[0].get("init")),
                            evals=evals, pools=rows["pool"],
                            seeds=[config["run"].get("seed") for config, _ in seeded], rows=rows))
    return out


def _lwm_series(groups) -> list[dict]:
    """One entry per experiment whose runs measured an LWM: per seed its rows of every kind without an arm."""
    out = []
    for gname, runs in groups:
        rows = {k.name: [_of(df, k.name) for _, df in runs] for k in KINDS.values() if "arm" not in k.keys}
        if any(len(f) for frames in rows.values() for f in frames):
            out.append(dict(label="LWM" if len(groups) == 1 else f"LWM · {gname}", arm=None, source="lwm",
                            seeds=[c["run"].get("seed") for c, _ in runs], rows=rows))
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


def detail_panels(all_series: list[dict], lwm: list[dict] = ()) -> list[tuple[Kind, str, list[str], list[dict]]]:
    """(kind, title, measures, the series that own the kind) of each panel after the headline ones: every
    declared measure with data in some run; kinds with an arm belong to the arm series, the others to the LWM."""
    out = []
    for kind in KINDS.values():
        owners = all_series if "arm" in kind.keys else list(lwm)
        frames = [curve_rows(kind, f) for s in owners for f in s["rows"][kind.name]]
        every = pd.concat(frames) if frames else pd.DataFrame()
        out += [(kind, title, names, owners) for title, names in measure_panels(kind, every)]
    return out


def plot(all_series: list[dict], path: Path, success_target: float | None, lwm: list[dict] = ()) -> None:
    """The sim-vs-real panels, then a panel per declared measure with data (agentworld/metrics.py): each arm
    of each experiment (and each experiment's LWM) as its seeds' mean with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    entries = list(all_series) + list(lwm)
    for k, s in enumerate(entries):
        s["color"], s["style"] = palette[k % len(palette)], "-" if s["source"] in ("real", "lwm") else "--"
    headline = [(m, x) for m in headline_measures() for x in X_AXES]
    details = detail_panels(all_series, lwm)
    n, rows_n = len(headline) + len(details), math.ceil((len(headline) + len(details)) / COLUMNS)
    fig, axes = plt.subplots(rows_n, COLUMNS, figsize=(5.7 * COLUMNS, 4.3 * rows_n + 1.2), squeeze=False)
    axes = list(axes.ravel())
    for ax, (measure, x) in zip(axes, headline):
        _draw_headline(ax, all_series, measure, x, success_target)
    for ax, panel in zip(axes[len(headline):], details):
        _draw_measures(ax, *panel)
    for ax in axes[:n]:
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.axis("off")
    # one legend for all panels: every panel draws the same series in the same colours
    handles = [Line2D([], [], color=s["color"], ls=s["style"], label=_series_label(s)) for s in entries]
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=10, frameon=False)
    height = fig.get_figheight()  # inches: room for the title above and the legend below
    fig.suptitle("AgentWorld: arms compared across runs, all scored in the real env (solid: trains on real "
                 "steps, dashed: trains in the LWM)", fontsize=13, y=1 - 0.15 / height)
    fig.tight_layout(rect=(0, 0.35 * ((len(handles) + 2) // 3) / height, 1, 1 - 0.45 / height))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _series_label(s: dict) -> str:
    n = len(s["seeds"])
    start = f", from {s['init']}" if s.get("init") else ""
    return (f"{s['label']} ({s['source']}{start}, {n} seed{'s' if n > 1 else ''})"
            + (": mean, band min-max" if n > 1 else ""))


def _draw_headline(ax, all_series: list[dict], measure: tuple[str, str], x: tuple[str, str],
                   success_target: float | None) -> None:
    (name, ylabel), (x, xlabel) = measure, x
    for s in all_series:
        _draw_band(ax, [e[[x, name]].set_axis(["x", "y"], axis=1) for e in s["evals"]], s["color"], s["style"], "o")
    if name == "success":
        if success_target is not None:
            ax.axhline(success_target, ls=":", color="grey")
            ax.annotate(f"target {success_target:g}", (1, success_target), xycoords=("axes fraction", "data"),
                        xytext=(-3, 3), textcoords="offset points", ha="right", fontsize=8, color="grey")
    if KINDS["eval"].measures[name].fmt == "fraction":
        ax.set_ylim(-0.05, 1.05)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{ylabel} vs {xlabel}")


def _draw_measures(ax, kind: Kind, title: str, names: list[str], owners: list[dict]) -> None:
    """The measures `names` of `kind` for every series that has them; lines within a series (stages,
    controls) and measures differ by marker, named in the panel's legend."""
    import matplotlib.ticker
    from matplotlib.lines import Line2D

    legend, xlabel = {}, kind.x_label()
    for s in owners:
        per_line: dict[str, list] = {}  # the series' own lines (e.g. LWM training stages), each over its seeds
        for f in s["rows"][kind.name]:
            for keys, r in series_of(kind, curve_rows(kind, f), leave_out=("arm",)):
                per_line.setdefault(" · ".join(str(v) for v in keys.values()), []).append(r)
        for i, (line, frames) in enumerate(per_line.items()):
            for m, name in enumerate(names):
                curves = []
                for r in frames:
                    if name not in r:  # a run that never wrote this measure
                        continue
                    xs, xlabel = x_values(kind, r)
                    curves.append(pd.DataFrame({"x": xs.to_numpy(float), "y": r[name].to_numpy(float)}).dropna())
                curves = [c for c in curves if len(c)]
                if not curves:
                    continue
                marker = MARKERS[(i * len(names) + m) % len(MARKERS)]
                _draw_band(ax, curves, s["color"], s["style"], marker, step=kind.measures[name].step)
                text = ": ".join(p for p in (line, kind.measures[name].label if len(names) > 1 else "") if p)
                if text:
                    legend.setdefault(text, Line2D([], [], color="grey", marker=marker, ms=4))
    measures = [kind.measures[n] for n in names]
    ax.set(xlabel=xlabel, ylabel=measures[0].label if len(measures) == 1 else title, title=f"{kind.title}: {title}")
    if all(m.fmt == "fraction" for m in measures):
        ax.set_ylim(-0.05, 1.05)
    if all(m.fmt == "count" for m in measures):
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if legend:
        ax.legend(legend.values(), legend.keys(), fontsize=8)


def _draw_band(ax, curves: list[pd.DataFrame], color: str, style: str, marker: str, step: bool = False) -> None:
    """Curves (columns x, y) of one series, one per seed: every point for one seed, or for an axis the series
    does not move along (a sim arm's real steps); else the mean over seeds with a min-max band."""
    draw = partial(ax.step, where="post") if step else ax.plot
    if len(curves) == 1 or all(c["x"].nunique() == 1 for c in curves):
        for c in curves:
            draw(c["x"], c["y"], ls=style, marker=marker, ms=3, color=color)
        return
    grid, mean, lo, hi = band(curves, "x", "y")
    draw(grid, mean, ls=style, marker=marker, ms=3, markevery=10, color=color)
    ax.fill_between(grid, lo, hi, color=color, alpha=0.18, lw=0, step="post" if step else None)


def _final(s: dict) -> dict:
    """The series at its seeds' last real-env evaluation, formatted for reading."""
    last = [e.iloc[-1] for e in s["evals"]]

    def stat(key, how):
        v = np.array([float(r[key]) for r in last])
        spread = v.std() if v.std() > 1e-9 * max(1.0, abs(v.mean())) else 0.0  # not float noise of equal seeds
        if how == "min":  # x_wall is in minutes already
            return f"{v.mean():,.1f}" + (f" ± {spread:,.1f}" if len(v) > 1 else "") + " min"
        return fmt(v.mean(), how) + (f" ± {fmt(spread, how)}" if len(v) > 1 else "")

    return {"arm": s["label"], "trains in": s["source"], "starts from": fmt(s.get("init")),
            "seeds": ", ".join(str(x) for x in s["seeds"]),
            "final success": stat("success", "fraction"), "final return": stat("return", "number"),
            "real env steps": stat("x_real", "count"), "total env steps": stat("x_total", "count"),
            "wall-clock": stat("x_wall", "min")}


def compare(run_dirs, out) -> Path:
    """Write compare.png and compare.html to `out`; returns the HTML's path."""
    if not run_dirs:
        raise ValueError("give at least one run dir")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups = _groups(run_dirs)
    all_series = _arm_series(groups)
    if not all_series:
        raise ValueError("no eval rows in any of the run dirs")
    targets = {(yaml.safe_load((Path(d) / "config.yaml").read_text()).get("eval") or {}).get("success_target")
               for d in run_dirs}
    plot(all_series, out / "compare.png", targets.pop() if len(targets) == 1 else None, _lwm_series(groups))
    rows = [_final(s) for s in all_series]
    e = html.escape
    table = "<tr>" + "".join(f"<th>{e(k)}</th>" for k in rows[0]) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td class='{'txt' if k in ('arm', 'trains in', 'starts from') else 'num'}'>{e(str(v))}</td>"
                         for k, v in r.items()) + "</tr>" for r in rows)
    runs = "".join(f"<li>{e(str(Path(d).resolve()))}</li>" for d in run_dirs)
    png = base64.b64encode((out / "compare.png").read_bytes()).decode()
    (out / "compare.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>AgentWorld: runs compared</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
        "th{background:#f3f3f3}td{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}"
        "table{border-collapse:collapse;margin-bottom:1em}</style></head><body>"
        "<h1>AgentWorld: runs compared</h1><h2>At the last real-env evaluation (mean ± std over seeds)</h2>"
        f"<table>{table}</table><img src='data:image/png;base64,{png}' style='max-width:100%'>"
        f"<h2>Run dirs</h2><ul>{runs}</ul></body></html>")
    return out / "compare.html"
