"""Adding things is one new piece plus one registration line: a user's script registers its own arm kind and its
own agent loss, names them in the YAML (as overrides), and a shortened experiment runs them on real Ray."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from tests.test_e2e import QUICK

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import sys

    from agentworld.arms import ArmKind
    from agentworld.config import load_config
    from agentworld.driver import run_experiment
    from agentworld.registry import ARM_KINDS, LOSSES
    from learners.losses import Loss


    class ThreeSteps:
        """A real env whose episodes the arm kind cuts at three steps, rewarding one first action (so that a
        batch's returns spread and its advantages are not all zero)."""

        def __init__(self, env):
            self.env, self.env_id, self.domain, self.t = env, env.env_id, env.domain, 0

        def reset(self, seed=None):
            self.t = 0
            obs, info = self.env.reset(seed=seed)
            self.rewarded = sorted(info["admissible_actions"])[0]
            return obs, info

        def step(self, action):
            self.t += 1
            obs, reward, term, trunc, info = self.env.step(action)
            reward += float(self.t == 1 and action == self.rewarded)
            return obs, reward, term, trunc or self.t >= 3, info

        def close(self):
            self.env.close()


    @ARM_KINDS.register("three-steps")
    class ThreeStepArm(ArmKind):
        def make_envs(self, envs, n, arm):
            return [ThreeSteps(envs.real()) for _ in range(n)]


    def every_row(r, mean, std, n):
        return 1.0


    def constant(new, old, mask, adv, clip, weight=None):
        return (new * 0).sum() + 42.0  # a loss value no real objective gives: the train rows show it was used


    LOSSES.register("constant42", Loss(every_row, constant))
    cfg = load_config(sys.argv[1], sys.argv[2:])
    run_experiment(cfg)
''')


@pytest.mark.slow
def test_a_script_registers_an_arm_kind_and_a_loss_and_runs_them(tmp_path):
    script = tmp_path / "my_experiment.py"
    script.write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(ROOT / "experiments" / "quickstart.yaml"),
                        f"run.output_dir={tmp_path}", "run.name=ext", *QUICK, "agent.updates=2",
                        # the arms start from scratch: the LWM the run trains anyway is kept tiny
                        "world_model.data.steps=60", "world_model.sft.steps=2", "world_model.sft.eval_every=2",
                        "world_model.sft.eval_samples=2", "world_model.sft.warmup_steps=1",
                        "arms.0.source=three-steps", "arms.1.source=three-steps", "agent.algorithm=constant42",
                        "agent.init=scratch"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from agentworld.replay import ReplayStore

    rows = ReplayStore(str(tmp_path / "ext" / "replay")).sample(arm="real").to_pandas()
    assert len(rows) and rows.step.max() == 2  # the kind built the actors' envs: no episode past 3 steps
    assert (rows.source == "real").all()
    df = pd.read_parquet(tmp_path / "ext" / "metrics.parquet")
    train = df[df.kind == "train"]
    trained = train.loss.dropna()  # a batch whose returns all tie has no advantage: nothing trained, loss NaN
    assert set(train.arm) == {"real", "sim"} and len(trained) and (trained == 42.0).all()  # the loss was used
    summary = json.loads((tmp_path / "ext" / "summary.json").read_text())
    assert summary["arms"]["real"]["source"] == "three-steps"
