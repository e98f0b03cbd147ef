"""The run report: metrics.parquet (the canonical record), curves.png, report.html and summary.json.

curves.png starts with the sim-vs-real panels (each headline measure of the `eval` rows against real env steps,
simulated steps, all steps and wall-clock), then draws one panel per declared measure (agentworld/metrics.py)
of each kind of row that has data, in a computed grid. report.html puts the summary in tables for people."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from agentworld.metrics import KINDS, TIME, Kind

# The headline panels' x axes, derived from the eval rows by `sim_vs_real_axes`.
HEADLINE_X = [("x_real", "real env steps (own + LWM data)"), ("sim_steps", "simulated env steps"),
              ("x_total", "all env steps (real + simulated)"), ("x_wall", "wall-clock (min)")]
COLUMNS = 4  # panels per row of curves.png
MARKERS = "osD^vP*X"  # tell apart the measures of a panel that share a colour
HOW_TO_READ = ("Every arm is scored in the real env. Solid: trains on real steps; dashed: trains in the LWM. "
               "Real env steps of LWM-based arms include the LWM's data budget.")


def _num(x):
    """JSON-safe number: NaN and missing become None."""
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else (int(x) if x.is_integer() and abs(x) < 2**53 else x)


def key_text(column: pd.Series | None) -> str | None:
    """A text key's value in an arm's rows (its first non-null one), or None."""
    values = column.dropna() if column is not None else ()
    return str(values.iloc[0]) if len(values) else None


def load_metrics(run_dir) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / "metrics.parquet")


def _rows(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    return df[df["kind"] == kind] if "kind" in df else df.iloc[0:0]


def summarize(df: pd.DataFrame, config: dict | None, success_target: float) -> dict:
    evals, wm = _rows(df, "eval"), _rows(df, "wm")
    arms = {}
    # not pool decisions; none at all when the run failed before any learner row
    learner_rows = df[df["kind"].isin(("eval", "train"))] if "arm" in df else pd.DataFrame(columns=["arm"])
    for arm in sorted(set(learner_rows["arm"].dropna())):
        e = evals[evals["arm"] == arm].sort_values("wall_time")
        every = learner_rows[learner_rows["arm"] == arm].sort_values("wall_time")
        last = every.iloc[-1]
        reached = e[e["success"] >= success_target]
        first = reached.iloc[0] if len(reached) else None
        arms[arm] = {
            "source": str(last.get("source")),
            "init": key_text(every.get("init")),
            "action_mode": key_text(every.get("action_mode")),  # choice | generate
            "eval_env": key_text(e.get("eval_env")),  # the real env its evaluations played
            "final_success": _num(e["success"].iloc[-1]) if len(e) else None,
            "final_return": _num(e["return"].iloc[-1]) if len(e) else None,
            "best_success": _num(e["success"].max()) if len(e) else None,
            "final_parse_rate": _num(e["parse_rate"].iloc[-1]) if len(e) and "parse_rate" in e else None,
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
    last = _last_by_domain(df)
    if len(last):  # each domain's main metric for the LWM beside copy and retrieve
        lwm["by_domain"] = {}
        for _, r in last.iterrows():
            d = lwm["by_domain"].setdefault(str(r["domain"]), {"main_metric": str(r["main_metric"]), "n": _num(r["n"])})
            d[str(r["predictor"])] = _num(r["main"])
    if len(wm) and "obedience" in wm and not pd.isna(wm.iloc[-1]["obedience"]):  # LWM trained with hindsight controls
        lwm["final"].update(obedience=_num(wm.iloc[-1]["obedience"]),
                            obedience_without_control=_num(wm.iloc[-1]["obedience_without_control"]))
    wc = _rows(df, "wm_control")
    if len(wc):  # LWM trained with perturbation or fictional controls: the last measurement, per control
        last_c = wc[wc["train_step"] == wc["train_step"].max()]
        lwm["by_control"] = {str(r["control"]): {"obedience": _num(r["obedience"]), "n": _num(r["n"]),
                                                 "obedience_without_control": _num(r["obedience_without_control"])}
                             for _, r in last_c.iterrows()}
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
    for _, r in _rows(df, "robust").iterrows():  # arms[i].fault_env: scored once more under real faults
        arms.setdefault(str(r["arm"]), {})["under_faults"] = {
            "eval_env": str(r["eval_env"]), "success": _num(r["success"]), "return": _num(r["return"]),
            "episodes": _num(r["episodes"]), "faults": _num(r["faults"]), "steps": _num(r["episodes"] * r["length"])}
    run = (config or {}).get("run", {}).get("name")
    faults, failures, interrupted = _faults(df)
    for arm, why in failures.items():
        if arm in arms:
            arms[arm]["failed"] = why
    status = "interrupted" if interrupted else "failed" if failures else "completed"
    return {"run": run, "status": status, "signal": interrupted, "failures": failures, "faults": faults,
            "success_target": success_target, "arms": arms, "lwm": lwm}


FAULT_KEYS = ("wall_time", "arm", "what", "who", "cause", "action", "updates_lost", "recovery_s")


def _faults(df: pd.DataFrame) -> tuple[list[dict], dict, int | None]:
    """The run's `fault` rows in time order (dead actors replaced, learners restarted, arms failed, a stop by signal);
    the failed arms with why; the signal that stopped the run, if one did."""
    rows = _rows(df, "fault")
    rows = rows.sort_values("wall_time") if len(rows) else rows
    events = [{k: (_num(r.get(k)) if k in ("wall_time", "updates_lost", "recovery_s") else
                   (None if pd.isna(r.get(k)) else str(r.get(k)))) for k in FAULT_KEYS if k in r}
              for _, r in rows.iterrows()]
    failures = {e.get("arm") or "run": e["cause"] for e in events if e.get("action") in ("arm failed", "run failed")}
    stop = rows[rows["action"] == "interrupted"] if len(rows) else rows
    return events, failures, (int(stop["signal"].iloc[-1]) if len(stop) else None)


# ------------------------------------------------------------------------------------------------
# Numbers for people

def fmt(value, how: str = "number") -> str:
    """`value` for reading: fractions to three significant digits, counts with thousands separators, seconds
    as minutes; flags as yes/no; missing as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if how == "seconds":
        return f"{value / 60:,.1f} min"
    if how == "count":
        return f"{value:,.0f}"
    if how == "fraction":
        return f"{value:#.3g}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:#.3g}".rstrip(".")


def to_target_words(t: dict | None) -> str:
    """An arm's summary `to_target` in words: when it first reached the success target, and at what cost."""
    if t is None:
        return "not reached"
    parts = [f"update {fmt(t['update'], 'count')}", f"{fmt(t['real_env_steps'], 'count')} real env steps"]
    if t.get("sim_steps"):
        parts.append(f"{fmt(t['sim_steps'], 'count')} simulated steps")
    return " · ".join(parts + [fmt(t["wall_clock_s"], "seconds")])


# ------------------------------------------------------------------------------------------------
# Which panels: the headline ones, then the declared measures that have data

def sim_vs_real_axes(evals: pd.DataFrame) -> pd.DataFrame:
    """Eval rows with the headline x axes: real env steps (own + the LWM's data), all steps, wall-clock in min."""
    needed = ("real_steps", "wm_real_steps", "sim_steps", TIME)  # absent when a run failed before any eval
    evals = evals.reindex(columns=[*evals.columns, *(c for c in needed if c not in evals)])
    evals["x_real"] = evals["real_steps"].fillna(0) + evals["wm_real_steps"].fillna(0)
    evals["x_total"] = evals["x_real"] + evals["sim_steps"].fillna(0)
    evals["x_wall"] = evals[TIME] / 60
    return evals


def headline_measures() -> list[tuple[str, str]]:
    return [(name, m.label) for name, m in KINDS["eval"].measures.items() if m.headline]


def _has(rows: pd.DataFrame, column: str) -> bool:
    return column in rows and rows[column].notna().any()


def curve_rows(kind: Kind, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows that are points of curves: not the end-of-run totals."""
    if kind.totals and kind.totals in rows:
        return rows[rows[kind.totals] != True]  # noqa: E712  (NaN on curve rows)
    return rows


def total_rows(kind: Kind, rows: pd.DataFrame) -> pd.DataFrame:
    if kind.totals and kind.totals in rows:
        return rows[rows[kind.totals] == True]  # noqa: E712
    return rows.iloc[0:0]


def measure_panels(kind: Kind, rows: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(title, measures with data) of each of the kind's panels that has any data in `rows`."""
    if not len(rows) or (kind.drawn is not None and not kind.drawn(rows)):
        return []
    out = []
    for title, names in kind.panels().items():
        names = [n for n in names if _has(rows, n)]
        if names:
            out.append((title, names))
    return out


def x_values(kind: Kind, rows: pd.DataFrame) -> tuple[pd.Series, str]:
    """The kind's x for `rows` and its label: wall-clock in minutes, or the kind's counter."""
    if kind.x != TIME and kind.x in rows:
        return rows[kind.x], kind.x_label()
    return rows[TIME] / 60, "wall-clock (min)"


def series_of(kind: Kind, rows: pd.DataFrame, leave_out: tuple = ()) -> list[tuple[dict, pd.DataFrame]]:
    """({key: value}, rows) of each line: the rows split by the kind's series keys (arm, stage, control...)."""
    keys = [k for k in kind.series_keys() if k in rows and k not in leave_out]
    if not keys:
        return [({}, rows.sort_values(TIME))]
    return [(dict(zip(keys, values if isinstance(values, tuple) else (values,))), r.sort_values(TIME))
            for values, r in rows.groupby(keys, dropna=False, sort=True)]


def _line_style(rows: pd.DataFrame) -> str:
    """Solid for rows of arms that train on real steps, dashed for those that train in the LWM."""
    return "--" if "source" in rows and rows["source"].notna().any() and (rows["source"] != "real").any() else "-"


class Panel(NamedTuple):
    kind: Kind
    title: str
    names: list[str]  # its measures
    rows: pd.DataFrame
    totals: bool  # end-of-run totals (bars), not curves


def detail_panels(df: pd.DataFrame) -> list[Panel]:
    """The panels after the headline ones: each kind's (in declaration order) that have data."""
    out = []
    for kind in KINDS.values():
        rows = _rows(df, kind.name)
        for totals, part in ((False, curve_rows(kind, rows)), (True, total_rows(kind, rows))):
            out += [Panel(kind, title, names, part, totals) for title, names in measure_panels(kind, part)]
    return out


# ------------------------------------------------------------------------------------------------
# curves.png: colour is the arm's in every panel (the legend at the top says which); a panel's own legend
# names only what the arm does not: its measures, stages, controls.

def plot_curves(df: pd.DataFrame, path: Path, success_target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = sim_vs_real_axes(_rows(df, "eval"))
    colors = _Colors(df, plt.rcParams["axes.prop_cycle"].by_key()["color"])
    headline = [(m, x) for m in headline_measures() for x in HEADLINE_X]
    details = detail_panels(df)
    n, rows_n = len(headline) + len(details), math.ceil((len(headline) + len(details)) / COLUMNS)
    fig, axes = plt.subplots(rows_n, COLUMNS, figsize=(4.5 * COLUMNS, 3.7 * rows_n + 1.2), squeeze=False)
    axes = list(axes.ravel())
    for ax, (measure, x) in zip(axes, headline):
        _draw_headline(ax, evals, measure, x, colors, success_target)
    for ax, panel in zip(axes[len(headline):], details):
        (_draw_totals if panel.totals else _draw_curves)(ax, panel, colors)
    for ax in axes[:n]:
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.axis("off")
    height = fig.get_figheight()  # inches: room for the title and the arms' legend above the panels
    fig.suptitle(f"AgentWorld: sim-vs-real learning curves\n{HOW_TO_READ}", fontsize=12, y=1 - 0.1 / height)
    if colors.arm:
        fig.legend(handles=colors.arm_handles(df), loc="upper center", ncol=min(6, len(colors.arm)), fontsize=10,
                   frameon=False, bbox_to_anchor=(0.5, 1 - 0.55 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / height))
    fig.savefig(path, dpi=80)
    plt.close(fig)


class _Colors:
    """One colour per arm across all panels (evaluated arms first, by name); the other colours of the cycle
    tell apart measures, stages and controls where no arm does."""

    def __init__(self, df: pd.DataFrame, palette: list[str]):
        evaluated = sorted(set(_rows(df, "eval")["arm"].dropna())) if "arm" in df else []
        others = sorted(set(df["arm"].dropna()) - set(evaluated)) if "arm" in df else []
        self.arm = {arm: palette[k % len(palette)] for k, arm in enumerate(evaluated + others)}
        self.free = [c for c in palette if c not in self.arm.values()] or palette

    def other(self, k: int) -> str:
        return self.free[k % len(self.free)]

    def arm_handles(self, df: pd.DataFrame) -> list:
        from matplotlib.lines import Line2D

        by_arm = df.dropna(subset=["arm"]).groupby("arm")
        sources = by_arm["source"].first() if "source" in df else {}
        inits = by_arm["init"].first().dropna() if "init" in df else {}  # set on the agent learner's rows
        return [Line2D([], [], color=c, ls="-" if sources.get(arm) == "real" else "--", marker="o", ms=4,
                       label=f"{arm} (trains in {sources.get(arm, '?')}{f', from {inits[arm]}' if arm in inits else ''})")
                for arm, c in self.arm.items()]


def _draw_headline(ax, evals: pd.DataFrame, measure: tuple[str, str], x: tuple[str, str], colors: _Colors,
                   success_target: float) -> None:
    (name, label), (x, xlabel) = measure, x
    for arm, e in evals.groupby("arm", sort=True) if len(evals) else []:
        e = e.sort_values(TIME)
        ax.plot(e[x], e[name], _line_style(e), marker="o", ms=3, color=colors.arm[arm])
    if KINDS["eval"].measures[name].fmt == "fraction":
        ax.set_ylim(-0.05, 1.05)
    if name == "success":
        ax.axhline(success_target, ls=":", color="grey")
        ax.annotate(f"target {success_target:g}", (1, success_target), xycoords=("axes fraction", "data"),
                    xytext=(-3, 3), textcoords="offset points", ha="right", fontsize=8, color="grey")
    ax.set(xlabel=xlabel, ylabel=label)
    ax.set_title(f"{label} vs {xlabel}", fontsize=10)


def _draw_curves(ax, panel: Panel, colors: _Colors) -> None:
    """The panel's measures over its kind's x: a line per series and measure. Colour is the arm's, markers
    tell the measures apart; a panel of a single series colours its measures instead."""
    import matplotlib.ticker

    kind, title, names, rows = panel.kind, panel.title, panel.names, panel.rows
    lines = series_of(kind, rows)
    single = len(lines) == 1
    legend = {}
    for s, (keys, r) in enumerate(lines):
        xs, xlabel = x_values(kind, r)
        arm, style = keys.get("arm"), _line_style(r)
        arm = arm if isinstance(arm, str) else None  # rows without an arm group under NaN
        for m, name in enumerate(names):
            y = r[name]
            ok = y.notna()
            if not ok.any():
                continue
            by_arm = arm is not None and not (single and len(names) > 1)
            text = _legend_text(keys, kind.measures[name].label if len(names) > 1 else "", with_arm=not by_arm)
            color = colors.arm[arm] if by_arm else colors.other(s * len(names) + m)
            marker = MARKERS[m % len(MARKERS)] if len(names) > 1 else "o"
            draw = ax.step if kind.measures[name].step else ax.plot
            extra = dict(where="post") if kind.measures[name].step else {}
            (line,) = draw(xs[ok], y[ok], ls=style, marker=marker, ms=3, markevery=max(1, int(ok.sum()) // 15),
                           lw=1.2, color=color, **extra)
            if text:  # an arm's line needs no entry of its own: the figure's legend has it
                legend.setdefault(text, _grey(line) if by_arm and len(lines) > 1 else line)
    _decorate(ax, kind, title, names, xlabel)
    if all(kind.measures[n].fmt == "count" for n in names):
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if legend:
        ax.legend(legend.values(), legend.keys(), fontsize=8)


def _draw_totals(ax, panel: Panel, colors: _Colors) -> None:
    """End-of-run totals as bars: a group per `totals_by` value (e.g. per control), a bar per series and measure."""
    kind, title, names, rows = panel.kind, panel.title, panel.names, panel.rows
    by = kind.totals_by
    cats = sorted(set(rows[by].dropna()), key=lambda c: (c != "all", c))  # "all" first
    bars = [(keys, r, name) for keys, r in series_of(kind, rows, leave_out=(by,)) for name in names
            if r[name].notna().any()]
    width = 0.8 / len(bars)
    legend = {}
    for b, (keys, r, name) in enumerate(bars):
        values = r.set_index(by)[name]
        shade = 1.0 - 0.45 * (names.index(name) % 2)  # a second measure: the same colour, lighter
        color = colors.arm.get(keys.get("arm")) or colors.other(b)
        bar = ax.bar([i + b * width for i in range(len(cats))], [values.get(c, 0.0) for c in cats], width,
                     color=color, alpha=shade)
        if len(names) > 1:
            legend.setdefault(kind.measures[name].label, bar)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))], cats, fontsize=8)
    _decorate(ax, kind, title, names, None, suffix=f" by {by}, end of run")
    if legend:
        ax.legend(legend.values(), legend.keys(), fontsize=8)


def _legend_text(keys: dict, measure: str, with_arm: bool) -> str:
    """What a line is: its keys (the arm only where its colour does not say it; stage, control) and its measure."""
    names = " · ".join(str(v) for k, v in keys.items() if with_arm or k != "arm")
    return ": ".join(p for p in (names, measure) if p)


def _grey(line):
    """A legend handle with the line's style and marker but no arm colour: it stands for every arm's line."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color="grey", ls="-", marker=line.get_marker(), ms=4)


def _decorate(ax, kind: Kind, title: str, names: list[str], xlabel: str | None, suffix: str = "") -> None:
    measures = [kind.measures[n] for n in names]
    ax.set_title(f"{kind.title}: {title}{suffix}", fontsize=10)
    ax.set_ylabel(measures[0].label if len(measures) == 1 else title)
    if xlabel:
        ax.set_xlabel(xlabel)
    if all(m.fmt == "fraction" for m in measures):
        ax.set_ylim(-0.05, 1.05)


# ------------------------------------------------------------------------------------------------
# report.html

def _table(header: list[str], rows: list[list], text: int | set[int] = 1) -> str:
    """An HTML table of formatted cells; the `text` columns (the first `text` ones, or those indices) are
    left-aligned words, the others right-aligned numbers."""
    e = html.escape
    text = set(range(text)) if isinstance(text, int) else text
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class='{'txt' if i in text else 'num'}'>{e(str(v))}</td>"
                                     for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _arms_html(summary: dict) -> str:
    target = summary["success_target"]
    rows = [[name, a["source"], fmt(a.get("init")), fmt(a.get("action_mode")), fmt(a.get("eval_env")), fmt(a["final_success"], "fraction"),
             fmt(a["best_success"], "fraction"), fmt(a["final_return"]), fmt(a.get("final_parse_rate"), "fraction"),
             fmt(a["real_steps"], "count"), fmt(a["sim_steps"], "count"), fmt(a["wm_real_steps"], "count"),
             fmt(a["updates"], "count"), fmt(a["wall_clock_s"], "seconds"), to_target_words(a["to_target"])]
            for name, a in summary["arms"].items() if "source" in a]  # not an arm known only from hybrid/control rows
    header = ["arm", "trains in", "starts from", "acts by", "scored in", "final success", "best success", "final return", "parse rate",
              "own real env steps", "simulated steps", "LWM data steps", "updates", "wall-clock",
              f"first success ≥ {target:g}"]
    return (f"<h2>Arms, scored in the real env (target success {target:g})</h2>"
            + _table(header, rows, text={0, 1, 2, 3, 4, len(header) - 1})
            + "<p>Real env steps in “first success” count the arm's own and the LWM's data. Parse rate: the share of "
              "the last evaluation's actions the real env could parse.</p>")


def _hybrid_html(summary: dict) -> str:
    rows = [[name, fmt(h["final_fidelity"], "fraction"), fmt(h["min_fidelity"], "fraction"),
             fmt(h["match_rate"], "fraction"), fmt(h["routed_steps"], "count"), fmt(h["shadow_steps"], "count"),
             fmt(h["sim_steps"], "count"), fmt(h["scored"], "count"), f"{h['routed_bins']} of {h['bins']}"]
            for name, a in summary["arms"].items() if (h := a.get("hybrid"))]
    if not rows:
        return ""
    header = ["arm", "live fidelity at the end", "lowest live fidelity", "shadow match rate", "routed steps",
              "shadow steps", "simulated steps", "shadow-scored steps", "bins with routing"]
    return ("<h2>Hybrid arms: live fidelity and routing to the real env</h2>" + _table(header, rows)
            + "<p>Live fidelity: the gate's share of shadow-executed steps the LWM predicted exactly. The "
              "<code>hybrid</code> rows of metrics.parquet, and their panels below, give both over time.</p>")


def _run_faults_html(summary: dict) -> str:
    """How the run ended, and every fault it met on the way."""
    head = {"completed": "", "failed": f"<p><b>Run status: failed</b>: {len(summary['failures'])} arm(s) failed.</p>",
            "interrupted": "<p><b>Run status: interrupted</b> by a signal; the figures are partial. Rerunning the same "
                           "command resumes every arm from its last checkpoint.</p>"}[summary["status"]]
    if not summary["faults"]:
        return head
    rows = [[f"{(e.get('wall_time') or 0) / 60:.1f} min", e.get("arm") or "-", e.get("what") or "-", e.get("who") or "-",
             e.get("action") or "-", fmt(e.get("updates_lost"), "count"),
             "–" if e.get("recovery_s") is None else f"{e['recovery_s']:.1f} s",
             (e.get("cause") or "")[:160]] for e in summary["faults"]]
    return (head + "<h2>Faults</h2>"
            + _table(["when", "arm", "what", "who", "what was done", "updates lost", "recovery", "cause"], rows,
                     text={0, 1, 2, 3, 4, 7})
            + "<p><code>fault</code> rows of metrics.parquet: dead rollout actors replaced, dead learners restarted "
              "from their arm's last checkpoint, arms failed (learner errors, restarts used up, no progress for "
              "run.stall_timeout_s).</p>")


def _faults_html(summary: dict) -> str:
    rows = [[name, f["eval_env"], fmt(a.get("final_success"), "fraction"), fmt(f["success"], "fraction"),
             fmt(f["faults"], "count"), fmt(f["steps"], "count")]
            for name, a in summary["arms"].items() if (f := a.get("under_faults"))]
    if not rows:
        return ""
    return ("<h2>Robustness: success under injected real faults</h2>"
            + _table(["arm", "scored in", "final success (no faults)", "success under faults", "steps with a fault",
                      "steps"], rows, text=2)
            + "<p>The trained policy scored once more at the end, in a real env whose fault layer makes a share of "
              "calls really time out or meet a dead server (arms[i].fault_env; <code>robust</code> rows of "
              "metrics.parquet).</p>")


def _controls_html(summary: dict) -> str:
    lwm = [[name, fmt(v["obedience"], "fraction"), fmt(v["obedience_without_control"], "fraction"), fmt(v["n"], "count")]
           for name, v in (summary.get("lwm") or {}).get("by_control", {}).items()]
    head = ("<h2>Controls: the LWM's held-out obedience</h2>"
            + _table(["control", "with the control line", "without it (chance)", "held-out transitions"], lwm, text=1)
            + "<p>Greedy predictions on held-out real transitions, with each control in the prompt and without it "
              "(<code>wm_control</code> rows of metrics.parquet).</p>") if lwm else ""
    rows = []
    for name, a in summary["arms"].items():
        if c := a.get("control"):
            rows.append([name, "all controls", fmt(c["obedience"], "fraction"), fmt(c["controlled_steps"], "count")])
            rows += [[name, control, fmt(v["obedience"], "fraction"), fmt(v["steps"], "count")]
                     for control, v in c["by_control"].items()]
    if not rows:
        return head
    return head + ("<h2>Controls: obedience of the simulator</h2>"
            + _table(["arm", "control", "obedience", "controlled sim steps"], rows, text=2)
            + "<p>Obedience: the share of controlled sim steps whose outcome the labeler confirms "
              "(<code>control</code> rows of metrics.parquet).</p>")


def kind_table(kind: Kind, rows: pd.DataFrame) -> str:
    """Every row of `kind`, in time order, with each declared column that has data, labelled and formatted."""
    keys = [k for k in kind.keys if _has(rows, k)]
    measures = [m for m in kind.measures if _has(rows, m)]
    header = [kind.keys[k].label for k in keys] + [kind.measures[m].label for m in measures] + ["wall-clock"]
    body = [[fmt(r[k]) for k in keys] + [fmt(r[m], kind.measures[m].fmt) for m in measures]
            + [fmt(r[TIME], "seconds")] for _, r in rows.sort_values(TIME).iterrows()]
    return _table(header, body, text=len(keys))


def _last_by_domain(df: pd.DataFrame) -> pd.DataFrame:
    """The `wm_domain` rows of the LWM's last measurement (every predictor, every domain)."""
    rows = _rows(df, "wm_domain")
    return rows[rows["train_step"] == rows["train_step"].max()] if len(rows) else rows


def _lwm_html(summary: dict, df: pd.DataFrame) -> str:
    wm = _rows(df, "wm")
    if not len(wm):
        return "<h2>LWM fidelity on held-out real transitions</h2><p>No LWM measurements in this run.</p>"
    versions = summary["lwm"]["versions"]
    last, horizon = _last_by_domain(df), _rows(df, "wm_horizon")
    if len(last):  # each domain's LWM beside copy and retrieve on the same transitions
        by_domain_html = ("<h3>By domain, beside the baselines (last measurement)</h3>"
                          + kind_table(KINDS["wm_domain"], last.drop(columns=["wm_version", "train_step"])))
    else:
        by_domain_html = ""
    if len(horizon):
        by_domain_html += "<h3>Open loop: fed on its own predictions</h3>" + kind_table(KINDS["wm_horizon"], horizon)
    return ("<h2>LWM fidelity on held-out real transitions</h2>" + kind_table(KINDS["wm"], wm) + by_domain_html
            + f"<p>{versions} version{'s' if versions != 1 else ''} measured (version 0 is the untrained model). "
              "Obedience, when the LWM trains with hindsight controls: the share of held-out counterfactual "
              "controls it follows, with the control line and without it.</p>")


def _config_html(config: dict | None) -> str:
    if not config:
        return ""
    import yaml

    text = yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False, width=110)
    return f"<details><summary><h2>Config</h2></summary><pre>{html.escape(text)}</pre></details>"


def render_html(summary: dict, df: pd.DataFrame, config: dict | None, png: bytes, name: str) -> str:
    title = html.escape(f"AgentWorld report: {summary['run'] or name}")
    image = base64.b64encode(png).decode()
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1500px}h2{font-size:1.2em;margin-top:1.5em}"
        "td,th{border:1px solid #ccc;padding:4px 8px}th{background:#f3f3f3;font-weight:600}"
        "td{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}"
        "table{border-collapse:collapse;margin-bottom:0.5em}p{color:#444;font-size:0.9em}"
        "summary h2{display:inline}</style></head><body>"
        f"<h1>{title}</h1>{_run_faults_html(summary)}{_arms_html(summary)}{_hybrid_html(summary)}"
        f"{_controls_html(summary)}{_faults_html(summary)}"
        f"{_lwm_html(summary, df)}<h2>Curves</h2>"
        f"<img src='data:image/png;base64,{image}' style='max-width:100%'>{_config_html(config)}</body></html>")


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
    page = render_html(summary, df, config, (run_dir / "curves.png").read_bytes(), run_dir.name)
    (run_dir / "report.html").write_text(page)
    return summary
