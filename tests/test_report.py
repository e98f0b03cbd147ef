"""The run report from metric rows of every kind: summary.json stays what it was, curves.png draws each
declared measure that has data, report.html is for people (words and formatted numbers, no JSON)."""

import dataclasses
import re

import pandas as pd
import pytest

from agentworld.metrics import KINDS, Measure, metric_row
from agentworld.report import detail_panels, fmt, summarize, to_target_words, write_report


def every_kind_rows() -> list[dict]:
    """A small run: a real arm, a sim arm with controls and a hybrid arm, an LWM trained with hindsight
    controls, and a pool that scaled; every kind of row, built as the producers build them."""
    rows = [metric_row("wm", wall_time=10.0, wm_version=0, stage="untrained", train_step=0, heldout=True,
                       train_examples=270, exact_match=0.0, edit_similarity=0.1, outcome_accuracy=0.0, n=64),
            metric_row("wm_train", wall_time=20.0, stage="sft", wm_version=0, train_step=25, value=1.5),
            metric_row("wm", wall_time=30.0, wm_version=1, stage="sft", train_step=50, heldout=True,
                       train_examples=270, exact_match=0.75, edit_similarity=0.9, outcome_accuracy=0.8, n=64,
                       obedience=0.6, obedience_without_control=0.1)]
    for step, scale in ((0, 0.5), (50, 1.0)):  # per domain, beside the baselines: summary.json keeps the last step
        for domain, metric, model in (("search", "edit_similarity", 0.6), ("mcp", "field_f1", 0.8)):
            for predictor, main in (("model", model * scale), ("copy", 0.3), ("retrieve", 0.4)):
                rows.append(metric_row("wm_domain", wall_time=10.0 + step, wm_version=step // 50, stage="sft",
                                       train_step=step, heldout=True, domain=domain, predictor=predictor,
                                       main_metric=metric, main=main, n=12))
    for arm, source, init, wm_real, per_update in (("real", "real", "scratch", 0, 650),
                                                   ("sim-controlled", "sim", "lwm", 3038, 0),
                                                   ("hybrid", "hybrid", "cpt", 3038, 100)):
        for u in range(4):
            steps = dict(arm=arm, source=source, init=init, update=u, real_steps=per_update * u,
                         action_mode="generate" if arm == "sim-controlled" else "choice",
                         sim_steps=0 if source == "real" else 400 * u, wm_real_steps=wm_real)
            if u:
                rows.append(metric_row("train", **steps, wall_time=60.0 * u - 1, loss=0.1, mean_reward=0.2 * u,
                                       batch_episodes=32, batch_steps=200, max_staleness_seen=1, wait_s=1.0,
                                       train_s=2.0, parse_rate=0.5 + 0.1 * u))
            success = {"real": 0.3 * u, "sim-controlled": 0.2 * u, "hybrid": 0.25 * u}[arm]
            rows.append(metric_row("eval", **steps, wall_time=60.0 * u, success=success, **{"return": success},
                                   episodes=32, length=8.0, policy_version=u, parse_rate=0.25 * u,
                                   eval_env="heldout" if arm == "real" else None))  # arms[i].eval_env, else unset
    for t, actors, decision in ((0.0, 1, "start"), (60.0, 2, "grow"), (200.0, 0, "stop")):
        rows.append(metric_row("pool", arm="real", source="real", wall_time=t, actors=actors, actors_pending=0,
                               decision=decision, reason="why", learner_starved=0.7 if decision == "grow" else None))
    for b, (routed, fid) in enumerate(((0, 0.5), (40, 0.9))):
        rows.append(metric_row("hybrid", arm="hybrid", source="hybrid", wall_time=15.0 * (b + 1), steps=40,
                               routed_steps=routed, routed_share=routed / 40, fidelity=fid, bin_match_rate=fid,
                               real_steps=10 + routed, routed_steps_total=routed, shadow_steps_total=10,
                               sim_steps=80 - routed, scored_total=20 + routed, matched_total=10 + routed))
    rows += [metric_row("control", arm="sim-controlled", control="all", wall_time=15.0, steps=10, obeyed=6,
                        obedience=0.6, bin_obedience=0.6),
             metric_row("control", arm="sim-controlled", control="all", wall_time=15.0, steps=10, obeyed=6,
                        obedience=0.6, final=True),
             metric_row("control", arm="sim-controlled", control="success", wall_time=15.0, steps=4, obeyed=1,
                        obedience=0.25, final=True),
             metric_row("control", arm="sim-controlled", control="moved", wall_time=15.0, steps=6, obeyed=5,
                        obedience=5 / 6, final=True),
             metric_row("fault", arm="real", source="real", wall_time=90.0, what="rollout actor", who="real0",
                        cause="killed", action="replaced by real1", actors=2),
             metric_row("fault", arm="hybrid", wall_time=100.0, what="learner", who="policy/hybrid", cause="killed",
                        action="restarted from update 2", updates_lost=1, recovery_s=8.0)]
    return rows


EXPECTED_SUMMARY = {
    "run": "every-kind", "success_target": 0.5, "status": "completed", "signal": None, "failures": {},
    "faults": [{"wall_time": 90, "arm": "real", "what": "rollout actor", "who": "real0", "cause": "killed",
                "action": "replaced by real1", "updates_lost": None, "recovery_s": None},
               {"wall_time": 100, "arm": "hybrid", "what": "learner", "who": "policy/hybrid", "cause": "killed",
                "action": "restarted from update 2", "updates_lost": 1, "recovery_s": 8}],
    "arms": {
        "hybrid": {"source": "hybrid", "action_mode": "choice", "init": "cpt", "eval_env": None, "final_success": 0.75, "final_return": 0.75, "best_success": 0.75,
                   "final_parse_rate": 0.75,
                   "real_steps": 300, "sim_steps": 1200, "wm_real_steps": 3038, "wall_clock_s": 180, "updates": 3,
                   "reached_target": True,
                   "to_target": {"real_steps": 200, "sim_steps": 800, "real_env_steps": 3238, "wall_clock_s": 120,
                                 "update": 2},
                   "hybrid": {"final_fidelity": 0.9, "min_fidelity": 0.5, "routed_steps": 40, "shadow_steps": 10,
                              "sim_steps": 40, "scored": 60, "match_rate": 50 / 60, "routed_bins": 1, "bins": 2}},
        "real": {"source": "real", "action_mode": "choice", "init": "scratch", "eval_env": "heldout", "final_success": 0.9, "final_return": 0.9, "best_success": 0.9,
                 "final_parse_rate": 0.75,
                 "real_steps": 1950, "sim_steps": 0, "wm_real_steps": 0, "wall_clock_s": 180, "updates": 3,
                 "reached_target": True,
                 "to_target": {"real_steps": 1300, "sim_steps": 0, "real_env_steps": 1300, "wall_clock_s": 120,
                               "update": 2}},
        "sim-controlled": {"source": "sim", "action_mode": "generate", "init": "lwm", "eval_env": None, "final_success": 0.6, "final_return": 0.6,
                           "best_success": 0.6, "final_parse_rate": 0.75,
                           "real_steps": 0, "sim_steps": 1200, "wm_real_steps": 3038, "wall_clock_s": 180,
                           "updates": 3, "reached_target": True,
                           "to_target": {"real_steps": 0, "sim_steps": 1200, "real_env_steps": 3038,
                                         "wall_clock_s": 180, "update": 3},
                           "control": {"obedience": 0.6, "controlled_steps": 10,
                                       "by_control": {"success": {"obedience": 0.25, "steps": 4},
                                                      "moved": {"obedience": 5 / 6, "steps": 6}}}}},
    "lwm": {"untrained": {"exact_match": 0, "edit_similarity": 0.1, "outcome_accuracy": 0},
            "final": {"exact_match": 0.75, "edit_similarity": 0.9, "outcome_accuracy": 0.8, "wm_version": 1,
                      "train_step": 50, "obedience": 0.6, "obedience_without_control": 0.1},
            "versions": 2,
            "by_domain": {"search": {"main_metric": "edit_similarity", "n": 12, "model": 0.6, "copy": 0.3, "retrieve": 0.4},
                          "mcp": {"main_metric": "field_f1", "n": 12, "model": 0.8, "copy": 0.3, "retrieve": 0.4}}},
}


def test_summarize_on_a_fixed_frame():
    got = summarize(pd.DataFrame(every_kind_rows()), {"run": {"name": "every-kind"}}, 0.5)
    assert got == _approx(EXPECTED_SUMMARY)
    assert list(got["arms"]) == ["hybrid", "real", "sim-controlled"]  # arm order is part of the file


def _approx(x):
    """pytest.approx for the floats of a nested dict."""
    if isinstance(x, dict):
        return {k: _approx(v) for k, v in x.items()}
    return pytest.approx(x) if isinstance(x, float) else x


def test_report_html_is_for_people(tmp_path):
    summary = write_report(tmp_path, every_kind_rows(), {"run": {"name": "every-kind"}, "agent": {"lr": 1e-3}},
                           success_target=0.7)
    page = (tmp_path / "report.html").read_text()
    assert not re.search(r"\{\s*(\"|&quot;|')", page)  # no JSON (or Python) dict anywhere, the config included
    assert summary["arms"]["sim-controlled"]["to_target"] is None
    assert "update 3 · 1,950 real env steps · 3.0 min" in page  # the real arm reached 0.7 at update 3
    assert "update 3 · 3,338 real env steps · 1,200 simulated steps · 3.0 min" in page  # hybrid: own + the LWM's
    assert re.search(r"<td class='txt'>not reached</td>", page)
    assert "<th>starts from</th>" in page and "<td class='txt'>scratch</td>" in page  # each arm's init
    assert "<th>scored in</th>" in page and "<td class='txt'>heldout</td>" in page  # the real env it was scored in
    assert "<th>parse rate</th>" in page and "<td class='num'>0.750</td>" in page
    assert "<td class='num'>0.833</td>" in page  # the hybrid arm's shadow match rate, three significant digits
    assert "<td class='num'>3,038</td>" in page and "0.833333" not in page
    # the LWM's measurements and the obedience per control are tables, labelled as declared
    assert "<th>exact match</th>" in page and "<th>obedience with the control line</th>" in page
    assert re.search(r"<td class='txt'>sim-controlled</td><td class='txt'>moved</td><td class='num'>0.833</td>", page)
    assert "agent:\n  lr: 0.001" in page  # the config as YAML


def test_formats():
    assert [fmt(0.7987, "fraction"), fmt(1, "fraction"), fmt(0.0123456, "fraction")] == ["0.799", "1.00", "0.0123"]
    assert [fmt(5230, "count"), fmt(198.0, "seconds"), fmt(None), fmt(float("nan")), fmt(True)] == \
        ["5,230", "3.3 min", "–", "–", "yes"]
    assert [fmt(-0.12345), fmt(12345.6), fmt(2.0)] == ["-0.123", "12,346", "2.00"]
    assert to_target_words({"update": 10, "real_env_steps": 5230, "sim_steps": 0, "wall_clock_s": 198.0,
                            "real_steps": 5230}) == "update 10 · 5,230 real env steps · 3.3 min"
    assert to_target_words(None) == "not reached"


def test_every_kind_with_data_gets_its_panels():
    titles = {(p.kind.name, p.title, p.totals) for p in detail_panels(pd.DataFrame(every_kind_rows()))}
    assert {("wm", "held-out next-state fidelity", False), ("wm", "obedience to a counterfactual control", False),
            ("wm_train", "loss (cpt, sft) or reward (rl)", False), ("pool", "rollout actors", False),
            ("hybrid", "live fidelity and routing", False), ("control", "obedience", False),
            ("control", "obedience", True), ("train", "time per update (s)", False)} <= titles
    # bookkeeping is not drawn, nor the headline measures (they have the sim-vs-real panels)
    assert not {t for k, t, _ in titles if t in ("policy update", "real-env success", "held-out transitions")}
    # a pool that never scaled gets no panels
    fixed = [r for r in every_kind_rows() if r.get("decision") != "grow"]
    assert not [p for p in detail_panels(pd.DataFrame(fixed)) if p.kind.name == "pool"]


def test_a_new_declared_measure_shows_up_without_editing_the_report(tmp_path, monkeypatch):
    for name, measure in (("train", "grad_norm"), ("wm", "perplexity")):
        kind = KINDS[name]
        monkeypatch.setitem(KINDS, name, dataclasses.replace(
            kind, measures=dict(kind.measures, **{measure: Measure(measure.replace("_", " ") + " (new)")})))
    rows = every_kind_rows() + [
        metric_row("train", arm="real", source="real", update=4, wall_time=241.0, grad_norm=0.5),
        metric_row("wm", stage="sft", heldout=True, train_step=60, wm_version=2, wall_time=40.0, perplexity=3.2)]
    titles = [(p.kind.name, p.title) for p in detail_panels(pd.DataFrame(rows))]
    assert ("train", "grad norm (new)") in titles and ("wm", "perplexity (new)") in titles
    write_report(tmp_path, rows, None)
    assert "<th>perplexity (new)</th>" in (tmp_path / "report.html").read_text()  # the LWM table, from the declaration
