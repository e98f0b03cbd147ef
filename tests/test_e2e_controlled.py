"""experiments/controlled.yaml shortened, through the CLI on real Ray, real FrozenLake and a real tiny model: the
four arms (real, sim, sim-controlled, hybrid) are all scored in the real env, and the report carries the LWM's and
the controlled arm's obedience, the hybrid arm's live fidelity and routing, and exact real-step accounting."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

# a weak LWM (60 SFT steps): the test is of the arms' machinery, and a weak LWM makes the hybrid arm route
SHORT = ["world_model.data.steps=600", "world_model.sft.steps=60", "world_model.sft.eval_every=60",
         "world_model.sft.eval_samples=16", "agent.updates=2", "agent.episodes_per_update=4",
         *[f"arms.{i}.envs_per_actor=4" for i in range(4)], "eval.episodes=4", "eval.every_updates=2",
         # shadow often and gate early, so a short run scores the LWM in the real env and may route
         "arms.3.hybrid.shadow_fraction=0.5", "arms.3.hybrid.min_scores=2", "run.max_minutes=12"]


@pytest.mark.slow
def test_controlled_experiment_scores_four_arms_in_the_real_env(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agentworld", "run", str(ROOT / "experiments" / "controlled.yaml"),
                        f"run.output_dir={tmp_path}", "run.name=c", *SHORT],
                       capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "c"
    df = pd.read_parquet(run / "metrics.parquet")
    evals = df[df.kind == "eval"]
    assert set(evals.arm) == {"real", "sim", "sim-controlled", "hybrid"}
    assert evals.success.between(0, 1).all()

    from agentworld.replay import ReplayStore

    rows = ReplayStore(str(run / "replay")).table().to_pandas()
    ctl = rows[rows.arm == "sim-controlled"]
    assert (ctl.source == "sim").all() and ctl.control.notna().any()  # a share of its steps carried a control
    assert rows[rows.arm == "sim"].control.isna().all()  # the uncontrolled arm: none
    assert ctl.control.dropna().str.match(r"^\[(success|failure|noop|moved)\]").all()  # the configured mix only

    summary = json.loads((run / "summary.json").read_text())
    arms = summary["arms"]
    for name in ("sim", "sim-controlled"):
        assert arms[name]["real_steps"] == 0  # simulator arms take no real env step beyond the LWM's data
    assert 0 <= arms["sim-controlled"]["control"]["obedience"] <= 1
    assert arms["sim-controlled"]["control"]["controlled_steps"] > 0
    assert "obedience" in summary["lwm"]["final"]  # the LWM learned outcome controls in SFT, measured held out

    hyb = rows[rows.arm == "hybrid"]
    h = arms["hybrid"]["hybrid"]
    assert h["scored"] > 0 and h["final_fidelity"] is not None  # shadow execution scored the LWM live
    # every real env step of the hybrid arm is counted: shadowed prefixes and routed episodes
    assert 0 < arms["hybrid"]["real_steps"] <= h["shadow_steps"] + h["routed_steps"]  # (rows after its last eval too)
    assert h["routed_steps"] == (hyb.source == "real").sum()
    html = (run / "report.html").read_text()
    assert "Hybrid arms" in html and "bedience" in html
