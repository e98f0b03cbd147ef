"""The driver: an experiment as a short recipe of phases (docs/architecture.md).

    collect LWM data -> base model -> LWM -> arms -> wait, with a live table -> report

Each phase is a function below, in that order. A rerun of the same run dir reuses the collected data, the base
model and a finished LWM."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentworld.cluster import claim_run_dir, record_cluster, start_ray
from agentworld.config import (ArmConfig, ConfigError, Runtime, agent_for, lwm_generation, runtime, save_config,
                               section)
from agentworld.metrics import first_line, metric_row
from agentworld.registry import ARM_KINDS, LOSSES

WM_DATA_ARM = "wm_data"
START_STATES = 64  # real resets a simulating arm draws its start states from


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


@dataclass
class Run:
    """One experiment under way: its config, run dir, clock, and the cluster-wide services every phase uses."""
    cfg: Any
    run_dir: Path
    run_id: str
    t0: float
    runtime: Runtime
    console: Console
    replay: Any = None
    registry: Any = None
    interrupted: int | None = None  # the signal that stopped the run (SIGINT, SIGTERM): exit code 128 + it
    embedded: bool = True  # Ray started by this driver (not a cluster it joined)

    def note_processes(self) -> None:
        """Record the embedded cluster's processes so far: a rerun after this driver is killed ends them."""
        if self.embedded:
            record_cluster(self.run_dir)


def end_ray(run: Run) -> None:
    """Seal the replay's WAL, so the run's rows are IPC file segments that pyarrow.dataset reads, then end Ray. The
    replay seals on the SIGTERM of `ray.shutdown()` too, but a worker may exit on its raylet's death before that."""
    try:
        ray.get(run.replay.close.remote(), timeout=60)
    except (ray.exceptions.RayError, TimeoutError):  # a dead replay: the next load seals its WAL
        pass
    ray.shutdown()


def open_run(cfg, config_path: str | None = None) -> Run:
    """Make the run dir, save the resolved config, start Ray, the replay and the weight registry."""
    from agentworld.replay import start_replay
    from learners.weight_sync import WeightRegistry

    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    embedded = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    ended = claim_run_dir(run_dir) if embedded else []  # a killed earlier driver's cluster processes
    save_config(cfg, run_dir / "config.yaml")
    console = Console(soft_wrap=True)  # a path or an error in a log stays on one line, whatever the width
    run = Run(cfg, run_dir, f"{cfg.run.name}-{int(time.time())}", time.time(), runtime(cfg, run_dir), console,
              embedded=embedded)
    run.console.print(f"run [bold]{cfg.run.name}[/bold] -> {run_dir}" + (f"  (config {config_path})" if config_path else ""))
    for what in ended:
        run.console.print(f"[yellow]ended {what}, left behind by a killed earlier run of this run dir[/yellow]")
    start_ray(cfg.ray)
    run.replay = start_replay(str(Path(cfg.replay.dir or run_dir / "replay")), cfg.replay.capacity, cfg.replay.shards)
    run.registry = WeightRegistry.remote()
    run.note_processes()
    return run


def run_experiment(cfg, config_path: str | None = None) -> dict:
    """Run an experiment end to end; returns the summary (also in <run dir>/summary.json). The report and summary are
    written however the run ends: finished, with failed arms (summary status `failed`), or stopped by SIGINT or SIGTERM
    (status `interrupted`, after the arms stop)."""
    import torch

    from agentworld.tracking import Tracker

    torch.set_num_threads(cfg.ray.torch_threads)
    run = open_run(cfg, config_path)
    tracker = Tracker(run.run_dir, cfg.tracking, section_dict(cfg), run.t0)
    metrics: list[dict] = []
    with stop_signals(run):
        try:
            data = collect_lwm_data(run)
            base_path = build_base_model(run, data.rows)
            lwm, wm_metrics, wm_learner = train_lwm(run, base_path, data, keep=cfg.world_model.continual.enabled)
            metrics += wm_metrics
            tracker.log(wm_metrics)
            clones = clone_arms(run, base_path, lwm)
            arms = start_arms(run, base_path, lwm, wm_real_steps=data.real_steps, clones=clones)
            metrics += wait_for_arms(run, arms, tracker, lwm, wm_metrics, wm_learner)
        except KeyboardInterrupt:  # before the arms ran: what there is goes in the report
            run.interrupted = run.interrupted or signal.SIGINT
        except ray.exceptions.RayError as e:  # the LWM's learner or data actor died: no arm can start
            cause = first_line(e)
            run.console.print(f"[red]the run failed before its arms: {cause}[/red]")
            metrics.append(metric_row("fault", what="before the arms", cause=cause, action="run failed",
                                      wall_time=time.time() - run.t0))
        finally:
            tracker.close()
            end_ray(run)
    if run.interrupted:
        run.console.print(f"[yellow]{signal.Signals(run.interrupted).name}: stopped; the partial report follows. "
                          "Rerun the same command to resume from the run dir[/yellow]")
        metrics.append(metric_row("fault", what="run", cause=signal.Signals(run.interrupted).name, action="interrupted",
                                  signal=int(run.interrupted), wall_time=time.time() - run.t0))
    return write_outputs(run, metrics)


@contextmanager
def stop_signals(run: Run):
    """SIGINT and SIGTERM stop the run as Ctrl-C does (a KeyboardInterrupt where the driver is), noting which came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        run.interrupted = signum
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def section_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg)


# -- 1. the LWM's real data ------------------------------------------------------------------------------

@dataclass
class LWMData:
    rows: list[dict]  # every training and held-out transition, each with its env and domain
    arms: list[str]  # the replay arms holding them, one per source
    heldout_arms: list[str]  # the sources held out whole
    real_steps: int  # real env steps this run spent on them (imports cost none)


def lwm_sources(cfg) -> list:
    """`world_model.data.sources`, or the one source of a config without them: world_model.env played by
    data.policy for data.steps."""
    from agentworld.config import WMSourceConfig

    d = cfg.world_model.data
    return [section(s) for s in d.sources] or [WMSourceConfig(env=cfg.world_model.env, steps=d.steps, policy=d.policy)]


def collect_lwm_data(run: Run) -> LWMData:
    """Each source's transitions in the replay, under an arm of its own; what an earlier attempt of this run dir
    gathered or imported counts. The sources an env plays are collected side by side, one rollout actor each."""
    from actors.rollout import retire

    sources = lwm_sources(run.cfg)
    arms = [WM_DATA_ARM if len(sources) == 1 else f"{WM_DATA_ARM}.{i}" for i in range(len(sources))]
    playing = []  # (env key, its actor, its task)
    for i, (src, arm) in enumerate(zip(sources, arms)):
        if src.env is None:
            _import_source(run, src, arm)
        elif (have := ray.get(run.replay.count.remote(arm=arm, source="real"))) < src.steps:
            seed = run.cfg.run.seed + 7919 * (i + 1) + have
            playing.append((src.env, *_play_source(run, src, arm, src.steps - have, seed)))
    if playing:
        with run.console.status(f"collecting real transitions of {', '.join(env for env, _, _ in playing)}"):
            try:
                ray.get([task for _, _, task in playing])
            finally:
                retire([actor for _, actor, _ in playing])
    rows, real_steps = [], 0
    for src, arm in zip(sources, arms):
        table = ray.get(run.replay.sample.remote(arm=arm, source="real"))
        run.console.print(f"LWM data: {table.num_rows} real transitions from {src.env or src.data}")
        rows += table.to_pylist()
        real_steps += table.num_rows if src.env is not None else 0
    return LWMData(rows, arms, [a for a, s in zip(arms, sources) if s.heldout], real_steps)


def _play_source(run: Run, src, arm: str, steps: int, seed: int) -> tuple:
    """A rollout actor playing `steps` more transitions of the source's env with its policy: (actor, its task)."""
    from actors.rollout import RolloutActor, RolloutSpec

    cfg = run.cfg
    env = section(cfg.envs[src.env])
    spec = RolloutSpec(run_id=run.run_id, arm=ArmConfig(name=arm, source="real", env=src.env, envs_per_actor=16),
                       kind=ARM_KINDS.get("real")(), env=env, domain=env_facts(env, 0)[0], agent=agent_for(cfg, src.env),
                       runtime=run.runtime, seed=seed, policy=src.policy, actor_id="random0")
    actor = RolloutActor.options(num_cpus=cfg.ray.actor_num_cpus).remote(spec, run.replay, run.registry)
    return actor, actor.collect_steps.remote(steps)


def _import_source(run: Run, src, arm: str) -> None:
    """An AgentWorldBench-style JSONL file (malformed lines are reported and skipped) or a replay dir, into the
    run's replay once."""
    from agentworld.replay import ReplayStore
    from agentworld.schema import epoch_seconds, rows_to_batch
    from agentworld.worldmodel import bench

    if ray.get(run.replay.count.remote(arm=arm)):
        return
    if Path(src.data).is_dir():
        rows = [dict(r, arm=arm, created_at=epoch_seconds(r["created_at"])) for r in ReplayStore(src.data).sample().to_pylist()]
    else:
        found, errors = bench.read_jsonl(src.data)
        rows = bench.bench_to_replay_rows(found, arm=arm)
        if errors:
            run.console.print(f"[yellow]{src.data}: {len(errors)} malformed lines skipped[/yellow]")
    if rows:
        ray.get(run.replay.add.remote(rows_to_batch(rows)))


# -- 2. the base model -----------------------------------------------------------------------------------

def build_base_model(run: Run, rows: list[dict]) -> str:
    """`model.path`, or the tiny default: a BPE tokenizer trained on the run's own text and a tiny Qwen2."""
    from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer

    cfg = run.cfg
    if cfg.model.path:
        return cfg.model.path
    out = run.run_dir / "checkpoints" / "base"
    if (out / "config.json").exists():
        run.console.print(f"reusing base model {out}")
        return str(out)
    t = cfg.model.tiny
    turns = max(agent_for(cfg, arm.env).history_turns for arm in cfg.arms)  # the policy prompts the arms will render
    tok = train_tokenizer(_tokenizer_corpus(rows, render_chatml, turns), t.vocab_size, out)
    build_tiny_model(tok, out, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                     num_layers=t.num_layers, num_heads=t.num_heads, max_positions=t.max_positions, seed=cfg.run.seed)
    run.console.print(f"built tiny Qwen2 (vocab {len(tok)}, hidden {t.hidden_size}, {t.num_layers} layers) in {out}")
    return str(out)


def _tokenizer_corpus(rows: list[dict], render_chatml, history_turns: int) -> list[str]:
    """The run's own text: LWM examples and policy turns rendered exactly as the models will see them."""
    import pyarrow as pa

    from agentworld.policy import episode_prompts
    from agentworld.worldmodel.data import episodes_from_table, wm_examples

    render = lambda m: render_chatml(m, True)  # noqa: E731
    texts = [e.prompt + e.target + "<|im_end|>\n" for e in wm_examples(episodes_from_table(pa.Table.from_pylist(rows)),
                                                                      render, 2)]
    for r, prompt in zip(rows[:2000], episode_prompts(rows, render, history_turns)):
        texts.append(prompt + r["action"] + "<|im_end|>\n")
    return texts


# -- 3. the LWM ------------------------------------------------------------------------------------------

def train_lwm(run: Run, base_path: str, data: LWMData, keep: bool = False):
    """Returns (result, metrics, learner): the learner stays alive only when `keep` (continual training)."""
    from learners.world_model import WMLearnerSpec, WorldModelLearner, progress_file, progress_words, read_progress

    cfg, console = run.cfg, run.console
    done_file = run.run_dir / "checkpoints" / "wm_done.json"
    if done_file.exists():
        done = json.loads(done_file.read_text())
        console.print(f"reusing trained LWM {done['path']} (exact match {done['exact_match']:.3f})")
        if keep:
            console.print("[yellow]continual LWM training needs the LWM trained in this run: "
                          "delete checkpoints/wm_done.json to retrain it[/yellow]")
        return done, done.get("metrics", []), None
    spec = WMLearnerSpec(base_path=base_path, run_dir=str(run.run_dir), t0=run.t0, data_arms=data.arms,
                         heldout_arms=data.heldout_arms, seed=cfg.run.seed, world_model=section(cfg.world_model),
                         runtime=run.runtime, checkpoint_every=cfg.checkpoint.wm_every_steps)
    if (progress := read_progress(spec.run_dir)):
        console.print(f"resuming the LWM's training from {progress_words(progress)}")
    faults: list[dict] = []
    restarts, died = 0, None  # died: (time, cause) until the successor trains again
    with Progress(TextColumn("LWM {task.fields[stage]}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TextColumn("{task.fields[phase]}  exact {task.fields[em]}  edit-sim {task.fields[es]}"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("lwm", total=1, stage="starting", phase="", em="-", es="-")
        while True:  # one learner, and after each death (up to checkpoint.max_restarts) one more from its checkpoint
            learner = WorldModelLearner.options(num_cpus=cfg.ray.actor_num_cpus, num_gpus=cfg.engine.num_gpus).remote(
                spec, run.replay, run.registry)
            ref = learner.train.remote()
            run.note_processes()
            try:
                while True:
                    ready, _ = ray.wait([ref], timeout=1.0)
                    s = ray.get(learner.status.remote())
                    bar.update(task, completed=s["step"], total=max(1, s["total_steps"]), stage=s["stage"],
                               phase=s["phase"], em=_fmt(s["exact_match"], ".3f"), es=_fmt(s["edit_similarity"], ".3f"))
                    if died and (s["stage"] != "starting" or ready):  # training again (or done: stages all saved)
                        faults.append(metric_row("fault", what="LWM learner", who="wm", cause=died[1],
                                                 action=f"restarted from {s['resumed_from']}",
                                                 recovery_s=time.time() - died[0], wall_time=time.time() - run.t0))
                        died = None
                    if ready:
                        break
                done = learner_result(ref)
                break
            except ray.exceptions.RayActorError as e:  # the process died (kill -9, OOM, node lost)
                restarts += 1
                if restarts > cfg.checkpoint.max_restarts:
                    raise
                died = (time.time(), first_line(e))
                console.print(f"[yellow]the LWM learner died ({died[1]}); restarting it from "
                              f"{progress_words(read_progress(spec.run_dir))}[/yellow]")
    metrics = ray.get(learner.metrics.remote()) + faults
    if not keep:
        ray.kill(learner)
    done_file.write_text(json.dumps(dict(done, metrics=metrics)))
    progress_file(spec.run_dir).unlink(missing_ok=True)  # done: deleting wm_done.json retrains from the start
    return done, metrics, learner if keep else None


def stage_table(metrics: list[dict]) -> list[dict]:
    """Held-out fidelity after each stage (the last measurement of each), untrained first."""
    last: dict[str, dict] = {}
    for m in metrics:
        if m["kind"] == "wm":
            last[m["stage"]] = m
    keys = ("stage", "wm_version", "train_step", "exact_match", "edit_similarity", "outcome_accuracy", "n")
    return [{k: last[st].get(k) for k in keys} for st in last]


def domain_table(metrics: list[dict]) -> list[dict]:
    """Per stage and domain, the main metric of each predictor (the LWM as `model`, copy, retrieve)."""
    out: dict[tuple, dict] = {}
    for m in metrics:
        if m["kind"] == "wm_domain":
            row = out.setdefault((m["stage"], m["domain"]), dict(stage=m["stage"], domain=m["domain"],
                                                                 main_metric=m["main_metric"], n=m["n"]))
            row[m["predictor"]] = m["main"]
    return list(out.values())


def _f3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def train_world_model(cfg, config_path: str | None = None) -> list[dict]:
    """Only the LWM: gather data, build the base model, run the stages; writes wm_stages.json and
    fidelity.md (held-out fidelity after each stage) to the run dir."""
    (Path(cfg.run.output_dir) / cfg.run.name / "checkpoints" / "wm_done.json").unlink(missing_ok=True)  # always retrains
    run = open_run(cfg, config_path)
    try:
        data = collect_lwm_data(run)
        _, metrics, _ = train_lwm(run, build_base_model(run, data.rows), data)
    finally:
        end_ray(run)
    table, domains = stage_table(metrics), domain_table(metrics)
    (run.run_dir / "wm_stages.json").write_text(json.dumps({"stages": table, "domains": domains, "metrics": metrics},
                                                           indent=2, default=str))
    lines = ["| stage | exact match | edit similarity | outcome accuracy | n |", "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['exact_match']:.3f} | {r['edit_similarity']:.3f} | {r['outcome_accuracy']:.3f} | {r['n']} |"
              for r in table]
    lines += ["", "Per domain, the main metric of the LWM after each stage, and of the copy and retrieve baselines on "
              "the same held-out transitions:", "", "| stage | domain | main metric | LWM | copy | retrieve | n |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['domain']} | {r['main_metric']} | {_f3(r.get('model'))} | {_f3(r.get('copy'))} | "
              f"{_f3(r.get('retrieve'))} | {r['n']} |" for r in domains]
    (run.run_dir / "fidelity.md").write_text("\n".join(lines) + "\n")
    out = Table(title=f"LWM held-out fidelity by stage ({', '.join(s.env or s.data for s in lwm_sources(cfg))})")
    for col in ("stage", "exact", "edit-sim", "outcome", "n"):
        out.add_column(col)
    for r in table:
        out.add_row(r["stage"], f"{r['exact_match']:.3f}", f"{r['edit_similarity']:.3f}", f"{r['outcome_accuracy']:.3f}", str(r["n"]))
    run.console.print(out)
    run.console.print(f"wrote {run.run_dir / 'fidelity.md'}")
    return table


# -- 4. the arms -----------------------------------------------------------------------------------------

@dataclass
class Arms:
    learners: dict  # arm name -> AgentLearner
    pools: dict  # arm name -> ActorPool
    cursor: int | list  # the replay's cursor before the arms started (earlier attempts' rows are not theirs)
    start: dict = field(default_factory=dict)  # arm name -> () -> (learner, pool): (re)starts it from its checkpoint


def clone_arms(run: Run, base_path: str, lwm: dict) -> dict:
    """With agent.bc.episodes: each arm's start checkpoint fine-tuned on the oracle's actions in its env
    (learners/bc.py), all arms at once; arm name -> what its `checkpoints/bc-<arm>/bc.json` says. A rerun reuses them."""
    if run.cfg.agent.bc.episodes <= 0:
        return {}
    from learners.bc import behaviour_clone

    refs = {}
    for arm in run.cfg.arms:
        agent = agent_for(run.cfg, arm.env, arm.init, arm.action_mode)
        out = run.run_dir / "checkpoints" / f"bc-{arm.name}"
        refs[arm.name] = behaviour_clone.options(num_cpus=run.cfg.ray.actor_num_cpus).remote(
            init_path(agent.init, base_path, lwm), str(out), section(run.cfg.envs[arm.env]), agent, run.runtime,
            run.cfg.run.seed, arm.name)
    bc = run.cfg.agent.bc
    run.console.print(f"behaviour cloning {len(refs)} arm(s): {bc.episodes} oracle episodes each, {bc.steps} steps")
    clones = {}
    for name, ref in refs.items():
        clones[name] = c = ray.get(ref)
        run.console.print(f"arm {name}: {'reusing its clone of' if c.get('reused') else 'cloned'} "
                          f"{c['demo_episodes']} oracle episodes ({c['demo_steps']} real steps, "
                          f"oracle success {c['demo_success']:.2f}) in {c['steps']} steps, loss {c['loss_first']:.3f} "
                          f"-> {c['loss_last']:.3f}, {c['seconds']:.0f} s")
    return clones


def start_arms(run: Run, base_path: str, lwm: dict, wm_real_steps: int, clones: dict | None = None) -> Arms:
    """Each arm's AgentLearner and its pool of RolloutActors, of the arm's kind (agentworld/arms); an arm in `clones`
    starts from its behaviour-cloned checkpoint (clone_arms)."""
    from functools import partial

    from actors.pool import request_cluster

    cursor = ray.get(run.replay.cursor.remote())
    arms = Arms({}, {}, cursor)
    for a_idx, arm in enumerate(run.cfg.arms):
        seed = run.cfg.run.seed * 1000 + 100 * a_idx  # arms sample independently
        arms.start[arm.name] = partial(start_arm, run, arm, seed, base_path, lwm, wm_real_steps, cursor,
                                       (clones or {}).get(arm.name))
        arms.learners[arm.name], arms.pools[arm.name] = arms.start[arm.name]()
    request_cluster(arms.pools.values())
    run.note_processes()
    return arms


def start_arm(run: Run, arm, seed: int, base_path: str, lwm: dict, wm_real_steps: int, cursor: int | list,
              clone: dict | None = None):
    """The arm's learner, then its pool. A learner that resumes from the arm's checkpoint (a restart, or a rerun of the
    run dir) says so first: the actors then start from that checkpoint, at its version, and play that version's rounds
    again from the same seeds (rollout.play_round): the episodes an uninterrupted run played there."""
    from actors.pool import ActorPool
    from actors.rollout import LWMSpec, RolloutSpec
    from agentworld.config import actor_bounds
    from learners.agent import AgentLearner

    cfg = run.cfg
    spec = learner_spec(run, arm, seed, base_path, lwm, wm_real_steps, cursor, clone)
    learner = AgentLearner.options(num_cpus=cfg.ray.actor_num_cpus, num_gpus=cfg.engine.num_gpus).remote(
        spec, run.replay, run.registry)
    policy, version = ray.get(learner.resumes_from.remote()) or (spec.init_path, 0)
    if version:
        run.console.print(f"arm {arm.name}: resuming from update {version} ({policy})")
    ray.get(run.registry.forget.remote(f"policy/{arm.name}"))  # a restart: the dead learner's versions are gone
    kind = spec.kind
    domain, states = env_facts(spec.env, START_STATES if kind.uses_lwm else 0)
    wm = cfg.world_model
    aspec = RolloutSpec(run_id=run.run_id, arm=spec.arm, kind=kind, env=spec.env, domain=domain, agent=spec.agent,
                        runtime=run.runtime, seed=seed, policy=policy, policy_version=version,
                        lwm=LWMSpec(lwm["path"], lwm["wm_version"], wm.history_turns, lwm_generation(wm), states,
                                    dict(wm.prompts))
                        if kind.uses_lwm else None,
                        **shared_engines(run, arm.name, kind, policy, version, lwm, seed))
    lo, hi = actor_bounds(arm)
    pool = ActorPool(aspec, run.replay, run.registry, lo=lo, hi=hi, start=arm.actors, num_cpus=cfg.ray.actor_num_cpus,
                     interval_s=cfg.pool.interval_s, t0=run.t0, episodes_per_update=cfg.agent.episodes_per_update,
                     max_replacements=cfg.pool.max_replacements)
    return learner, pool


def learner_spec(run: Run, arm, seed: int, base_path: str, lwm: dict, wm_real_steps: int, cursor: int | list,
                 clone: dict | None = None):
    """What the arm's AgentLearner trains (its actors act with the same agent settings and start checkpoint): the agent
    section resolved for the arm's env and `init` (arms[i].init, else agent.init), or its behaviour-cloned checkpoint
    (`clone`, whose oracle steps count as the arm's real steps); the real env it is scored in (arms[i].eval_env, else
    its env)."""
    from learners.agent import LearnerSpec

    cfg = run.cfg
    kind, agent = ARM_KINDS.get(arm.source)(), agent_for(cfg, arm.env, arm.init, arm.action_mode)
    eval_env = arm.eval_env or arm.env  # scored in the real env: its own, or another split of it (arms[i].eval_env)
    return LearnerSpec(arm=section(arm), kind=kind, loss=LOSSES.get(cfg.agent.algorithm),
                       init_path=clone["path"] if clone else init_path(agent.init, base_path, lwm),
                       demo_real_steps=clone["demo_steps"] if clone else 0, run_dir=str(run.run_dir), t0=run.t0,
                       agent=agent, eval=section(cfg.eval), env=section(cfg.envs[eval_env]), eval_env=eval_env,
                       fault_env=section(cfg.envs[arm.fault_env]) if arm.fault_env else None,
                       fault_env_key=arm.fault_env or "",
                       seed=seed,
                       runtime=run.runtime, replay_cursor=cursor, checkpoint_every=cfg.checkpoint.every_updates,
                       # the LWM's data paid for what the policy starts from, or for the env it trains in
                       wm_real_steps=wm_real_steps if kind.uses_lwm or agent.init in ("lwm", "cpt") else 0)


def init_path(init: str, base_path: str, lwm: dict) -> str:
    """The checkpoint an arm's policy starts from: the base model (scratch), the LWM, the LWM recipe's CPT-only
    checkpoint, or a path."""
    if init == "cpt":
        path = lwm.get("stages", {}).get("cpt")
        if path is None:
            raise RuntimeError("init cpt: this run's LWM has no cpt checkpoint (trained before the cpt stage was "
                               "listed?); delete checkpoints/wm_done.json to train it again")
        return path
    return {"lwm": lwm["path"], "scratch": base_path}.get(init, init)


def env_facts(env, starts: int) -> tuple[str, list]:
    """The env's domain, and its distinct start states over `starts` seeded resets of the env as configured (its
    split included): where a simulated episode begins, the observation (which states the task) and its info."""
    from agentworld.envs import make_env_from

    probe = make_env_from(env)
    try:
        states: dict[str, tuple] = {}
        for seed in range(starts):
            obs, info = probe.reset(seed=seed)
            states.setdefault(obs, (obs, info))
        return probe.domain, list(states.values())
    finally:
        probe.close()


def shared_engines(run: Run, arm_name: str, kind, policy_path: str, policy_version: int, lwm: dict, seed: int) -> dict:
    """With engine.shared: the arm's policy engine actor, and where the kind uses the LWM its LWM engine actor."""
    if not run.cfg.engine.shared:
        return {}
    from actors.engine_actor import EngineActor

    def start(name: str, path: str, version: int, seed: int):
        return EngineActor.options(num_cpus=run.cfg.ray.actor_num_cpus, num_gpus=run.cfg.engine.num_gpus).remote(
            name, path, seed, version, run.runtime, run.registry)

    shared = {"policy_engine": start(f"policy/{arm_name}", policy_path, policy_version, seed)}
    if kind.uses_lwm:
        shared["wm_engine"] = start("wm", lwm["path"], lwm["wm_version"], seed + 1)
    return shared


# -- 5. waiting, with a live table -----------------------------------------------------------------------

ACTOR_ERRORS_AFTER_S = 20.0  # seconds without progress before an arm's actors' errors are read and reported


class Supervisor:
    """The arms under way, as the driver sees them on every tick: each learner's run, status and new metric rows. A
    dead learner restarts with its arm from the arm's last checkpoint, up to checkpoint.max_restarts; past them, or on
    an error in the learner, the arm fails. An arm without progress for run.stall_timeout_s fails too. Every fault is
    a `fault` row."""

    def __init__(self, run: Run, arms: Arms):
        self.run, self.arms = run, arms
        cfg = run.cfg
        self.refs = {name: l.run.remote() for name, l in arms.learners.items()}
        self.rows = {name: [] for name in arms.learners}  # each arm's learner rows seen
        self.status = {name: {"arm": name, "version": 0, "updates": cfg.agent.updates, "phase": "starting", "real": 0,
                              "sim": 0, "success": None, "return": None} for name in arms.learners}
        self.restarts = {name: 0 for name in arms.learners}
        self.progress = {name: (time.time(), None) for name in arms.learners}
        self.done: set[str] = set()  # arms whose learner returned or died for good
        self.failed: dict[str, str] = {}  # arm -> why it failed
        self.faults: list[dict] = []
        self.pool_rows: list[dict] = []  # the decisions of pools replaced with their learner
        self.errors_checked: dict[str, float] = {}  # arm -> when its actors' errors were last read
        self.actor_errors: dict[str, set[str]] = {}  # arm -> the actor errors reported

    def pending(self) -> list[str]:
        return [name for name in self.refs if name not in self.done]

    def trained(self) -> dict:
        """Rows and episodes each arm's learner has trained on, from its train rows seen."""
        out = {}
        for name, rows in self.rows.items():
            train = [r for r in rows if r["kind"] == "train"]
            out[name] = (sum(r["batch_steps"] for r in train), sum(r["batch_episodes"] for r in train))
        return out

    def tick(self) -> list[dict]:
        """Wait up to a second for a learner to end; returns the new metric rows (fault rows included)."""
        names = self.pending()
        ready, _ = ray.wait([self.refs[n] for n in names], num_returns=len(names), timeout=1.0)
        n_faults = len(self.faults)
        for name in [n for n in names if self.refs[n] in ready]:
            self._ended(name)
        new = self._poll()
        for pool in self.arms.pools.values():  # a finished arm's idle actors too: the fault is recorded
            self.faults += pool.replace_dead()
        self._watchdog()
        return new + self.faults[n_faults:]

    def _poll(self) -> list[dict]:
        """Status and new rows of every live learner; a dead one is noticed by its run ending (`_ended`)."""
        names = self.pending()
        status = [self.arms.learners[n].status.remote() for n in names]
        new_rows = [self.arms.learners[n].metrics.remote(len(self.rows[n])) for n in names]
        out = []
        for name, s_ref, r_ref in zip(names, status, new_rows):
            try:
                self.status[name], rows = ray.get(s_ref), ray.get(r_ref)
            except ray.exceptions.RayError:
                continue
            self.rows[name] += rows
            out += rows
        return out

    def _ended(self, name: str) -> None:
        try:
            learner_result(self.refs[name])
            self.done.add(name)
        except ray.exceptions.RayActorError as e:  # the process died (kill -9, OOM, node lost)
            self._restart(name, first_line(e))
        except (ray.exceptions.RayError, ConfigError) as e:  # an error in its code: a restart would meet it again
            self._fail(name, "learner", f"learner error: {str(e).strip().splitlines()[-1][:300]}")

    def _restart(self, name: str, cause: str) -> None:
        cfg, t = self.run.cfg, time.time()
        if self.restarts[name] >= cfg.checkpoint.max_restarts:
            self._fail(name, "learner", f"learner died ({cause}); {self.restarts[name]} restart(s) of "
                                        f"checkpoint.max_restarts={cfg.checkpoint.max_restarts} used")
            return
        self.restarts[name] += 1
        last = self.status[name]["version"]  # as last polled: the checkpoint may be a tick newer (then 0 lost)
        self.arms.pools[name].kill()  # its actors play the dead learner's versions: a lost timeline
        self.pool_rows += self.arms.pools[name].rows
        learner, pool = self.arms.start[name]()
        self.arms.learners[name], self.arms.pools[name] = learner, pool
        s = ray.get(learner.status.remote())
        self.rows[name] = self.rows[name][:s["rows"]]  # rows after the checkpoint were the lost timeline's
        self.refs[name], self.status[name] = learner.run.remote(), s
        lost = max(0, last - s["version"])
        self.progress[name] = (time.time(), None)
        self.faults.append(metric_row("fault", arm=name, what="learner", who=f"policy/{name}", cause=cause,
                                      action=f"restarted from update {s['version']}",
                                      updates_lost=lost,
                                      recovery_s=time.time() - t, wall_time=time.time() - self.run.t0))
        self.run.console.print(f"[yellow]arm {name}: learner died ({cause}); restarted from update {s['version']}, "
                               f"{lost} update(s) lost[/yellow]")

    def _fail(self, name: str, what: str, cause: str) -> None:
        self.failed[name] = cause
        self.done.add(name)
        self.arms.pools[name].kill()
        self.faults.append(metric_row("fault", arm=name, what=what, who=f"policy/{name}", cause=cause,
                                      action="arm failed", wall_time=time.time() - self.run.t0))
        self.run.console.print(f"[red]arm {name} failed: {cause}[/red]")

    def _watchdog(self) -> None:
        """An arm whose learner status has not changed for run.stall_timeout_s (rows landed, update, phase) fails,
        named with the cause the driver sees; its learner is ended. Before that, an arm without progress for
        ACTOR_ERRORS_AFTER_S has its actors' errors (a full disk, say) reported, each new one once."""
        limit = self.run.cfg.run.stall_timeout_s
        for name in self.pending():
            s = self.status[name]
            key = (s["real"], s["sim"], s["version"], s["phase"])
            since, last = self.progress[name]
            if key != last:
                self.progress[name] = (time.time(), key)
                continue
            idle = time.time() - since
            if idle > ACTOR_ERRORS_AFTER_S and time.time() - self.errors_checked.get(name, 0) > ACTOR_ERRORS_AFTER_S:
                self.errors_checked[name] = time.time()
                self._report_actor_errors(name)
            if limit and idle > limit:
                pool = self.arms.pools[name]
                errors = pool.errors()
                cause = (f"no progress for {limit:.0f} s (run.stall_timeout_s) at update {s['version']}, learner "
                         f"{s['phase']}; {pool.size} live rollout actor(s), {pool.replaced} replaced "
                         f"(pool.max_replacements={pool.max_replacements})"
                         + (f"; actor errors: {errors[-1]}" if errors else ""))
                ray.kill(self.arms.learners[name])
                self._fail(name, "stall", cause)

    def _report_actor_errors(self, name: str) -> None:
        for line in self.arms.pools[name].errors():
            if line not in self.actor_errors.setdefault(name, set()):
                self.actor_errors[name].add(line)
                self.faults.append(metric_row("fault", arm=name, what="rollout round", who=f"policy/{name}",
                                              cause=line, action="retrying with backoff",
                                              wall_time=time.time() - self.run.t0))
                self.run.console.print(f"[yellow]arm {name}: a rollout round failed ({line}); its actor retries "
                                       "with backoff[/yellow]")

    def collect(self) -> list[dict]:
        """Every learner's rows not read yet (a short wait each: on SIGINT/SIGTERM the arms end with the cluster)."""
        out = []
        for name in self.refs:
            try:
                rows = ray.get(self.arms.learners[name].metrics.remote(len(self.rows[name])), timeout=10)
            except (ray.exceptions.RayError, TimeoutError):
                continue
            self.rows[name] += rows
            out += rows
        return out

    def arm_rows(self) -> list[dict]:
        return [r for rows in self.rows.values() for r in rows]


def wait_for_arms(run: Run, arms: Arms, tracker, lwm: dict, metrics: list[dict], wm_learner) -> list[dict]:
    """Until every arm's learner returns or fails (or max_minutes, or SIGINT/SIGTERM): the live table, pool scaling,
    live metrics, fault handling (Supervisor). Returns the arms' metric rows (and the continual LWM's)."""
    from actors.pool import request_cluster

    cfg, console = run.cfg, run.console
    sup = Supervisor(run, arms)
    wm_ref = wm_learner.continual.remote(arms.cursor) if wm_learner is not None else None
    wm_rows_seen = len(metrics)
    wm_last = next(m for m in reversed(metrics) if m["kind"] == "wm") if metrics else dict(lwm)
    deadline = run.t0 + cfg.run.max_minutes * 60
    try:
        with Live(console=console, refresh_per_second=2) as live:
            while sup.pending():
                new = sup.tick()
                live_status = [sup.status[n] for n in arms.learners if n not in sup.done]
                tracker.log(new + _scale_pools(arms.pools, live_status, sup.trained()))
                if wm_learner is not None:
                    w = ray.get(wm_learner.status.remote())
                    wm_last = {"wm_version": w["version"], "exact_match": w["exact_match"],
                               "edit_similarity": w["edit_similarity"]}
                live.update(_arms_table(sup, arms.pools, wm_last, time.time() - run.t0))
                if time.time() > deadline:
                    console.print(f"[yellow]max_minutes={cfg.run.max_minutes} reached: stopping the arms[/yellow]")
                    for name in sup.pending():
                        arms.learners[name].stop.remote()
                    deadline = float("inf")
    except KeyboardInterrupt:
        run.interrupted = run.interrupted or signal.SIGINT
        sup.collect()
        return sup.arm_rows() + sup.faults + sup.pool_rows + [r for p in arms.pools.values() for r in p.rows]
    for name, reason in sup.failed.items():
        console.print(f"[red]arm {name} failed:[/red] {reason}")
    actor_status = [s for name, p in arms.pools.items() for s in p.stop()]
    request_cluster(arms.pools.values())  # all pools are empty now: the autoscaler may remove idle nodes
    tail, wm_tail = sup.collect(), []
    if wm_ref is not None:
        wm_learner.stop.remote()
        console.print(f"continual LWM training: {ray.get(wm_ref)} rounds on fresh real transitions")
        wm_tail = ray.get(wm_learner.metrics.remote(wm_rows_seen))
    tracker.log(wm_tail + tail)
    for s in actor_status:
        for err in s["errors"]:
            console.print(f"[yellow]actor error:[/yellow] {err}")
    pool_rows = sup.pool_rows + [r for p in arms.pools.values() for r in p.rows]
    return wm_tail + sup.arm_rows() + sup.faults + pool_rows + replay_metric_rows(run, arms.cursor)


def learner_result(ref):
    """A learner's result. Its ConfigError (model.lora.target_modules naming a module its model lacks) is raised as
    itself: one line and exit code 2, as bad input is, not a remote traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, ConfigError):
            raise e.cause from None
        raise


def _scale_pools(pools: dict, statuses: list[dict], trained: dict) -> list[dict]:
    """One tick of every live arm's actor pool; when one changes size, the autoscaler's request follows."""
    from actors.pool import request_cluster

    rows = [r for s in statuses if (r := pools[s["arm"]].step(s["phase"], *trained[s["arm"]]))]
    if any(r["decision"] != "hold" for r in rows):
        request_cluster(pools.values())
    return rows


def _arms_table(sup: Supervisor, pools: dict, wm: dict, elapsed: float) -> Table:
    table = Table(title=f"AgentWorld  {elapsed / 60:.1f} min  |  LWM v{wm['wm_version']}: exact {wm['exact_match']:.3f}, "
                        f"edit-sim {wm['edit_similarity']:.3f}")
    for col in ("arm", "update", "actors", "real steps", "sim steps", "real-env success", "return", "phase"):
        table.add_column(col)
    for name, s in sup.status.items():
        phase = "FAILED" if name in sup.failed else s["phase"]
        if sup.restarts[name]:
            phase += f" ({sup.restarts[name]} restart(s))"
        table.add_row(name, f"{s['version']}/{s['updates']}", str(pools[name].size), str(s["real"]),
                      str(s["sim"]), _fmt(s["success"]), _fmt(s["return"]), phase)
    return table


def replay_metric_rows(run: Run, cursor: int | list) -> list[dict]:
    """The metric rows each arm's kind derives from the arm's replay rows (hybrid routing, control obedience)."""
    out = []
    for arm in run.cfg.arms:
        producers = ARM_KINDS.get(arm.source)().replay_metrics(arm)
        if producers:
            table, _ = ray.get(run.replay.since.remote(cursor, arm=arm.name))
            rows = table.to_pylist()
            for produce in producers:
                out += produce(rows, arm.name, run.t0)
    return out


# -- 6. the report ---------------------------------------------------------------------------------------

def write_outputs(run: Run, metrics: list[dict]) -> dict:
    """metrics.parquet, curves.png, report.html, summary.json; the final table; the copy to storage."""
    from agentworld.report import write_report

    cfg, console = run.cfg, run.console
    summary = write_report(run.run_dir, metrics, section_dict(cfg), success_target=cfg.eval.success_target)
    console.print(_final_table(summary))
    console.print(f"report: [bold]{(run.run_dir / 'report.html').resolve()}[/bold]")
    if cfg.run.storage:
        from agentworld.storage import upload

        console.print(f"run dir copied to {upload(run.run_dir, cfg.run.storage)}")
    if summary["status"] == "failed":
        for name, why in summary["failures"].items():
            console.print(f"[red]arm {name} failed:[/red] {why}")
    return summary


def _final_table(summary: dict) -> Table:
    table = Table(title="final real-env scores")
    for col in ("arm", "source", "starts from", "scored in", "success", "return", "real steps", "sim steps", "wall-clock"):
        table.add_column(col)
    for name, a in summary.get("arms", {}).items():
        table.add_row(name, str(a.get("source")), str(a.get("init") or "-"), str(a.get("eval_env") or "-"),
                      _fmt(a.get("final_success")),
                      _fmt(a.get("final_return")), str(a.get("real_steps")), str(a.get("sim_steps")),
                      f"{(a.get('wall_clock_s') or 0) / 60:.1f} min")
    return table
