"""The RLlib Dyna experiment, shortened: a real tiny LWM, real RLlib PPO in the real FrozenLake and in
agentworld/Sim-v0, both scored in the real env, through the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from agentworld.dyna import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments" / "dyna_rllib.yaml")
SHORT_LWM = ("lwm.overrides=[world_model.data.steps=600,world_model.sft.steps=200,world_model.sft.eval_every=200,"
             "world_model.sft.eval_samples=16]")  # fewer SFT steps: the LWM drops grid cells, every state is unparseable
SHORT_PPO = ["ppo.iterations=2", "ppo.train_batch_size=400", "ppo.minibatch_size=100", "ppo.num_epochs=4",
             "ppo.envs_per_runner=16", "eval.every_iterations=1", "eval.episodes=8"]


def test_bad_dyna_config_is_one_line_and_exit_code_2(capsys):
    assert main([CONFIG, "ppo.iterationz=3"]) == 2
    assert "unknown key 'ppo.iterationz'" in capsys.readouterr().err
    assert main([CONFIG, "arms=[real,dream]"]) == 2
    assert "arms" in capsys.readouterr().err


@pytest.mark.slow
def test_dyna_trains_ppo_in_the_lwm_and_in_the_real_env_and_reports_both_real_curves(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agentworld", "dyna", CONFIG, f"run.output_dir={tmp_path}", "run.name=ci",
                        SHORT_LWM, *SHORT_PPO], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "ci"
    for name in ("config.yaml", "metrics.parquet", "curves.png", "report.html", "summary.json",
                 "lwm/checkpoints/wm/config.json", "checkpoints/ppo-real", "checkpoints/ppo-sim"):
        assert (run / name).exists(), name

    df = pd.read_parquet(run / "metrics.parquet")
    evals = df[df.kind == "eval"]
    for arm in ("real", "sim"):  # each arm scored in the real env before training and after every iteration
        assert sorted(evals[evals.arm == arm]["update"]) == [0, 1, 2]
    cols = ["success", "return", "real_steps", "sim_steps", "wm_real_steps", "wall_time"]
    assert evals[cols].notna().all().all() and evals.success.between(0, 1).all()
    real, sim = evals[evals.arm == "real"], evals[evals.arm == "sim"]
    assert real.real_steps.max() >= 2 * 400 and (real.sim_steps == 0).all()
    assert (sim.real_steps == 0).all() and sim.sim_steps.max() >= 2 * 400  # no real env step in the sim arm
    assert (sim.wm_real_steps >= 600).all()  # ... beyond the LWM's data budget, which is recorded
    sim_train = df[(df.kind == "train") & (df.arm == "sim")]
    assert (sim_train.sim_steps_per_s > 0).all()
    last = sim_train.iloc[-1]
    assert last.sim_parse_errors < 0.5 * last.sim_steps  # most predicted states decode into real observations
    assert len(df[df.kind == "wm"]) >= 2  # the LWM's fidelity, untrained and trained, is in the report

    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["arms"]) == {"real", "sim"}
    assert summary["arms"]["sim"]["real_steps"] == 0 and summary["sim"]["steps_per_s"] > 0
    assert "report.html" in r.stdout
