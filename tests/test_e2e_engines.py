"""The experiment YAMLs on the scale engines by changing only the engine keys (`engine.inference=vllm
engine.train=deepspeed`), end to end through the CLI, shortened: the quickstart (vLLM generation in its rollout
actors for the policy and the LWM simulator, DeepSpeed in the LWM and agent learners, weights to the running
vLLM engines through the object store) and the world-model recipe (DeepSpeed through CPT, SFT and RL).
experiments/dyna_rllib.yaml has no LLM learner or `engine` section (RLlib's PPO trains an MLP): not run here."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("vllm", reason="the vllm extra is not installed (pip install -e '.[vllm]')")
pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed (pip install -e '.[deepspeed]')")

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ["engine.inference=vllm", "engine.train=deepspeed"]  # the only keys that differ from the default run
# shortened; the real arm plays CliffWalking (in the quickstart's envs), whose returns differ between episodes from
# the start, so its DeepSpeed learner has non-zero advantages to train on (FrozenLake's first rewards take longer)
QUICKSTART = ["world_model.data.steps=200", "world_model.sft.steps=10", "world_model.sft.eval_every=10",
              "world_model.sft.eval_samples=8", "agent.updates=2", "agent.episodes_per_update=4",
              "arms.0.env=cliffwalking", "arms.0.envs_per_actor=4", "arms.1.envs_per_actor=4", "eval.episodes=4",
              "eval.every_updates=2", "run.max_minutes=10"]
# 100 SFT steps: enough that the model ends its replies, so RL's rewards (0 for a reply cut at the token limit)
# differ within a group and its DeepSpeed steps run (20 left every reward 0 and no RL step)
WM_RECIPE = ["world_model.data.steps=300", "world_model.cpt.steps=4", "world_model.sft.steps=100",
             "world_model.sft.eval_every=100", "world_model.sft.eval_samples=8", "world_model.rl.steps=2",
             "world_model.rl.prompts_per_step=4", "world_model.rl.group_size=4"]


def cli(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "agentworld", *args], capture_output=True, text=True, timeout=1200,
                       cwd=ROOT, env={**__import__("os").environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def deepspeed_state(checkpoint: Path) -> dict:
    """The trainer state a DeepSpeed learner saved after training: the torch engine's format, AdamW moments per
    parameter."""
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    assert state["steps"] > 0 and state["optimizer"]["state"]
    assert all(s["exp_avg_sq"].abs().sum() > 0 for s in state["optimizer"]["state"].values())
    return state


@pytest.mark.slow
def test_quickstart_runs_on_vllm_and_deepspeed_by_the_engine_keys(tmp_path):
    cli("run", str(ROOT / "experiments" / "quickstart.yaml"), f"run.output_dir={tmp_path}", "run.name=q",
        *QUICKSTART, *ENGINES)
    run = tmp_path / "q"
    assert "inference: vllm" in (run / "config.yaml").read_text()
    assert deepspeed_state(run / "checkpoints" / "agent-real")["steps"] > 0  # the agent loss ran on DeepSpeed
    assert (run / "checkpoints" / "agent-sim" / "trainer_state.pt").exists()
    df = pd.read_parquet(run / "metrics.parquet")
    train = df[df.kind == "train"]
    assert set(train.arm) == {"real", "sim"} and (train.max_staleness_seen <= 1).all()
    from agentworld.replay import ReplayStore

    rows = ReplayStore(str(run / "replay")).table().to_pandas()
    for arm in ("real", "sim"):  # weights published by the learners reached the running vLLM engines
        assert rows[rows.arm == arm].policy_version.max() >= 1
    sim = rows[rows.arm == "sim"]
    assert sim.wm_version.notna().all() and sim.logprobs.map(len).min() >= 1  # every row records its versions
    assert json.loads((run / "summary.json").read_text())["arms"]["sim"]["real_steps"] == 0


@pytest.mark.slow
def test_wm_recipe_trains_every_stage_on_deepspeed_by_the_engine_keys(tmp_path):
    cli("wm", "train", str(ROOT / "experiments" / "wm_recipe.yaml"), f"run.output_dir={tmp_path}", "run.name=r",
        *WM_RECIPE, *ENGINES)
    run = tmp_path / "r"
    table = json.loads((run / "wm_stages.json").read_text())["stages"]
    assert [row["stage"] for row in table] == ["untrained", "cpt", "sft", "rl"]
    for stage in ("cpt", "sft", "rl"):
        deepspeed_state(run / "checkpoints" / f"wm-{stage}")
