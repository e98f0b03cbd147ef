"""Config fuzz (issue 18): malformed configs and overrides, each refused before anything starts: `agentworld run` exits 2
with one line naming the file (or the command line) and the key, no traceback, and Ray is never started."""

from pathlib import Path

import pytest

from agentworld import cli

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")

# (override, the key the error names); the quickstart's arms are 0: real, 1: sim
OVERRIDES = [
    ("agent.updates=1e30", "agent.updates"), ("agent.updates=99999999999999", "agent.updates"),
    ("agent.clip=-0.2", "agent.clip"), ("agent.temperature=-1", "agent.temperature"),
    ("ray.num_cpus=-2", "ray.num_cpus"), ("run.max_minutes=nan", "run.max_minutes"),
    ("run.max_minutes=.inf", "run.max_minutes"), ("agent.lr=inf", "agent.lr"),
    ("eval.success_target=5", "eval.success_target"), ("ray.actor_num_cpus=0", "ray.actor_num_cpus"),
    ("run.name=../x", "run.name"), ("run.name=..", "run.name"), ("run.name=", "run.name"), ("run.name=a/b", "run.name"),
    ("model.tiny.num_heads=0", "model.tiny.num_heads"), ("model.tiny.num_heads=3", "model.tiny.num_heads"),
    ("envs.frozenlake.kwargs={map_name: 9x9}", "envs.frozenlake.kwargs"),
    ("envs.frozenlake.kwargs={foo: 1}", "envs.frozenlake.kwargs"),
    ("run.output_dir=README.md", "run.output_dir"), ("replay.dir=README.md", "replay.dir"),
    ("agent.episodes_per_update=0", "agent.episodes_per_update"), ("agent.epochs=-1", "agent.epochs"),
    ("agent.max_staleness=-1", "agent.max_staleness"), ("eval.episodes=0", "eval.episodes"),
    ("eval.every_updates=0", "eval.every_updates"), ("world_model.sft.lr=0", "world_model.sft.lr"),
    ("world_model.sft.batch_size=0", "world_model.sft.batch_size"), ("world_model.sft.steps=-5", "world_model.sft.steps"),
    ("world_model.data.heldout_fraction=1.5", "world_model.data.heldout_fraction"),
    ("world_model.data.steps=0", "world_model.data.steps"),
    ("world_model.sft.control_fraction=2", "world_model.sft.control_fraction"),
    ("world_model.generation.temperature=-0.5", "world_model.generation.temperature"),
    ("world_model.generation.max_new_tokens=0", "world_model.generation.max_new_tokens"),
    ("world_model.history_turns=0", "world_model.history_turns"),
    ("arms.0.envs_per_actor=0", "arms.0.envs_per_actor"), ("arms.1.control.fraction=1.5", "arms.1.control.fraction"),
    ("arms.1.hybrid.threshold=2", "arms.1.hybrid.threshold"), ("arms.0.source=bogus", "arms.0.source"),
    ("arms.0.env=nosuch", "arms.0.env"), ("arms.5.name=x", "arms.5.name"), ("agent.algorithm=nope", "agent.algorithm"),
    ("agent.init=/no/such/checkpoint", "agent.init"), ("agent.action_mode=typing", "agent.action_mode"),
    ("model.dtype=float8", "model.dtype"), ("model.lora.r=0", "model.lora.r"),
    ("model.lora.dropout=1.5", "model.lora.dropout"), ("engine.inference=tpu", "engine.inference"),
    ("engine.num_gpus=-1", "engine.num_gpus"), ("engine.deepspeed.zero_stage=7", "engine.deepspeed.zero_stage"),
    ("serve.port=70000", "serve.port"), ("serve.max_body_bytes=0", "serve.max_body_bytes"),
    ("pool.interval_s=0", "pool.interval_s"), ("world_model.stages=[xyz]", "world_model.stages"),
    ("ray.torch_threads=0", "ray.torch_threads"), ("agent.lrr=1", "agent.lrr"), ("notakv", "notakv"),
    ("run.seed=-1", "run.seed"), ("agent.updates=ten", "agent.updates"), ("envs.frozenlake.max_steps=0", "envs.frozenlake.max_steps"),
    ("replay.shards=0", "replay.shards"), ("checkpoint.wm_every_steps=-1", "checkpoint.wm_every_steps"),
]

# (file name, bytes, what the error says)
FILES = [
    ("latin1.yaml", "run:\n  name: caf\xe9\n".encode("latin-1"), "not UTF-8"),
    ("utf16.yaml", "run:\n  name: x\n".encode("utf-16"), "not UTF-8"),
    ("bomb.yaml", b'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
                  b'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n'
                  b'f: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n', "aliases"),  # 9**6 values from six lines
    ("list.yaml", b"- run\n- agent\n", "mapping"),
    ("syntax.yaml", b"run: [unclosed\n", "YAML syntax error"),
    ("wrongtype.yaml", b"agent: 5\n", "agent"),
    ("unknown.yaml", b"runn:\n  name: x\n", "runn"),
]


@pytest.fixture
def refused(monkeypatch, capsys):
    """Run `agentworld run ARGS` in-process; return its stderr line. Reaching the driver fails the test: the config
    passed validation."""
    import ray

    import agentworld.driver

    def started(*a, **k):
        raise AssertionError("the config passed validation: the run started")

    monkeypatch.setattr(agentworld.driver, "run_experiment", started)
    monkeypatch.setattr(ray, "init", started)  # and nothing else started Ray on the way

    def call(*args):
        code = cli.main(["run", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("agentworld: error:"), (code, err)
        assert "Traceback" not in err[0]
        return err[0]

    return call


@pytest.mark.parametrize("override,key", OVERRIDES, ids=[o for o, _ in OVERRIDES])
def test_a_malformed_override_is_one_line_naming_the_key(refused, override, key):
    line = refused(QUICKSTART, override)
    assert key in line, line


@pytest.mark.parametrize("name,data,says", FILES, ids=[f[0] for f in FILES])
def test_a_malformed_file_is_one_line_naming_the_file(refused, tmp_path, name, data, says):
    path = tmp_path / name
    path.write_bytes(data)
    line = refused(str(path))
    assert str(path) in line and says in line, line


def test_a_folder_or_a_missing_file_as_the_config(refused, tmp_path):
    assert "not found" in refused(str(tmp_path))
    assert "not found" in refused(str(tmp_path / "none.yaml"))


def test_there_are_at_least_57_kinds():
    assert len(OVERRIDES) + len(FILES) + 2 >= 57
