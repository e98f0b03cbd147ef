"""The LWM trains on several sources at once (real envs under behaviour policies, and imports), each row keeping
its env and domain; an import-only LWM needs no env; a bad source is one line and exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentworld.config import ConfigError, load_config
from agentworld.policy import MixPolicy, behaviour_policy

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")
SHORT = ["world_model.sft.steps=4", "world_model.sft.eval_every=4", "world_model.sft.eval_samples=4",
         "world_model.sft.warmup_steps=1"]  # the data plumbing is tested, not learning


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "agentworld", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("sources, key", [
    ("[{env: nope, steps: 10}]", "world_model.data.sources.0.env"),
    ("[{data: /no/such/file.jsonl}]", "world_model.data.sources.0.data"),
    ("[{env: frozenlake, steps: 10, data: /tmp}]", "world_model.data.sources.0"),
    ("[{env: frozenlake, steps: 0}]", "world_model.data.sources.0.steps"),
    ("[{env: frozenlake, steps: 5, policy: 'mix:1.5'}]", "world_model.data.sources.0.policy"),
])
def test_a_bad_source_is_one_line_naming_its_key(sources, key, capsys):
    from tests.test_e2e_tooluse import validate

    with pytest.raises(ConfigError) as e:
        load_config(QUICKSTART, [f"world_model.data.sources={sources}"])
    assert key in str(e.value) and "\n" not in str(e.value)
    r = validate(capsys, QUICKSTART, f"world_model.data.sources={sources}")
    assert r.returncode == 2 and key in r.stderr and "Traceback" not in r.stderr


def test_mix_policy_takes_the_oracle_at_its_rate():
    class Env:  # a real object with the env's oracle protocol, not a stand-in for our code
        env_id = "e"

        def oracle_action(self):
            return "oracle"

    pol = behaviour_policy("mix:0.25", seed=3)
    assert isinstance(pol, MixPolicy)
    acts = [a.action for _ in range(400) for a in pol.act(["e"], ["obs"], [{"admissible_actions": ["x", "y"]}], [Env()])]
    assert 0.18 < acts.count("oracle") / len(acts) < 0.32 and {"x", "y"} <= set(acts)


@pytest.mark.slow
def test_the_lwm_trains_on_imports_and_envs_together_and_on_imports_alone(tmp_path):
    r = cli("collect", "--env", "gymnasium:FrozenLake-v1", "--policy", "random", "--episodes", "40", "--out",
            str(tmp_path / "collected"), "--env-kwargs", '{"map_name": "4x4", "is_slippery": false}', "--parallel", "8")
    assert r.returncode == 0, r.stderr
    assert cli("wm", "export", "--replay", str(tmp_path / "collected"), "--out", str(tmp_path / "b.jsonl")).returncode == 0
    with open(tmp_path / "b.jsonl", "a") as f:
        f.write('{"a malformed line": \n')  # reported and skipped, never fatal
    sources = (f"[{{data: {tmp_path / 'b.jsonl'}}}, {{env: frozenlake, steps: 150, policy: 'mix:0.5'}}, "
               f"{{data: {tmp_path / 'collected'}, heldout: true}}]")
    r = cli("wm", "train", QUICKSTART, f"world_model.data.sources={sources}", "world_model.env=null",
            f"run.output_dir={tmp_path}", "run.name=mixed", *SHORT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from agentworld.replay import ReplayStore

    replay = ReplayStore(str(tmp_path / "mixed" / "replay"))
    imported, played, held = (replay.sample(arm=f"wm_data.{i}").to_pandas() for i in range(3))
    assert len(imported) and len(played) >= 150 and len(held)
    assert set(imported.domain) == set(played.domain) == {"gridworld"}
    assert set(imported.env_id) == {"agentworldbench:gridworld"} and set(played.env_id) == {"gymnasium:FrozenLake-v1"}
    stages = json.loads((tmp_path / "mixed" / "wm_stages.json").read_text())
    wm = [m for m in stages["metrics"] if m["kind"] == "wm"]
    assert wm and all(m["heldout"] for m in wm)

    r = cli("wm", "train", QUICKSTART, f"world_model.data.sources=[{{data: {tmp_path / 'b.jsonl'}}}]",
            "world_model.env=null", f"run.output_dir={tmp_path}", "run.name=imports", "world_model.think.source=describe",
            *SHORT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "imports" / "checkpoints" / "wm" / "config.json").is_file()
    # think traces from the grid describer: every training transition got one
    think = [m for m in json.loads((tmp_path / "imports" / "wm_stages.json").read_text())["metrics"] if m["kind"] == "think"]
    assert len(think) == 1 and think[0]["source"] == "describe"
    assert think[0]["with_rationale"] == think[0]["transitions"] > 0


def test_held_out_samples_are_shared_among_domains_and_unchanged_for_one():
    import random

    from agentworld.worldmodel.data import Example, sample_by_domain

    grid = [Example(f"g{i}", "", "", 0.0, False, "gridworld") for i in range(100)]
    assert sample_by_domain(grid, 10, random.Random(3)) == random.Random(3).sample(grid, 10)
    shell = [Example(f"t{i}", "", "", 0.0, False, "terminal") for i in range(5)]
    picked = sample_by_domain(grid + shell, 10, random.Random(3))
    assert sum(e.domain == "terminal" for e in picked) == 5 and sum(e.domain == "gridworld" for e in picked) == 5
