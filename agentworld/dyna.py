"""The classic Dyna arm on RLlib: PPO (new API stack) trains a small neural policy once in the real env and once
only inside the LWM (`agentworld/Sim-v0`); both are scored in the real env on a schedule, into the main report.

1. The LWM is reused from `lwm.run_dir` if it finished there, else trained by the main driver's recipe.
2. Each arm builds a PPO Algorithm (local EnvRunner, local Learner) and trains for `ppo.iterations`.
3. Every `eval.every_iterations`, a separate EnvRunner on the REAL env plays the current policy.
4. metrics.parquet, curves.png, report.html and summary.json go to the run dir, as `agentworld run` writes them."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from rich.console import Console
from rich.table import Table


@dataclass
class DynaRunConfig:
    name: str = "dyna_rllib"
    output_dir: str = "runs"
    seed: int = 0
    num_cpus: int = 2  # of the embedded Ray cluster
    torch_threads: int = 1


@dataclass
class LWMSourceConfig:
    run_dir: Optional[str] = None  # where the LWM is (reused if finished) or is trained; None: <run dir>/lwm
    config: str = "experiments/quickstart.yaml"  # the experiment whose world_model recipe trains it
    overrides: List[str] = field(default_factory=list)  # dotted overrides of that experiment


@dataclass
class PPOSettings:
    iterations: int = 30
    train_batch_size: int = 1000  # env steps per iteration
    minibatch_size: int = 250
    num_epochs: int = 10
    lr: float = 1.0e-3
    entropy_coeff: float = 0.01
    gamma: float = 0.99
    hidden: List[int] = field(default_factory=lambda: [64, 64])
    envs_per_runner: int = 32  # the sim arm generates for all of them in one batch


@dataclass
class DynaEvalConfig:
    every_iterations: int = 2
    episodes: int = 32
    greedy: bool = False  # false: score the policy as it acts (sampled); true: its argmax
    success_target: float = 0.8


@dataclass
class DynaConfig:
    run: DynaRunConfig = field(default_factory=DynaRunConfig)
    lwm: LWMSourceConfig = field(default_factory=LWMSourceConfig)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    eval: DynaEvalConfig = field(default_factory=DynaEvalConfig)
    arms: List[str] = field(default_factory=lambda: ["real", "sim"])  # real: PPO on the real env; sim: on the LWM


def load_dyna_config(path: str, overrides: Sequence[str] = ()):
    """The YAML onto the typed defaults, then `key=value` overrides; an unknown key or bad value is a ConfigError."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from agentworld.config import ConfigError

    if not Path(path).is_file():
        raise ConfigError(str(path), None, "config file not found")

    def check_arms(where: str) -> None:
        if not cfg.arms or any(a not in ("real", "sim") for a in cfg.arms):
            raise ConfigError(where, "arms", f"each arm is 'real' or 'sim' (got {list(cfg.arms)})")

    where = str(path)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(DynaConfig), OmegaConf.create(yaml.safe_load(Path(path).read_text()) or {}))
        check_arms(where)
        where = "command line"
        for item in overrides:
            key, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(where, item, "an override must look like key=value")
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, merge=True)
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as e:
        if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
            raise ConfigError(where, None, f"unknown key '{e.full_key}'") from None
        raise ConfigError(where, getattr(e, "full_key", None), str(e).splitlines()[0]) from None
    check_arms(where)
    return cfg


def ensure_lwm(cfg, run_dir: Path, console: Console) -> dict:
    """The LWM's checkpoint, its real env, its simulator settings, its data budget and its fidelity rows.
    The LWM is trained by the main driver unless a finished one is in `lwm.run_dir`."""
    from omegaconf import OmegaConf

    from agentworld.driver import WM_DATA_ARM
    from agentworld.replay import ReplayStore

    lwm_dir = Path(cfg.lwm.run_dir or run_dir / "lwm")
    done_file = lwm_dir / "checkpoints" / "wm_done.json"
    if done_file.exists():
        console.print(f"reusing trained LWM {lwm_dir / 'checkpoints' / 'wm'}")
    else:
        from agentworld.config import load_config
        from agentworld.driver import train_world_model

        wcfg = load_config(cfg.lwm.config, [*cfg.lwm.overrides, f"run.output_dir={lwm_dir.parent}", f"run.name={lwm_dir.name}"])
        train_world_model(wcfg, cfg.lwm.config)
    from agentworld.config import ExperimentConfig, lwm_generation

    wcfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.load(lwm_dir / "config.yaml"))
    env = wcfg.envs[wcfg.world_model.env]  # the sim is of the env whose data trained it: say it once
    prefix, _, gym_id = env.id.partition(":")
    if prefix != "gymnasium":
        from agentworld.config import ConfigError

        raise ConfigError(str(lwm_dir / "config.yaml"), "world_model.env",
                          f"the LWM simulates {env.id}; the RLlib Dyna arm needs a gymnasium env")
    done = json.loads(done_file.read_text())
    return {
        "path": str(lwm_dir / "checkpoints" / "wm"),
        "env_id": gym_id, "env_kwargs": OmegaConf.to_container(env.kwargs), "max_steps": int(env.max_steps),
        "history_turns": int(wcfg.world_model.history_turns),
        "max_new_tokens": lwm_generation(wcfg.world_model).max_new_tokens,
        "temperature": float(wcfg.world_model.generation.temperature),
        "wm_real_steps": ReplayStore(str(wcfg.replay.dir or lwm_dir / "replay")).count(arm=WM_DATA_ARM, source="real"),
        "metrics": [m for m in done.get("metrics", []) if m.get("kind") in ("wm", "wm_train")],
    }


def ppo_config(cfg, lwm: dict, arm: str):
    """PPO on the new API stack, all local (no remote EnvRunner or Learner), on the real env or on Sim-v0."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.connectors.env_to_module import FlattenObservations
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    import agentworld.gym_sim as gym_sim

    p = cfg.ppo
    if arm == "real":
        env, mode = lwm["env_id"], "sync"
        env_config = dict(lwm["env_kwargs"], max_episode_steps=lwm["max_steps"])  # the sim truncates there too
    else:
        env, mode = gym_sim.SIM_ID, "vector_entry_point"  # one batched generation for all sim envs
        env_config = {k: lwm[k] for k in ("env_id", "env_kwargs", "max_steps", "history_turns", "max_new_tokens",
                                          "temperature")} | {"model_path": lwm["path"]}
    return (PPOConfig()
            .environment(env, env_config=env_config)
            .env_runners(num_env_runners=0, num_envs_per_env_runner=p.envs_per_runner, gym_env_vectorize_mode=mode,
                         # Discrete observations (a cell index) reach the MLP one-hot
                         env_to_module_connector=lambda env, spaces=None, device=None: FlattenObservations())
            .learners(num_learners=0)
            .training(train_batch_size_per_learner=p.train_batch_size, minibatch_size=p.minibatch_size,
                      num_epochs=p.num_epochs, lr=p.lr, entropy_coeff=p.entropy_coeff, gamma=p.gamma)
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(p.hidden)))
            .debugging(seed=cfg.run.seed))


def real_evaluator(cfg, lwm: dict):
    """An EnvRunner on the REAL env with the arms' connectors and module; it only plays, never trains."""
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    return SingleAgentEnvRunner(config=ppo_config(cfg, lwm, "real").env_runners(num_envs_per_env_runner=1))


def evaluate_real(evaluator, algo, episodes: int, greedy: bool) -> dict:
    """The arm's current policy, `episodes` episodes in the real env: success (ended with a positive reward)
    and mean return."""
    evaluator.module.set_state(algo.env_runner.module.get_state())
    eps = evaluator.sample(num_episodes=episodes, explore=not greedy)
    wins = [bool(e.is_terminated and e.get_rewards()[-1] > 0) for e in eps]
    return {"success": sum(wins) / len(eps), "return": sum(e.get_return() for e in eps) / len(eps),
            "length": sum(len(e) for e in eps) / len(eps), "episodes": len(eps)}


def train_arm(cfg, lwm: dict, arm: str, run_dir: Path, console: Console) -> list[dict]:
    """One PPO arm, trained in the real env or in the LWM, scored in the real env; returns its metrics rows."""
    from agentworld.metrics import metric_row

    algo = ppo_config(cfg, lwm, arm).build_algo()
    evaluator = real_evaluator(cfg, lwm)
    sim = algo.env_runner.env.unwrapped if arm == "sim" else None
    wm_real_steps = lwm["wm_real_steps"] if arm == "sim" else 0
    rows: list[dict] = []
    t0, steps = time.time(), 0

    def log(kind: str, it: int, **row) -> dict:
        rows.append(metric_row(kind, arm=arm, source=arm, update=it, real_steps=0 if sim else steps,
                               sim_steps=steps if sim else 0, wm_real_steps=wm_real_steps, wall_time=time.time() - t0,
                               **row))
        return rows[-1]

    ev = cfg.eval
    log("eval", 0, **evaluate_real(evaluator, algo, ev.episodes, ev.greedy))
    for it in range(1, cfg.ppo.iterations + 1):
        r = algo.train()
        steps = int(r["env_runners"]["num_env_steps_sampled_lifetime"])
        learner = r["learners"]["default_policy"]
        extra = {"sim_parse_errors": sim.parse_errors, "sim_steps_per_s": sim.steps / max(sim.seconds, 1e-9)} if sim else {}
        log("train", it, train_env_return=float(r["env_runners"].get("episode_return_mean", float("nan"))),
            policy_loss=float(learner["policy_loss"]), vf_loss=float(learner["vf_loss"]),
            entropy=float(learner["entropy"]), **extra)
        if it % ev.every_iterations == 0 or it == cfg.ppo.iterations:
            e = log("eval", it, **evaluate_real(evaluator, algo, ev.episodes, ev.greedy))
            console.print(f"{arm:>4} it {it:3d}  {'sim' if sim else 'real'} steps {steps:6d}  real-env success "
                          f"{e['success']:.2f}  return {e['return']:.2f}  {e['wall_time']:.0f}s"
                          + (f"  sim {extra['sim_steps_per_s']:.0f} steps/s, {extra['sim_parse_errors']} "
                             "unparseable states" if sim else ""))
    algo.save_to_path(str((run_dir / "checkpoints" / f"ppo-{arm}").resolve()))
    evaluator.stop()
    algo.stop()
    return rows


def run_dyna(cfg) -> dict:
    """The whole experiment; returns the summary (also <run dir>/summary.json)."""
    import ray
    import torch
    from omegaconf import OmegaConf

    from agentworld.cluster import init_local
    from agentworld.report import write_report

    console = Console(soft_wrap=True)
    torch.set_num_threads(cfg.run.torch_threads)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    lwm = ensure_lwm(cfg, run_dir, console)
    console.print(f"LWM {lwm['path']}: simulates {lwm['env_id']} {lwm['env_kwargs']}, trained on "
                  f"{lwm['wm_real_steps']} real steps")
    threads = {"OMP_NUM_THREADS": str(cfg.run.torch_threads), "TOKENIZERS_PARALLELISM": "false"}
    init_local(cfg.run.num_cpus, threads)
    try:
        rows = [r for arm in cfg.arms for r in train_arm(cfg, lwm, arm, run_dir, console)]
    finally:
        ray.shutdown()
    config = dict(OmegaConf.to_container(cfg), lwm_used={k: v for k, v in lwm.items() if k != "metrics"})
    summary = write_report(run_dir, lwm["metrics"] + rows, config, success_target=cfg.eval.success_target)
    sim_rows = [r for r in rows if r["kind"] == "train" and r["arm"] == "sim"]
    if sim_rows:
        summary["sim"] = {"steps_per_s": sim_rows[-1]["sim_steps_per_s"], "parse_errors": sim_rows[-1]["sim_parse_errors"]}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(_final_table(summary))
    console.print(f"report: [bold]{(run_dir / 'report.html').resolve()}[/bold]")
    return summary


def _final_table(summary: dict) -> Table:
    table = Table(title="PPO, scored in the real env")
    for col in ("arm", "success", "return", "real steps", "sim steps", "LWM data steps", "to target"):
        table.add_column(col)
    for name, a in summary["arms"].items():
        to = a["to_target"]
        table.add_row(name, f"{a['final_success']:.2f}", f"{a['final_return']:.2f}", str(a["real_steps"]),
                      str(a["sim_steps"]), str(a["wm_real_steps"]),
                      "-" if to is None else f"it {to['update']}: {to['real_steps']} real, {to['sim_steps']} sim")
    return table


def main(argv: list[str] | None = None) -> int:
    """`agentworld dyna CONFIG [key=value ...]` (also `python -m agentworld.dyna`)."""
    import argparse

    from agentworld.config import ConfigError

    p = argparse.ArgumentParser(prog="agentworld dyna", description="PPO (RLlib) in the real env vs in the LWM, "
                                "both scored in the real env")
    p.add_argument("config", help="e.g. experiments/dyna_rllib.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. ppo.iterations=10")
    args = p.parse_args(argv)
    try:
        run_dyna(load_dyna_config(args.config, args.overrides))
    except ConfigError as e:
        print(f"agentworld: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
