"""The driver: builds the replay, the world model and the arms, waits, and reports (ARCHITECTURE.md).

1. A random policy gathers the LWM's budget of real transitions.
2. The tiny default model (tokenizer trained on that text) is built, unless `model.path` names one.
3. The WorldModelLearner trains the LWM on those transitions and publishes versions.
4. Each arm's AgentLearner and RolloutActors train, real or in the simulator; every arm is scored in
   the real env on a schedule.
5. metrics.parquet, curves.png, report.html and summary.json are written to the run dir.
A rerun of the same run dir reuses the collected data, the base model and a finished LWM."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ray
from omegaconf import OmegaConf
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentworld.config import save_config

WM_DATA_ARM = "wm_data"


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def _start_ray(cfg) -> None:
    env_vars = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(cfg.ray.torch_threads)}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")  # set inside a Ray Job: join its cluster
    if address:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=False)
    else:
        # "local": always a new embedded cluster, even if `ray start` left one running on this machine
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env={"env_vars": env_vars},
                 log_to_driver=False)


def _tokenizer_corpus(rows: list[dict], render_chatml) -> list[str]:
    """The run's own text: LWM examples and policy turns rendered exactly as the models will see them."""
    from agentworld.policy import policy_messages
    from agentworld.worldmodel.data import episodes_from_table, wm_examples

    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    texts = [e.prompt + e.target + "<|im_end|>\n" for e in wm_examples(episodes_from_table(table),
                                                                      lambda m: render_chatml(m, True), 2)]
    for r in rows[:2000]:
        prompt = render_chatml(policy_messages(r["env_id"], r["obs"], r["choices"]), True)
        texts.append(prompt + r["action"] + "<|im_end|>\n")
    return texts


def _build_base_model(cfg, run_dir: Path, rows: list[dict], console: Console) -> str:
    from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer

    if cfg.model.path:
        return cfg.model.path
    out = run_dir / "checkpoints" / "base"
    if (out / "config.json").exists():
        console.print(f"reusing base model {out}")
        return str(out)
    t = cfg.model.tiny
    tok = train_tokenizer(_tokenizer_corpus(rows, render_chatml), t.vocab_size, out)
    build_tiny_model(tok, out, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                     num_layers=t.num_layers, num_heads=t.num_heads, max_positions=t.max_positions, seed=cfg.run.seed)
    console.print(f"built tiny Qwen2 (vocab {len(tok)}, hidden {t.hidden_size}, {t.num_layers} layers) in {out}")
    return str(out)


def _collect_wm_data(cfg, run_id, replay, registry, domain, console) -> list[dict]:
    from actors.rollout import RolloutActor

    budget = cfg.world_model.data.steps
    have = ray.get(replay.count.remote(arm=WM_DATA_ARM, source="real"))
    if have < budget:
        env = OmegaConf.to_container(cfg.envs[cfg.world_model.env])
        spec = dict(run_id=run_id, arm=WM_DATA_ARM, actor_id="random0", source="real", env=env, domain=domain,
                    envs_per_actor=16, policy_path=None, agent=OmegaConf.to_container(cfg.agent),
                    seed=cfg.run.seed + 7919 + have, torch_threads=cfg.ray.torch_threads)
        actor = RolloutActor.options(num_cpus=cfg.ray.actor_num_cpus).remote(spec, replay, registry)
        with console.status(f"collecting {budget - have} real transitions with a random policy"):
            ray.get(actor.collect_steps.remote(budget - have))
        ray.kill(actor)
    table = ray.get(replay.sample.remote(arm=WM_DATA_ARM, source="real"))
    console.print(f"LWM data: {table.num_rows} real transitions from {cfg.world_model.env}")
    return table.to_pylist()


def _engine_section(cfg, run_dir: Path) -> dict:
    """The engine section as learners and actors get it: the weights dir resolved, each rank's CPU share added."""
    e = OmegaConf.to_container(cfg.engine)
    e["weights_dir"] = e["weights_dir"] or str(run_dir / "weights")
    e["num_cpus"] = cfg.ray.actor_num_cpus
    return e


def _shared_engines(cfg, engine: dict, arm, policy_path: str, wm_done: dict, registry, seed: int) -> dict:
    """With engine.shared: the arm's policy engine actor, and for a sim arm its LWM engine actor."""
    if not cfg.engine.shared:
        return {}
    from actors.engine_actor import EngineActor

    def start(name: str, path: str, version: int, seed: int):
        spec = dict(kind=cfg.engine.inference, path=path, seed=seed, version=version, vllm=engine["vllm"], name=name,
                    engine=engine, torch_threads=cfg.ray.torch_threads)
        return EngineActor.options(num_cpus=cfg.ray.actor_num_cpus, num_gpus=cfg.engine.num_gpus).remote(spec, registry)

    shared = {"policy_engine": start(f"policy/{arm.name}", policy_path, 0, seed)}
    if arm.source in ("sim", "hybrid"):
        shared["wm_engine"] = start("wm", wm_done["path"], wm_done["wm_version"], seed + 1)
    return shared


def _train_world_model(cfg, run_dir, base_path, replay, registry, t0, console, keep: bool = False):
    """Returns (result, metrics, learner): the learner stays alive only when `keep` (continual training)."""
    from learners.world_model import WorldModelLearner

    done_file = run_dir / "checkpoints" / "wm_done.json"
    if done_file.exists():
        done = json.loads(done_file.read_text())
        console.print(f"reusing trained LWM {done['path']} (exact match {done['exact_match']:.3f})")
        if keep:
            console.print("[yellow]continual LWM training needs the LWM trained in this run: "
                          "delete checkpoints/wm_done.json to retrain it[/yellow]")
        return done, done.get("metrics", []), None
    spec = dict(base_path=base_path, run_dir=str(run_dir), t0=t0, data_arm=WM_DATA_ARM, seed=cfg.run.seed,
                world_model=OmegaConf.to_container(cfg.world_model), torch_threads=cfg.ray.torch_threads,
                engine=_engine_section(cfg, run_dir))
    learner = WorldModelLearner.options(num_cpus=cfg.ray.actor_num_cpus, num_gpus=cfg.engine.num_gpus).remote(
        spec, replay, registry)
    ref = learner.train.remote()
    with Progress(TextColumn("LWM {task.fields[stage]}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TextColumn("{task.fields[phase]}  exact {task.fields[em]}  edit-sim {task.fields[es]}"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("lwm", total=1, stage="starting", phase="", em="-", es="-")
        while True:
            ready, _ = ray.wait([ref], timeout=1.0)
            s = ray.get(learner.status.remote())
            bar.update(task, completed=s["step"], total=max(1, s["total_steps"]), stage=s["stage"], phase=s["phase"],
                       em=_fmt(s["exact_match"], ".3f"), es=_fmt(s["edit_similarity"], ".3f"))
            if ready:
                break
    done = ray.get(ref)
    metrics = ray.get(learner.metrics.remote())
    if not keep:
        ray.kill(learner)
    done_file.write_text(json.dumps(dict(done, metrics=metrics)))
    return done, metrics, learner if keep else None


def stage_table(metrics: list[dict]) -> list[dict]:
    """Held-out fidelity after each stage (the last measurement of each), untrained first."""
    last: dict[str, dict] = {}
    for m in metrics:
        if m["kind"] == "wm":
            last[m["stage"]] = m
    keys = ("stage", "wm_version", "train_step", "exact_match", "edit_similarity", "outcome_accuracy", "n")
    return [{k: last[st].get(k) for k in keys} for st in last]


def train_world_model(cfg, config_path: str | None = None) -> list[dict]:
    """Only the LWM: gather data, build the base model, run the stages; writes wm_stages.json and
    fidelity.md (held-out fidelity after each stage) to the run dir."""
    from agentworld.replay import ReplayService
    from learners.weight_sync import WeightRegistry

    console = Console()
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "checkpoints" / "wm_done.json").unlink(missing_ok=True)  # this command always retrains
    _start_ray(cfg)
    try:
        replay = ReplayService.options(num_cpus=0).remote(str(Path(cfg.replay.dir or run_dir / "replay")))
        registry = WeightRegistry.remote()
        rows = _collect_wm_data(cfg, f"{cfg.run.name}-{int(time.time())}", replay, registry,
                                _env_domain(cfg.envs[cfg.world_model.env]), console)
        base_path = _build_base_model(cfg, run_dir, rows, console)
        _, metrics, _ = _train_world_model(cfg, run_dir, base_path, replay, registry, time.time(), console)
    finally:
        ray.shutdown()
    table = stage_table(metrics)
    (run_dir / "wm_stages.json").write_text(json.dumps({"stages": table, "metrics": metrics}, indent=2, default=str))
    lines = ["| stage | exact match | edit similarity | outcome accuracy | n |", "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['exact_match']:.3f} | {r['edit_similarity']:.3f} | {r['outcome_accuracy']:.3f} | {r['n']} |"
              for r in table]
    (run_dir / "fidelity.md").write_text("\n".join(lines) + "\n")
    out = Table(title=f"LWM held-out fidelity by stage ({cfg.world_model.env})")
    for col in ("stage", "exact", "edit-sim", "outcome", "n"):
        out.add_column(col)
    for r in table:
        out.add_row(r["stage"], f"{r['exact_match']:.3f}", f"{r['edit_similarity']:.3f}", f"{r['outcome_accuracy']:.3f}", str(r["n"]))
    console.print(out)
    console.print(f"wrote {run_dir / 'fidelity.md'}")
    return table


def _arms_table(statuses: list[dict], pools: dict, wm: dict, elapsed: float) -> Table:
    table = Table(title=f"AgentWorld  {elapsed / 60:.1f} min  |  LWM v{wm['wm_version']}: exact {wm['exact_match']:.3f}, "
                        f"edit-sim {wm['edit_similarity']:.3f}")
    for col in ("arm", "update", "actors", "real steps", "sim steps", "real-env success", "return", "phase"):
        table.add_column(col)
    for s in statuses:
        table.add_row(s["arm"], f"{s['version']}/{s['updates']}", str(pools[s["arm"]].size), str(s["real"]),
                      str(s["sim"]), _fmt(s["success"]), _fmt(s["return"]), s["phase"])
    return table


def _new_learner_rows(learners: dict, seen: dict, trained: dict) -> list[dict]:
    """Metrics rows the learners wrote since the last call; keeps each arm's trained (steps, episodes)."""
    rows = []
    for name, new in zip(learners, ray.get([l.metrics.remote(seen[name]) for name, l in learners.items()])):
        seen[name] += len(new)
        for r in new:
            if r["kind"] == "train":
                trained[name] = (trained[name][0] + r["batch_steps"], trained[name][1] + r["batch_episodes"])
        rows += new
    return rows


def _scale_pools(pools: dict, statuses: list[dict], trained: dict) -> list[dict]:
    """One tick of every arm's actor pool; when one changes size, the autoscaler's request follows."""
    from actors.pool import request_cluster

    rows = [r for s in statuses if (r := pools[s["arm"]].step(s["phase"], *trained[s["arm"]]))]
    if any(r["decision"] != "hold" for r in rows):
        request_cluster(pools.values())
    return rows


def run_experiment(cfg, config_path: str | None = None) -> dict:
    """Run an experiment end to end; returns the summary (also in <run dir>/summary.json)."""
    from actors.pool import ActorPool, request_cluster
    from agentworld.config import actor_bounds
    from agentworld.replay import ReplayService
    from agentworld.report import write_report
    from agentworld.tracking import Tracker
    from learners.agent import AgentLearner
    from learners.weight_sync import WeightRegistry

    import torch

    console = Console()
    torch.set_num_threads(cfg.ray.torch_threads)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    run_id = f"{cfg.run.name}-{int(time.time())}"
    t0 = time.time()
    console.print(f"run [bold]{cfg.run.name}[/bold] -> {run_dir}" + (f"  (config {config_path})" if config_path else ""))

    tracker = Tracker(run_dir, cfg.tracking, OmegaConf.to_container(cfg), t0)
    _start_ray(cfg)
    try:
        replay = ReplayService.options(num_cpus=0).remote(str(Path(cfg.replay.dir or run_dir / "replay")))
        registry = WeightRegistry.remote()
        rows = _collect_wm_data(cfg, run_id, replay, registry, _env_domain(cfg.envs[cfg.world_model.env]), console)
        base_path = _build_base_model(cfg, run_dir, rows, console)
        continual = cfg.world_model.continual.enabled
        wm_done, metrics, wm_learner = _train_world_model(cfg, run_dir, base_path, replay, registry, t0, console,
                                                          keep=continual)
        tracker.log(metrics)
        wm_rows_seen = len(metrics)
        wm_real_steps = len(rows)
        initial_states = list({r["obs"]: (r["obs"], {"admissible_actions": r["choices"]})
                               for r in rows if r["step"] == 0}.values())

        cursor = ray.get(replay.count.remote())
        learners, pools = {}, {}
        engine = _engine_section(cfg, run_dir)
        for a_idx, arm in enumerate(cfg.arms):
            env = OmegaConf.to_container(cfg.envs[arm.env])
            seed = cfg.run.seed * 1000 + 100 * a_idx  # arms sample independently
            init = {"lwm": wm_done["path"], "scratch": base_path}.get(cfg.agent.init, cfg.agent.init)
            uses_lwm = arm.source in ("sim", "hybrid") or cfg.agent.init == "lwm"
            spec = dict(arm=arm.name, source=arm.source, init_path=init, run_dir=str(run_dir), t0=t0,
                        agent=OmegaConf.to_container(cfg.agent), eval=OmegaConf.to_container(cfg.eval), env=env,
                        wm_real_steps=wm_real_steps if uses_lwm else 0, seed=seed,
                        torch_threads=cfg.ray.torch_threads, replay_cursor=cursor, engine=engine)
            learners[arm.name] = AgentLearner.options(num_cpus=cfg.ray.actor_num_cpus, num_gpus=cfg.engine.num_gpus).remote(
                spec, replay, registry)
            aspec = dict(run_id=run_id, arm=arm.name, source=arm.source, env=env,
                         domain=_env_domain(cfg.envs[arm.env]), envs_per_actor=arm.envs_per_actor, policy_path=init,
                         agent=OmegaConf.to_container(cfg.agent), seed=seed,
                         torch_threads=cfg.ray.torch_threads, wm_path=wm_done["path"],
                         wm_version=wm_done["wm_version"], history_turns=cfg.world_model.history_turns,
                         wm_generation=OmegaConf.to_container(cfg.world_model.generation),
                         initial_states=initial_states, engine=engine, hybrid=OmegaConf.to_container(arm.hybrid),
                         control=OmegaConf.to_container(arm.control),
                         **_shared_engines(cfg, engine, arm, init, wm_done, registry, seed))
            lo, hi = actor_bounds(arm)
            pools[arm.name] = ActorPool(aspec, replay, registry, lo=lo, hi=hi, start=arm.actors,
                                        num_cpus=cfg.ray.actor_num_cpus, interval_s=cfg.pool.interval_s, t0=t0,
                                        episodes_per_update=cfg.agent.episodes_per_update)
        request_cluster(pools.values())

        runs = {name: l.run.remote() for name, l in learners.items()}
        wm_ref = wm_learner.continual.remote(cursor) if wm_learner is not None else None
        deadline = t0 + cfg.run.max_minutes * 60
        failed = None
        wm_last = next(m for m in reversed(metrics) if m["kind"] == "wm") if metrics else dict(wm_done)
        seen = {name: 0 for name in learners}
        trained = {name: (0, 0) for name in learners}  # rows and episodes each learner has trained on
        learner_rows = []
        with Live(console=console, refresh_per_second=2) as live:
            pending = list(runs.values())
            while pending:
                _, pending = ray.wait(pending, timeout=1.0)
                statuses = ray.get([l.status.remote() for l in learners.values()])
                new = _new_learner_rows(learners, seen, trained)
                learner_rows += new
                tracker.log(new + _scale_pools(pools, statuses, trained))
                if wm_learner is not None:
                    w = ray.get(wm_learner.status.remote())
                    wm_last = {"wm_version": w["version"], "exact_match": w["exact_match"],
                               "edit_similarity": w["edit_similarity"]}
                live.update(_arms_table(statuses, pools, wm_last, time.time() - t0))
                if time.time() > deadline:
                    console.print(f"[yellow]max_minutes={cfg.run.max_minutes} reached: stopping the arms[/yellow]")
                    for l in learners.values():
                        l.stop.remote()
                    deadline = float("inf")
        results = {}
        for name, ref in runs.items():
            try:
                results[name] = ray.get(ref)
            except ray.exceptions.RayError as e:  # report what the other arms did, then fail
                failed = f"arm {name} failed: {e}"
        actor_status = [s for p in pools.values() for s in p.stop()]
        request_cluster(pools.values())  # all pools are empty now: the autoscaler may remove idle nodes
        learner_tail = _new_learner_rows(learners, seen, trained)
        wm_tail = []
        if wm_ref is not None:
            wm_learner.stop.remote()
            console.print(f"continual LWM training: {ray.get(wm_ref)} rounds on fresh real transitions")
            wm_tail = ray.get(wm_learner.metrics.remote(wm_rows_seen))
        tracker.log(wm_tail + learner_tail)
        metrics += wm_tail + learner_rows + learner_tail + [r for p in pools.values() for r in p.rows]
        metrics += _replay_metric_rows(cfg, replay, cursor, t0)
        for s in actor_status:
            for err in s["errors"]:
                console.print(f"[yellow]actor error:[/yellow] {err}")
    finally:
        tracker.close()
        ray.shutdown()

    summary = write_report(run_dir, metrics, OmegaConf.to_container(cfg), success_target=cfg.eval.success_target)
    console.print(_final_table(summary))
    console.print(f"report: [bold]{(run_dir / 'report.html').resolve()}[/bold]")
    if cfg.run.storage:
        from agentworld.storage import upload

        console.print(f"run dir copied to {upload(run_dir, cfg.run.storage)}")
    if failed:
        raise RuntimeError(failed)
    return summary


def _replay_metric_rows(cfg, replay, cursor: int, t0: float) -> list[dict]:
    """From each arm's replay rows, read once: live fidelity and routing over time of a hybrid arm (`hybrid` rows,
    from the rows' provenance) and obedience over time of an arm with controls (`control` rows)."""
    from agentworld.controls import obedience_metric_rows
    from agentworld.worldmodel.hybrid import hybrid_metric_rows

    out = []
    for arm in cfg.arms:
        hybrid, controlled = arm.source == "hybrid", arm.control.kind != "none"
        if not (hybrid or controlled):
            continue
        table, _ = ray.get(replay.since.remote(cursor, arm=arm.name))
        rows = table.to_pylist()
        if hybrid:
            out += hybrid_metric_rows(rows, arm.name, t0)
        if controlled:
            out += obedience_metric_rows(rows, arm.name, t0)
    return out


def _env_domain(env) -> str:
    """The domain an env reports (building it once also checks that it starts)."""
    from agentworld.envs import make_env

    probe = make_env(env.id, max_steps=env.max_steps, domain=env.domain, **OmegaConf.to_container(env.kwargs))
    try:
        return probe.domain
    finally:
        probe.close()


def _final_table(summary: dict) -> Table:
    table = Table(title="final real-env scores")
    for col in ("arm", "source", "success", "return", "real steps", "sim steps", "wall-clock"):
        table.add_column(col)
    for name, a in summary.get("arms", {}).items():
        table.add_row(name, str(a.get("source")), _fmt(a.get("final_success")), _fmt(a.get("final_return")),
                      str(a.get("real_steps")), str(a.get("sim_steps")), f"{(a.get('wall_clock_s') or 0) / 60:.1f} min")
    return table
