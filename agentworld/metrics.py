"""Metric rows with a contract: every kind of row in metrics.parquet, declared once.

A row stays a plain dict (Ray ships it, pandas frames it, the tracker logs it), but it is built by
`metric_row(kind, **values)`, which refuses a column its kind does not declare. So the rows, the report's
panels and tables (agentworld/report.py, compare.py) and the live tracker (tracking.py) read one declaration
and cannot drift apart.

Adding a metric: declare it in its kind's `measures` below (a label for people, how to read it) and pass it
where the row is built. The report draws it, and the tracker logs it, without further edits."""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Callable, Mapping

TIME = "wall_time"  # every row has it: seconds since the run started


class MetricError(ValueError):
    """A row that breaks its kind's declaration."""


@dataclass(frozen=True)
class Key:
    """A column saying whose row it is or what it is about (text or a flag); never a measurement."""
    label: str
    required: bool = True
    series: bool = True  # rows that differ here are different lines of a curve


@dataclass(frozen=True)
class Measure:
    """A numeric column."""
    label: str
    fmt: str = "number"  # how people read it: fraction (0..1) | count | seconds | number
    panel: str | None = None  # measures of one kind with the same panel share it; None: a panel of its own
    plot: bool = True  # False: bookkeeping (an axis, a constant); still tabled and tracked, not drawn
    step: bool = False  # a level held until the next row, drawn as steps
    headline: bool = False  # drawn in the report's sim-vs-real panels instead of a panel of its own

    def panel_title(self) -> str:
        return self.panel or self.label


@dataclass(frozen=True)
class Kind:
    """One kind of row: what keys it, what it measures, and what its curves run along."""
    name: str
    title: str  # for people: the prefix of its panels' titles
    producer: str  # where its rows are built
    keys: Mapping[str, Key]
    measures: Mapping[str, Measure]
    x: str = TIME  # its curves' x; a counter other than TIME is also its TensorBoard/MLflow step
    totals: str | None = None  # a flag key: rows carrying it are end-of-run totals, not points of a curve
    totals_by: str | None = None  # the key naming what each totals row is about
    drawn: Callable[[Any], bool] | None = field(default=None, compare=False)  # over its rows: worth panels?

    @property
    def columns(self) -> set[str]:
        return {"kind", TIME, *self.keys, *self.measures}

    @property
    def required(self) -> set[str]:
        return {TIME, self.x, *(k for k, key in self.keys.items() if key.required)}

    def series_keys(self) -> list[str]:
        return [k for k, key in self.keys.items() if key.series]

    def panels(self) -> dict[str, list[str]]:
        """Panel title -> its measures, in declaration order; headline and bookkeeping measures left out."""
        out: dict[str, list[str]] = {}
        for name, m in self.measures.items():
            if m.plot and not m.headline:
                out.setdefault(m.panel_title(), []).append(name)
        return out

    def x_label(self) -> str:
        return "wall-clock (min)" if self.x == TIME else self.measures[self.x].label


# ------------------------------------------------------------------------------------------------
# The declarations: exactly the columns each producer emits.

_ARM = {"arm": Key("arm"), "source": Key("trains in", series=False)}
# an agent learner's rows also say what its policy started from: scratch, cpt, lwm or a checkpoint path (arms[i].init),
# and how it acts: choice or generate (arms[i].action_mode)
_AGENT = dict(_ARM, init=Key("starts from", required=False, series=False),
              action_mode=Key("acts by", required=False, series=False))
# what every learner row (eval, train) carries: learners/agent.py AgentLearner._log and agentworld/dyna.py
_LEARNER = {
    "update": Measure("policy update", "count", plot=False),
    "real_steps": Measure("real env steps (own)", "count", plot=False),
    "sim_steps": Measure("simulated env steps", "count", plot=False),
    "wm_real_steps": Measure("real env steps of the LWM's data", "count", plot=False),
}
_PER_UPDATE = "time per update (s)"
_OBEDIENCE = "obedience to a counterfactual control"

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("eval", "real-env evaluation", "learners/agent.py AgentLearner._evaluate; agentworld/dyna.py train_arm",
         # eval_env: the key in envs of the real env it played (arms[i].eval_env, else the arm's env)
         dict(_AGENT, eval_env=Key("scored in", required=False, series=False)),
         dict(_LEARNER,
                    success=Measure("real-env success", "fraction", headline=True),
                    **{"return": Measure("real-env return", headline=True)},
                    episodes=Measure("evaluation episodes", "count", plot=False),
                    length=Measure("episode length (steps)"),
                    policy_version=Measure("policy version", "count", plot=False),  # the agent's rows only
                    parse_rate=Measure("share of actions the env could parse", "fraction"),
                    faults=Measure("steps with an injected real fault", "count", plot=False)),
         x="update"),
    Kind("robust", "real-env evaluation under injected faults", "learners/agent.py AgentLearner.run (arms[i].fault_env)",
         dict(_AGENT, eval_env=Key("scored in")),
         dict(_LEARNER,
              success=Measure("success under real faults", "fraction", plot=False),
              **{"return": Measure("return under real faults", plot=False)},
              episodes=Measure("evaluation episodes", "count", plot=False),
              length=Measure("episode length (steps)", plot=False),
              policy_version=Measure("policy version", "count", plot=False),
              parse_rate=Measure("share of actions the env could parse", "fraction", plot=False),
              faults=Measure("steps with an injected real fault", "count", plot=False))),
    Kind("train", "learner", "learners/agent.py AgentLearner.run; agentworld/dyna.py train_arm",
         _AGENT, dict(_LEARNER,
                    # the agent's GRPO learner
                    loss=Measure("policy loss"),
                    mean_reward=Measure("mean episode reward of the batch"),
                    batch_episodes=Measure("episodes per batch", "count", plot=False),  # a config constant
                    batch_steps=Measure("steps per batch", "count"),
                    max_staleness_seen=Measure("max staleness in the batch (versions)", "count"),
                    parse_rate=Measure("share of the batch's actions the env could parse", "fraction"),
                    wait_s=Measure("waiting for rollouts", panel=_PER_UPDATE),
                    train_s=Measure("training", panel=_PER_UPDATE),
                    # RLlib PPO in the Dyna arm (agentworld/dyna.py)
                    train_env_return=Measure("PPO return in its training env"),
                    policy_loss=Measure("PPO policy loss"),
                    vf_loss=Measure("PPO value loss"),
                    entropy=Measure("PPO entropy"),
                    sim_parse_errors=Measure("unparseable sim states (PPO, cumulative)", "count"),
                    sim_steps_per_s=Measure("sim steps per second (PPO)")),
         x="update"),
    Kind("wm", "LWM", "learners/world_model.py WorldModelLearner.train (measure)",
         {"stage": Key("stage", series=False), "heldout": Key("measured on held-out episodes", series=False)},
         dict(wm_version=Measure("LWM version", "count", plot=False),
              train_step=Measure("LWM training step", "count", plot=False),
              train_examples=Measure("training examples", "count", plot=False),
              exact_match=Measure("exact match", "fraction", panel="held-out next-state fidelity"),
              edit_similarity=Measure("edit similarity", "fraction", panel="held-out next-state fidelity"),
              outcome_accuracy=Measure("outcome accuracy", "fraction", panel="held-out next-state fidelity"),
              n=Measure("held-out transitions", "count", plot=False),
              # only when the LWM trains with hindsight controls
              obedience=Measure("obedience with the control line", "fraction", panel=_OBEDIENCE),
              obedience_without_control=Measure("obedience without it (chance)", "fraction", panel=_OBEDIENCE)),
         x="train_step"),
    Kind("wm_control", "LWM obedience by control", "learners/world_model.py WorldModelLearner.train (measure)",
         {"stage": Key("stage", series=False), "control": Key("control: a perturbation or fictional"),
          "heldout": Key("measured on held-out episodes", series=False)},
         dict(wm_version=Measure("LWM version", "count", plot=False),
              train_step=Measure("LWM training step", "count", plot=False),
              n=Measure("held-out transitions", "count", plot=False),
              obedience=Measure("obedience with the control line", "fraction", panel="held-out obedience by control"),
              obedience_without_control=Measure("obedience without it (chance)", "fraction",
                                                panel="held-out obedience by control")),
         x="train_step"),
    Kind("wm_domain", "LWM by domain", "learners/world_model.py WorldModelLearner.train (measure)",
         {"stage": Key("stage", series=False), "domain": Key("domain"),
          "predictor": Key("predictor: the LWM, copy (the previous observation) or retrieve (the nearest training "
                           "transition's next state)"),
          "main_metric": Key("the domain's main metric", series=False),
          "heldout": Key("measured on held-out episodes", series=False)},
         dict(wm_version=Measure("LWM version", "count", plot=False),
              train_step=Measure("LWM training step", "count", plot=False),
              n=Measure("held-out transitions", "count", plot=False),
              main=Measure("main metric", "fraction", panel="held-out fidelity by domain: main metric"),
              exact_match=Measure("exact match", "fraction", plot=False),
              edit_similarity=Measure("edit similarity", "fraction", plot=False),
              line_f1=Measure("line F1", "fraction", plot=False),
              field_f1=Measure("JSON field F1", "fraction", plot=False),
              outcome_accuracy=Measure("outcome accuracy", "fraction", plot=False)),
         x="train_step"),
    Kind("wm_horizon", "LWM open loop", "learners/world_model.py WorldModelLearner.train (after the last stage)",
         {"stage": Key("stage", series=False), "domain": Key("domain"), "predictor": Key("predictor"),
          "main_metric": Key("the domain's main metric", series=False)},
         dict(horizon=Measure("steps fed on its own predictions", "count", plot=False),
              n=Measure("rollouts", "count", plot=False),
              main=Measure("main metric at that step", "fraction", panel="open-loop fidelity against horizon"),
              exact_match=Measure("exact match", "fraction", plot=False),
              edit_similarity=Measure("edit similarity", "fraction", plot=False)),
         x="horizon"),
    Kind("think", "LWM think traces", "learners/world_model.py WorldModelLearner._rationales (before the stages)",
         {"source": Key("think source")},
         dict(transitions=Measure("training transitions", "count", plot=False),
              with_rationale=Measure("transitions with a rationale", "count", plot=False),
              cached=Measure("found in the cache", "count", plot=False),
              asked=Measure("teacher requests", "count", plot=False),
              failed=Measure("teacher errors and timeouts", "count", plot=False),
              unusable=Measure("replies without a usable rationale", "count", plot=False))),
    Kind("wm_train", "LWM training", "learners/world_model.py WorldModelLearner.train (on_step)",
         {"stage": Key("stage")},  # loss for cpt and sft, mean reward for rl: one line each
         dict(wm_version=Measure("LWM version", "count", plot=False),
              train_step=Measure("LWM training step", "count", plot=False),
              value=Measure("loss (cpt, sft) or reward (rl)")),
         x="train_step"),
    Kind("pool", "actor pool", "actors/pool.py ActorPool._log",
         dict(_ARM, decision=Key("decision", series=False), reason=Key("reason", series=False)),
         dict(actors=Measure("rollout actors", "count", panel="rollout actors", step=True),
              actors_pending=Measure("actors waiting to be placed", "count", panel="rollout actors", step=True),
              learner_starved=Measure("share of the interval the learner waited", "fraction"),
              batches_waiting=Measure("learner batches waiting"),
              fill_rate=Measure("replay fill", panel="rows per second"),
              consume_rate=Measure("learner consumption", panel="rows per second")),
         # fixed pools only log their start, holds and stop: panels only where a pool scaled
         drawn=lambda rows: "decision" in rows and bool(rows["decision"].isin(("grow", "shrink")).any())),
    Kind("hybrid", "hybrid", "agentworld/worldmodel/hybrid.py hybrid_metric_rows",
         _ARM,
         dict(steps=Measure("steps", "count", panel="steps per bin"),
              routed_steps=Measure("routed to the real env", "count", panel="steps per bin"),
              routed_share=Measure("share routed to the real env", "fraction", panel="live fidelity and routing"),
              fidelity=Measure("live fidelity (gate)", "fraction", panel="live fidelity and routing"),
              bin_match_rate=Measure("shadow match rate in the bin", "fraction", panel="live fidelity and routing"),
              real_steps=Measure("real env steps (routed + shadow)", "count", panel="env steps so far"),
              routed_steps_total=Measure("routed steps", "count", panel="env steps so far"),
              shadow_steps_total=Measure("shadow steps", "count", panel="env steps so far"),
              sim_steps=Measure("simulated steps", "count", panel="env steps so far"),
              scored_total=Measure("scored", "count", panel="shadow-scored steps so far"),
              matched_total=Measure("matched", "count", panel="shadow-scored steps so far"))),
    Kind("control", "controls", "agentworld/controls.py obedience_metric_rows",
         {"arm": Key("arm"), "control": Key("control"), "final": Key("end-of-run total", required=False, series=False)},
         dict(steps=Measure("controlled steps", "count", panel="controlled sim steps"),
              obeyed=Measure("obeyed", "count", panel="controlled sim steps"),
              obedience=Measure("obedience (cumulative)", "fraction", panel="obedience"),
              bin_obedience=Measure("obedience in the bin", "fraction", panel="obedience")),
         totals="final", totals_by="control"),
    Kind("fault", "faults", "actors/pool.py ActorPool.replace_dead; agentworld/driver.py Supervisor, run_experiment",
         {"arm": Key("arm", required=False), "source": Key("trains in", required=False, series=False),
          "what": Key("what"), "who": Key("who", required=False, series=False), "cause": Key("cause", series=False),
          "action": Key("what was done", series=False)},
         dict(updates_lost=Measure("updates lost", "count", plot=False),
              recovery_s=Measure("time to recover", "seconds", plot=False),
              actors=Measure("rollout actors after it", "count", plot=False),
              signal=Measure("signal that stopped the run", "count", plot=False)),
         drawn=lambda rows: False),  # a table in the report, not curves
)}


def first_line(error: BaseException) -> str:
    """An error's first line, at most 300 characters: a `fault` row's cause. For a task's error in a Ray actor
    (RayTaskError), its own error's: the wrapper's first line names only the task."""
    inner = error
    while isinstance(getattr(inner, "cause", None), BaseException) and inner.cause is not inner:
        inner = inner.cause  # a RayTaskError's own error, maybe itself a task's in another actor
    text = (str(inner).strip().splitlines() or [""])[0]
    if inner is not error:
        text = f"{type(inner).__name__}: {text}"
    return (text or type(error).__name__)[:300]


def metric_row(kind: str, /, **values) -> dict:
    """A metrics row of `kind`: `{"kind": kind, **values}`, checked against the kind's declaration.
    Columns may be left out (or None) unless required; a column the kind does not declare is an error."""
    k = KINDS.get(kind)
    if k is None:
        raise MetricError(f"unknown metric kind {kind!r} (one of {', '.join(KINDS)}); "
                          "declare it in agentworld/metrics.py")
    undeclared = sorted(set(values) - (k.columns - {"kind"}))
    if undeclared:
        raise MetricError(f"{kind} row: undeclared column(s) {', '.join(undeclared)}; declare them in "
                          f"KINDS[{kind!r}] of agentworld/metrics.py")
    missing = sorted(c for c in k.required if values.get(c) is None)
    if missing:
        raise MetricError(f"{kind} row: missing {', '.join(missing)}")
    for name, v in values.items():
        if v is None:
            continue
        if name in k.keys:
            if not isinstance(v, (str, bool)):
                raise MetricError(f"{kind} row: key {name} is text or a flag, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, Real):  # bools are flags, so keys
            raise MetricError(f"{kind} row: {name} is a number, got {v!r}")
    return {"kind": kind, **values}
