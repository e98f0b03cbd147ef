"""A shortened quickstart on real Ray, the real FrozenLake env and a real tiny model, through the CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

SHORT = ["world_model.data.steps=600", "world_model.sft.steps=80", "world_model.sft.eval_every=40",
         "world_model.sft.eval_samples=32", "agent.updates=4", "agent.episodes_per_update=8",
         "arms.0.envs_per_actor=8", "arms.1.envs_per_actor=8", "eval.episodes=8", "eval.every_updates=2",
         "run.max_minutes=10"]
# SHORT with a weak LWM, for tests of the machinery rather than of learning: fewer data steps, 30 SFT steps
QUICK = [*SHORT, "world_model.data.steps=300", "world_model.sft.steps=30", "world_model.sft.eval_every=30",
         "world_model.sft.eval_samples=8"]


@pytest.mark.slow
def test_short_quickstart_end_to_end_and_its_lwm_keeps_training_on_fresh_real_data(tmp_path):
    """The quickstart, shortened, with two more things on (one run for both: each run costs its cluster's start):
    continual LWM training on the arms' fresh real rows, and a replay of two shards (their cursors reach the learners
    and the LWM)."""
    r = subprocess.run([sys.executable, "-m", "agentworld", "run", str(ROOT / "experiments" / "quickstart.yaml"),
                        f"run.output_dir={tmp_path}", "run.name=short", *SHORT,
                        "world_model.continual.enabled=true", "world_model.continual.stage=sft",
                        "world_model.continual.min_new=40", "world_model.continual.steps=2", "replay.shards=2",
                        # scored before and after: the LWM at SFT steps 0 and 80, the arms at updates 0 and 4
                        "world_model.sft.eval_every=80", "eval.every_updates=4"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "short"
    for name in ("config.yaml", "metrics.parquet", "curves.png", "report.html", "summary.json",
                 "checkpoints/base/config.json", "checkpoints/wm/config.json", "checkpoints/agent-sim/config.json"):
        assert (run / name).exists(), name
    assert list((run / "replay").glob("seg-*.arrow"))
    assert "report.html" in r.stdout

    df = pd.read_parquet(run / "metrics.parquet")
    evals = df[df.kind == "eval"]
    assert set(evals.arm) == {"real", "sim"}
    assert evals[["success", "return", "real_steps", "sim_steps", "wall_time"]].notna().all().all()
    assert all(math.isfinite(x) for x in evals["return"])
    sim = evals[evals.arm == "sim"]
    assert (sim.real_steps == 0).all() and sim.sim_steps.max() > 0  # the sim arm takes no real env step
    train = df[df.kind == "train"]
    assert (train.max_staleness_seen <= 1).all()  # agent.max_staleness in the quickstart

    summary = json.loads((run / "summary.json").read_text())
    lwm = summary["lwm"]
    assert lwm["final"]["edit_similarity"] > lwm["untrained"]["edit_similarity"] + 0.3
    assert summary["arms"]["sim"]["wm_real_steps"] >= 600

    # continual: the LWM trained on, in rounds, after its SFT; both shards wrote, and sealed
    segments = sorted((run / "replay").glob("seg-*.arrow"))
    assert {p.stem.rsplit("-", 1)[-1] for p in segments} == {"s0", "s1"}, segments
    wm = df[df.kind == "wm"]
    rounds = wm[wm.stage == "continual-sft"]
    assert len(rounds) >= 1 and rounds.wm_version.min() > wm[wm.stage == "sft"].wm_version.max()
    assert "continual LWM training:" in r.stdout

    # a rerun of a run dir resumes its arms and reuses its LWM: tests/test_faults.py (the SIGTERM and kill -9 test)
