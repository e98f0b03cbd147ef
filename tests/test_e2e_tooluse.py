"""experiments/tooluse.yaml, warmup.yaml, transfer.yaml, fidelity_curve.yaml, action_modes.yaml and bc_warmup.yaml
validate; the first two run shortened end to end through the
CLI on real Ray, the real search and MCP sqlite envs (and BabyAI for the warm-up's grid) and a real tiny model.
Every arm trains on a train split and is scored on the heldout split of its real env (arms[i].eval_env), starts from
the init its YAML gives it, and the report is written."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOLUSE = ROOT / "experiments" / "tooluse.yaml"
WARMUP = ROOT / "experiments" / "warmup.yaml"
TRANSFER = ROOT / "experiments" / "transfer.yaml"
FIDELITY = ROOT / "experiments" / "fidelity_curve.yaml"
MODES = ROOT / "experiments" / "action_modes.yaml"
BC_WARMUP = ROOT / "experiments" / "bc_warmup.yaml"
CONTROLLED = ROOT / "experiments" / "controlled_tooluse.yaml"

# a few steps of everything: small LWM data, a few SFT (and CPT) steps, one update of four episodes per arm
_SHORT = ["world_model.sft.steps=8", "world_model.sft.eval_every=8", "world_model.sft.eval_samples=4",
          "world_model.sft.warmup_steps=2", "world_model.generation.max_new_tokens=48", "agent.updates=1",
          "agent.episodes_per_update=4", "eval.episodes=4", "eval.every_updates=1", "run.max_minutes=20"]


def short(path: Path, cpt: bool = False) -> list[str]:
    raw = yaml.safe_load(path.read_text())
    sources = raw["world_model"]["data"]["sources"]
    out = [f"world_model.data.sources.{i}.steps={12 if s.get('heldout') else 30}" for i, s in enumerate(sources)]
    out += [f"arms.{i}.envs_per_actor=4" for i in range(len(raw["arms"]))]
    if cpt:
        out += ["world_model.cpt.steps=4", "world_model.cpt.seq_len=256"]
    return out + _SHORT


def family(raw: dict, env_key: str) -> str:
    """The env family (the id's prefix: babyai, search, mcp, ...) of env `env_key` in the raw YAML `raw`."""
    return raw["envs"][env_key]["id"].split(":")[0]


def subset(path: Path, arms: tuple, out: Path, lwm_learns_only_theirs: bool = False) -> Path:
    """The YAML at `path` with only the named arms, written into `out`; with `lwm_learns_only_theirs`, its LWM's data
    sources too keep only those arms' domains."""
    raw = yaml.safe_load(path.read_text())
    raw["arms"] = [a for a in raw["arms"] if a["name"] in arms]
    assert {a["name"] for a in raw["arms"]} == set(arms)
    if lwm_learns_only_theirs:
        theirs = {family(raw, a["env"]) for a in raw["arms"]}
        raw["world_model"]["data"]["sources"] = [s for s in raw["world_model"]["data"]["sources"]
                                                 if family(raw, s["env"]) in theirs]
    (out / path.name).write_text(yaml.safe_dump(raw))
    return out / path.name


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "agentworld", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def validate(capsys, *args: str) -> subprocess.CompletedProcess:
    """`agentworld validate ARGS` in this process (the CLI's own entry point, without a new interpreter's imports)."""
    from agentworld.cli import main

    capsys.readouterr()
    code = main(["validate", *args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["agentworld", "validate", *args], code, out.out, out.err)


def configured_arms(path: Path) -> dict:
    """arm name -> (init, eval env key, eval env id and kwargs) as the YAML gives them."""
    raw = yaml.safe_load(path.read_text())
    init = raw["agent"]["init"]
    return {a["name"]: (a.get("init", init), a["eval_env"], raw["envs"][a["eval_env"]]) for a in raw["arms"]}


def test_the_yamls_validate_and_every_arm_is_scored_on_a_heldout_split(capsys):
    for path in (TOOLUSE, WARMUP, TRANSFER, FIDELITY, MODES, CONTROLLED, BC_WARMUP):
        r = validate(capsys, str(path))
        assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
        for name, (init, key, env) in configured_arms(path).items():
            assert f"arm {name}:" in r.stdout and f"scored in {key}, init {init}, actions " in r.stdout
            assert "heldout" in env["id"] or env.get("kwargs", {}).get("split") == "heldout", name
    tool = configured_arms(TOOLUSE)
    assert {n.split("-")[0] for n in tool} == {"real", "sim"} and {"sim-controlled-search", "sim-controlled-mcp"} <= set(tool)
    controlled = configured_arms(CONTROLLED)
    assert set(controlled) == {"real-mcp", "sim-mcp", "sim-perturbed-mcp", "real-search", "sim-search",
                               "sim-fictional-search"}
    inits = {(n.rsplit("-", 1)[0], init) for n, (init, _, _) in configured_arms(WARMUP).items()}
    assert inits == {(d, i) for d in ("grid", "search", "mcp") for i in ("scratch", "cpt", "lwm")}
    r = validate(capsys, str(BC_WARMUP))  # both arms cloned on the oracle's episodes, then the same RL
    assert r.stdout.count("actions generate, 1 actor(s), cloned first on 64 oracle episodes") == 2, r.stdout
    assert {init for init, _, _ in configured_arms(BC_WARMUP).values()} == {"scratch", "lwm"}


def test_the_transfer_lwm_never_sees_the_domain_its_transfer_arm_trains_on():
    raw = yaml.safe_load(TRANSFER.read_text())
    learned = {family(raw, s["env"]) for s in raw["world_model"]["data"]["sources"]}
    arms = {a["name"]: (family(raw, a["env"]), a["init"]) for a in raw["arms"]}
    assert learned == {"babyai", "mcp"}
    assert arms["search-transfer"] == ("search", "lwm") and arms["search-scratch"] == ("search", "scratch")
    assert arms["mcp-lwm"] == ("mcp", "lwm")  # the in-domain control: a domain this LWM learned
    # the same recipe and RL budget as warmup.yaml, whose search-lwm arm is the in-domain LWM for search
    warm = yaml.safe_load(WARMUP.read_text())
    for key in ("agent", "eval", "model"):
        assert raw[key] == warm[key], key
    assert {k: v for k, v in raw["world_model"].items() if k != "data"} == \
        {k: v for k, v in warm["world_model"].items() if k != "data"}


def check_run(run: Path, path: Path, stdout: str) -> dict:
    """Every arm has eval rows, all on its configured held-out env; its init is the configured one; the report."""
    for name in ("config.yaml", "metrics.parquet", "curves.png", "report.html", "summary.json"):
        assert (run / name).exists(), name
    assert "report.html" in stdout
    arms = configured_arms(path)
    df = pd.read_parquet(run / "metrics.parquet")
    evals = df[df.kind == "eval"]
    assert set(evals.arm) == set(arms)
    assert evals.success.between(0, 1).all()
    summary = json.loads((run / "summary.json").read_text())
    for name, (init, key, _) in arms.items():
        e = evals[evals.arm == name]
        assert len(e) >= 2 and (e.eval_env == key).all(), (name, set(e.eval_env))  # before and after training
        assert set(df[(df.arm == name) & df.kind.isin(["eval", "train"])].init) == {init}, name
        a = summary["arms"][name]
        assert (a["init"], a["eval_env"], a["updates"]) == (init, key, 1), (name, a)
    html = (run / "report.html").read_text()
    assert "<th>scored in</th>" in html
    return summary


@pytest.mark.slow
def test_short_warmup_end_to_end(tmp_path):
    # two of the nine arms, the two inits no other test trains from (an lwm start is every other test's); the LWM
    # learns their two domains only. Both arms are behaviour-cloned first (agent.bc), on a grid and on search
    # (arms[i].action_mode: the search arm writes its calls itself, the grid arm picks from its menu)
    path = subset(WARMUP, ("grid-scratch", "search-cpt"), tmp_path, lwm_learns_only_theirs=True)
    search = [a["name"] for a in yaml.safe_load(path.read_text())["arms"]].index("search-cpt")  # the YAML's order
    r = cli("run", str(path), f"run.output_dir={tmp_path}", "run.name=w", *short(path, cpt=True),
            "agent.bc.episodes=2", "agent.bc.steps=2", f"arms.{search}.action_mode=generate", timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "w"
    summary = check_run(run, path, r.stdout)
    assert {name: a["action_mode"] for name, a in summary["arms"].items()} == {"grid-scratch": "choice",
                                                                             "search-cpt": "generate"}
    assert 0.0 <= summary["arms"]["search-cpt"]["final_parse_rate"] <= 1.0
    evals = pd.read_parquet(run / "metrics.parquet").query("kind == 'eval'")
    assert {a["init"] for a in summary["arms"].values()} == {"scratch", "cpt"}
    assert (run / "checkpoints" / "wm-cpt" / "config.json").exists()
    for name, a in summary["arms"].items():
        assert a["source"] == "real" and a["real_steps"] > 0
        # the LWM's data is counted against the arms that start from it (lwm, cpt), not against scratch
        assert (a["wm_real_steps"] > 0) == (a["init"] != "scratch"), (name, a)
        # its clone: the oracle's 2 episodes, whose real steps are the arm's own beside those it trained on
        clone = json.loads((run / "checkpoints" / f"bc-{name}" / "bc.json").read_text())
        assert clone["demo_episodes"] == 2 and clone["demo_success"] == 1.0 and clone["steps"] == 2, clone
        assert (Path(clone["path"]) / "config.json").is_file() and f"arm {name}: cloned 2 oracle episodes" in r.stdout
        before = evals[(evals.arm == name) & (evals["update"] == 0)]  # scored before any rollout of its own landed
        assert list(before.real_steps) == [clone["demo_steps"]], (name, before.real_steps, clone)
        assert a["real_steps"] > clone["demo_steps"], (name, a, clone)


def test_the_fidelity_curve_levels_validate_and_its_arms_train_only_in_the_lwm(capsys):
    for level in (40, 240, 960):  # the header's levels
        r = validate(capsys, str(FIDELITY), f"world_model.sft.steps={level}")
        assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    raw = yaml.safe_load(FIDELITY.read_text())
    domains = {family(raw, a["env"]) for a in raw["arms"]}
    assert domains == {"babyai", "search"} and {a["source"] for a in raw["arms"]} == {"sim"}


def test_action_modes_compares_choice_and_generate_on_mcp_alone(capsys):
    raw = yaml.safe_load(MODES.read_text())
    arms = {a["name"]: (raw["envs"][a["env"]]["id"], a["action_mode"]) for a in raw["arms"]}
    assert arms == {"mcp-choice": ("mcp:sqlite-train", "choice"), "mcp-generate": ("mcp:sqlite-train", "generate")}
    r = validate(capsys, str(MODES))
    assert "actions choice" in r.stdout and "actions generate" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_short_tooluse_end_to_end_with_controls_and_faults(tmp_path):
    """A real arm and sim arms on both domains: the perturbed and fictional sim arms, and the real arm scored under
    real faults: the LWM learned both control kinds in SFT (held-out obedience per control in the summary), the sim
    arms' steps carry their controls, fictional episodes ask their world's question, and the fault layer really
    injected faults into the final scoring."""
    from agentworld.controls import parse_control
    from agentworld.replay import ReplayStore

    # three of the six arms (tooluse.yaml's arms are these without the controls; a real search arm runs in
    # test_short_warmup_end_to_end)
    path = subset(CONTROLLED, ("real-mcp", "sim-perturbed-mcp", "sim-fictional-search"), tmp_path)
    r = cli("run", str(path), f"run.output_dir={tmp_path}", "run.name=c", *short(path), timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "c"
    summary = check_run(run, path, r.stdout)
    for name, a in summary["arms"].items():
        if name.startswith("sim"):
            assert a["real_steps"] == 0 and a["sim_steps"] > 0, (name, a)  # no real env step beyond the LWM's data
        else:
            assert a["real_steps"] > 0, (name, a)
        assert a["wm_real_steps"] > 0  # every arm starts from the LWM: its data counts
    measured = set(summary["lwm"]["by_control"])  # the probe takes both kinds in turn (controls.balanced_sample)
    assert "fictional" in measured and measured - {"fictional"}, summary["lwm"]
    for v in summary["lwm"]["by_control"].values():
        assert 0 <= v["obedience"] <= 1 and 0 <= v["obedience_without_control"] <= 1 and v["n"] >= 1
    faults = summary["arms"]["real-mcp"]["under_faults"]
    assert faults["eval_env"] == "sqlite_heldout_faults" and faults["faults"] > 0 and 0 <= faults["success"] <= 1
    assert "under injected real faults" in (run / "report.html").read_text()
    rows = ReplayStore(str(run / "replay")).table().to_pylist()
    kinds = {}
    for row in rows:
        c = parse_control(row["control"])
        if c is not None:
            kinds.setdefault(row["arm"], set()).add(c.kind)
    assert kinds == {"sim-perturbed-mcp": {"perturbation"}, "sim-fictional-search": {"fictional"}}, kinds
    firsts = [row["obs"] for row in rows if row["arm"] == "sim-fictional-search" and row["step"] == 0]
    asked = [o for o in firsts if o.startswith("Question: In which year was ") or o.startswith("Question: Who maintains ")]
    assert asked and len(asked) < len(firsts)  # per episode, half of them (control.fraction 0.5)
    assert not any(row["fault"] for row in rows)  # training envs have no fault layer: only the final scoring does
