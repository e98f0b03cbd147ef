"""The metric rows' contract (agentworld/metrics.py): one declaration per kind, checked where a row is built,
read by the report and the tracker."""

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from agentworld.config import load_config
from agentworld.metrics import KINDS, TIME, Measure, MetricError, metric_row
from agentworld.tracking import Tracker, _scalars
from agentworld.worldmodel.fidelity import fidelity

QUICKSTART = str(Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml")


def eval_row(**extra):
    return metric_row("eval", arm="real", source="real", update=5, real_steps=900, sim_steps=0, wm_real_steps=0,
                      wall_time=60.0, success=0.75, **{"return": 0.5}, episodes=32, length=7.5, policy_version=5,
                      **extra)


def test_a_row_is_the_plain_dict_the_producer_passed():
    row = eval_row()
    assert list(row)[:3] == ["kind", "arm", "source"] and row["kind"] == "eval" and row["return"] == 0.5
    assert type(row) is dict


def test_an_undeclared_column_is_an_error():
    with pytest.raises(MetricError, match=r"eval row: undeclared column\(s\) grad_norm.*agentworld/metrics.py"):
        eval_row(grad_norm=1.0)
    with pytest.raises(MetricError, match="unknown metric kind 'evaluation'"):
        metric_row("evaluation", wall_time=1.0)


def test_keys_and_the_x_are_required_measures_are_not():
    with pytest.raises(MetricError, match="missing arm"):
        metric_row("pool", source="real", wall_time=1.0, actors=1, decision="hold", reason="steady")
    with pytest.raises(MetricError, match="missing train_step"):
        metric_row("wm", stage="sft", heldout=True, wall_time=1.0, exact_match=0.5)
    row = metric_row("pool", arm="a", source="real", wall_time=1.0, actors=1, decision="start", reason="1 actor(s)",
                     learner_starved=None)
    assert row["learner_starved"] is None  # a measure may be missing: the pool's first row has no demand yet
    metric_row("control", arm="a", control="all", wall_time=15.0, steps=3, obeyed=2, obedience=0.6)  # no `final`


def test_keys_are_text_or_flags_and_measures_numbers():
    with pytest.raises(MetricError, match="key arm is text"):
        metric_row("hybrid", arm=3, source="hybrid", wall_time=1.0)
    with pytest.raises(MetricError, match="fidelity is a number"):
        metric_row("hybrid", arm="h", source="hybrid", wall_time=1.0, fidelity="high")
    with pytest.raises(MetricError, match="steps is a number"):
        metric_row("hybrid", arm="h", source="hybrid", wall_time=1.0, steps=True)


def test_the_declarations_cover_what_the_producers_measure():
    # the LWM learner logs fidelity()'s keys on every `wm` row
    assert set(fidelity([], [])) <= set(KINDS["wm"].measures)
    for kind in KINDS.values():
        assert not set(kind.keys) & set(kind.measures), kind.name
        assert kind.x == TIME or kind.x in kind.measures, kind.name
        for title, names in kind.panels().items():
            assert names and all(kind.measures[n].plot for n in names)


def test_the_tracker_logs_declared_measures_at_the_declared_step(tmp_path):
    row = metric_row("wm", stage="sft", heldout=True, wm_version=2, train_step=250, wall_time=30.0, exact_match=0.5,
                     n=64)
    assert _scalars(row) == {"wm_version": 2.0, "train_step": 250.0, "exact_match": 0.5, "n": 64.0}
    pool = metric_row("pool", arm="a", source="real", wall_time=1.0, actors=2, decision="grow", reason="x",
                      learner_starved=float("nan"))
    assert _scalars(pool) == {"actors": 2.0}  # keys, the row's time and missing values are no scalars

    cfg = load_config(QUICKSTART, ["tracking.tensorboard=false", "tracking.mlflow=false"])
    tracker = Tracker(tmp_path, cfg.tracking, OmegaConf.to_container(cfg), t0=0.0)  # writes nowhere
    assert tracker._step(row) == 250 and tracker._step(eval_row()) == 5
    assert [tracker._step(pool), tracker._step(pool)] == [0, 1]  # drawn against time: counted per (kind, arm)


def test_a_new_declared_measure_is_accepted_and_tracked(monkeypatch):
    train = KINDS["train"]
    monkeypatch.setitem(KINDS, "train", dataclasses.replace(
        train, measures=dict(train.measures, grad_norm=Measure("gradient norm"))))
    row = metric_row("train", arm="a", source="sim", update=3, wall_time=9.0, loss=0.1, grad_norm=2.5)
    assert _scalars(row)["grad_norm"] == 2.5
