import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agentworld.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")


def write(tmp_path, text, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(QUICKSTART_TEXT + text)
    return str(p)


QUICKSTART_TEXT = Path(QUICKSTART).read_text()


def error_of(path, overrides=()):
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    return str(e.value)


def test_quickstart_validates():
    cfg = load_config(QUICKSTART)
    assert [a.source for a in cfg.arms] == ["real", "sim"]
    assert cfg.envs.frozenlake.kwargs.is_slippery is False


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "\nbogus: 1\n")
    msg = error_of(p)
    assert "bogus" in msg and p in msg and "\n" not in msg


def test_unknown_nested_key_names_full_key():
    msg = error_of(QUICKSTART, ["agent.lrr=1"])
    assert "agent.lrr" in msg and "command line" in msg


def test_unknown_key_inside_an_arm(tmp_path):
    p = tmp_path / "arm.yaml"
    p.write_text(QUICKSTART_TEXT.replace("envs_per_actor: 16\n  - name: sim", "envs_per_actorz: 16\n  - name: sim"))
    msg = error_of(str(p))
    assert "arms.0.envs_per_actorz" in msg and str(p) in msg


def test_wrong_type_names_key(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(QUICKSTART_TEXT.replace("lr: 1.0e-3", "lr: fast"))
    msg = error_of(str(p))
    assert "agent.lr" in msg and str(p) in msg


def test_missing_config_file():
    assert "not found" in error_of("/nonexistent/exp.yaml")


def test_yaml_syntax_error_gives_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("run:\n  name: [unclosed\n")
    assert "line" in error_of(str(p))


def test_bad_source_and_unknown_arm_env(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(QUICKSTART_TEXT.replace("source: sim", "source: dream"))
    assert "arms.1.source" in error_of(str(p))
    assert "arms.0.env" in error_of(QUICKSTART, ["arms.0.env=nowhere"])


def test_missing_model_path_and_bad_env_id():
    assert "model.path" in error_of(QUICKSTART, ["model.path=/no/such/model"])
    assert "envs.frozenlake.id" in error_of(QUICKSTART, ["envs.frozenlake.id=gymnasium:NoSuchEnv-v0"])


def test_overrides_apply_and_list_elements_typecheck():
    cfg = load_config(QUICKSTART, ["arms.0.actors=3", "agent.updates=7"])
    assert cfg.arms[0].actors == 3 and cfg.agent.updates == 7
    assert "arms.0.actors" in error_of(QUICKSTART, ["arms.0.actors=many"])
    assert "key=value" in error_of(QUICKSTART, ["agent.updates"])


def cli(*args):
    return subprocess.run([sys.executable, "-m", "agentworld", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("override,key", [("agent.lrr=1", "agent.lrr"),
                                          ("envs.frozenlake.id=gymnasium:NoSuchEnv-v0", "envs.frozenlake.id"),
                                          ("model.path=/no/such/dir", "model.path"),
                                          ("arms.1.init=/no/such/checkpoint", "arms.1.init")])
def test_cli_bad_input_exits_2_with_one_line(override, key):
    r = cli("run", QUICKSTART, override)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and lines[0].startswith("agentworld: error:")


def test_cli_validate_ok():
    r = cli("validate", QUICKSTART)
    assert r.returncode == 0 and "OK" in r.stdout


@pytest.mark.parametrize("override, key", [
    ("world_model.data.policy=/no/such/checkpoint", "world_model.data.policy"),
    ("agent.algorithm=nope", "agent.algorithm"),
    ("world_model.rl.algorithm=nope", "world_model.rl.algorithm"),
    ("arms.1.source=nope", "arms.1.source"),
    ("engine.weight_sync=nope", "engine.weight_sync"),
])
def test_a_name_no_registry_or_path_knows_is_one_line_naming_the_key(override, key):
    msg = error_of(QUICKSTART, [override])
    assert key in msg and "\n" not in msg


def test_every_registered_loss_and_behaviour_policy_validates():
    for name in ("grpo", "ppo", "rloo", "gspo"):
        assert load_config(QUICKSTART, [f"agent.algorithm={name}", f"world_model.rl.algorithm={name}"])
    assert load_config(QUICKSTART, ["world_model.data.policy=oracle"]).world_model.data.policy == "oracle"


def test_hybrid_checks_belong_to_the_hybrid_kind():
    msg = error_of(QUICKSTART, ["arms.1.source=hybrid", "arms.1.hybrid.threshold=1.5"])
    assert "arms.1.hybrid.threshold" in msg
    msg = error_of(QUICKSTART, ["arms.0.control.kind=hindsight"])
    assert "arms.0.control.kind" in msg and "real arm" in msg


def retarget(tmp_path, **ids) -> str:
    """The quickstart with envs.<key> pointed at other env ids (FrozenLake's kwargs dropped: no other env takes them,
    and validation builds an env with kwargs to check them)."""
    raw = yaml.safe_load(Path(QUICKSTART).read_text())
    for key, env_id in ids.items():
        raw["envs"][key] = {"id": env_id, "max_steps": raw["envs"][key]["max_steps"]}
    path = tmp_path / "retargeted.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_history_defaults_follow_the_domains_the_lwm_learns(tmp_path):
    unset = ["world_model.history_turns=null"]  # the quickstart sets 1
    grid = load_config(QUICKSTART, unset)
    assert (grid.world_model.history_turns, grid.world_model.history_budget_tokens) == (1, 0)
    shell_yaml = retarget(tmp_path, frozenlake="terminal:train")
    shell = load_config(shell_yaml, unset)
    wm = shell.world_model
    assert wm.history_turns == 4
    assert wm.history_budget_tokens == min(1536, shell.model.tiny.max_positions - wm.generation.max_new_tokens)
    fixed = load_config(shell_yaml, ["world_model.history_turns=2", "world_model.history_budget_tokens=0"])
    assert (fixed.world_model.history_turns, fixed.world_model.history_budget_tokens) == (2, 0)


def test_an_envs_menu_is_visible_or_oracle_and_oracle_only_where_actions_are_open_ended(tmp_path):
    shell = retarget(tmp_path, frozenlake="terminal:train")
    assert load_config(shell, ["envs.frozenlake.kwargs.menu=oracle"]).envs.frozenlake.kwargs.menu == "oracle"
    assert "envs.frozenlake.kwargs.menu" in error_of(shell, ["envs.frozenlake.kwargs.menu=solution"])
    msg = error_of(QUICKSTART, ["envs.frozenlake.kwargs.menu=oracle"])  # FrozenLake's menu is its four moves
    assert "envs.frozenlake.kwargs.menu" in msg and "own action set" in msg


def test_an_arms_init_is_scratch_cpt_lwm_or_a_checkpoint():
    for override, key in (("arms.1.init=nowhere", "arms.1.init"), ("agent.init=nowhere", "agent.init")):
        msg = error_of(QUICKSTART, [override])
        assert key in msg and QUICKSTART in msg and "lwm, cpt, scratch" in msg and "\n" not in msg
    msg = error_of(QUICKSTART, ["arms.0.init=cpt"])  # the quickstart's LWM recipe is sft only
    assert "arms.0.init" in msg and "world_model.stages" in msg
    assert load_config(QUICKSTART, ["arms.0.init=cpt", "world_model.stages=[cpt,sft]"]).arms[0].init == "cpt"


def test_per_arm_init_reaches_the_learners(tmp_path):
    from rich.console import Console

    from agentworld.config import runtime
    from agentworld.driver import Run, learner_spec

    lwm = {"path": "/run/wm", "wm_version": 3, "stages": {"cpt": "/run/wm-cpt", "sft": "/run/wm-sft"}}

    def specs(*overrides):
        cfg = load_config(QUICKSTART, ["world_model.stages=[cpt,sft]", *overrides])
        run = Run(cfg, tmp_path, "r", 0.0, runtime(cfg, tmp_path), Console())
        return [learner_spec(run, arm, 0, "/run/base", lwm, 600, 0) for arm in cfg.arms]

    got = [(s.arm.name, s.agent.init, s.init_path, s.wm_real_steps) for s in specs("arms.0.init=scratch", "arms.1.init=cpt")]
    # scratch: the base model, and no LWM data paid for it; cpt: the recipe's CPT-only checkpoint
    assert got == [("real", "scratch", "/run/base", 0), ("sim", "cpt", "/run/wm-cpt", 600)]
    unset = specs("agent.init=cpt", "arms.1.init=lwm")  # an arm without its own init takes agent.init
    assert [(s.agent.init, s.init_path) for s in unset] == [("cpt", "/run/wm-cpt"), ("lwm", "/run/wm")]


def test_the_policys_history_and_action_tokens_follow_the_arms_domain(tmp_path):
    from agentworld.config import agent_for

    grid = agent_for(load_config(QUICKSTART), "frozenlake")
    assert (grid.max_action_tokens, grid.history_turns, grid.history_budget_tokens) == (8, 1, 0)  # the YAML's 8
    shell = load_config(retarget(tmp_path, frozenlake="terminal:train"), ["agent.max_action_tokens=null"])
    a = agent_for(shell, "frozenlake")
    assert (a.max_action_tokens, a.history_turns) == (64, 4)
    assert a.history_budget_tokens == min(1536, shell.model.tiny.max_positions - 64)
    assert "agent.history_turns" in error_of(QUICKSTART, ["agent.history_turns=0"])


def test_an_arms_action_mode_reaches_its_learner_and_actors(tmp_path):
    from rich.console import Console

    from agentworld.config import runtime
    from agentworld.driver import Run, learner_spec

    lwm = {"path": "/run/wm", "wm_version": 3, "stages": {"sft": "/run/wm-sft"}}
    cfg = load_config(QUICKSTART, ["agent.action_mode=choice", "arms.1.action_mode=generate"])
    run = Run(cfg, tmp_path, "r", 0.0, runtime(cfg, tmp_path), Console())
    # the learner's spec carries the agent section its rollout actors also get (driver.start_arm)
    got = [learner_spec(run, arm, 0, "/run/base", lwm, 600, 0).agent.action_mode for arm in cfg.arms]
    assert got == ["choice", "generate"]  # arm 0 unset: agent.action_mode
    msg = error_of(QUICKSTART, ["arms.0.action_mode=freeform"])
    assert "arms.0.action_mode" in msg and QUICKSTART in msg and "choice, generate" in msg and "\n" not in msg


def test_an_arm_is_scored_in_its_eval_env_of_its_own_domain(tmp_path):
    from rich.console import Console

    from agentworld.config import runtime
    from agentworld.driver import Run, learner_spec

    searches = retarget(tmp_path, frozenlake="search:train", cliffwalking="search:heldout")
    split = ["agent.max_action_tokens=null", "world_model.history_turns=null"]
    cfg = load_config(searches, [*split, "arms.1.eval_env=cliffwalking"])
    assert [a.eval_env for a in cfg.arms] == [None, "cliffwalking"]
    run = Run(cfg, tmp_path, "r", 0.0, runtime(cfg, tmp_path), Console())
    specs = [learner_spec(run, arm, 0, "/run/base", {"path": "/run/wm", "wm_version": 1}, 600, 0) for arm in cfg.arms]
    # unset: scored in the env it trains on; set: in that env (the heldout split), with the arm's own agent settings
    assert [(s.eval_env, s.env.id) for s in specs] == [("frozenlake", "search:train"), ("cliffwalking", "search:heldout")]
    assert specs[1].agent.max_action_tokens == 96  # the search domain's

    msg = error_of(searches, [*split, "arms.1.eval_env=nowhere"])
    assert "arms.1.eval_env" in msg and searches in msg and "not a key of envs" in msg and "\n" not in msg
    msg = error_of(QUICKSTART, ["arms.0.eval_env=cliffwalking", "envs.cliffwalking.id=search:heldout"])
    assert "arms.0.eval_env" in msg and "search env" in msg and "gridworld" in msg and "\n" not in msg


def test_cli_bad_eval_env_exits_2_with_one_line():
    r = cli("validate", QUICKSTART, "arms.0.eval_env=nowhere")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "arms.0.eval_env" in lines[0] and QUICKSTART in lines[0]


def test_arms_that_cannot_all_start_on_the_embedded_cluster_are_refused():
    # the quickstart's 2 arms: 2 learners and 2 rollout actors, all reserved at once
    assert load_config(QUICKSTART, ["ray.num_cpus=1"]) is not None  # 4 x 0.25 = 1 CPU
    msg = error_of(QUICKSTART, ["ray.num_cpus=1", "ray.actor_num_cpus=0.5"])
    assert "ray.actor_num_cpus" in msg and "ray.num_cpus 1" in msg and "at most 0.25" in msg and "\n" not in msg
    assert load_config(QUICKSTART, ["ray.num_cpus=1", "ray.actor_num_cpus=0.5", "ray.address=auto"])  # a cluster scales
