"""The `agentworld` command line."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentworld", description="Train language world models and agents inside "
                                "them, beside real environments, on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run an experiment end to end and write its report"),
                            ("validate", "check an experiment YAML without starting anything")):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("config", help="experiment YAML, e.g. experiments/quickstart.yaml")
        sp.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. agent.updates=10 arms.0.actors=2")
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
    ev.add_argument("--out", default="wm_eval", help="output dir: predictions.jsonl, judged.jsonl, scores.json")
    im = wm.add_parser("import", help="AgentWorldBench-style JSONL -> replay Arrow (for training)")
    im.add_argument("--data", required=True, help="JSONL file")
    im.add_argument("--out", required=True, help="replay dir to append to")
    im.add_argument("--arm", default="import", help="arm name given to the imported rows")
    ex = wm.add_parser("export", help="replay Arrow -> AgentWorldBench-style JSONL")
    ex.add_argument("--replay", required=True, help="replay dir")
    ex.add_argument("--out", required=True, help="JSONL file to write")
    ex.add_argument("--arm", help="only this arm's rows")
    return p


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
                 history_turns=args.history_turns)
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from agentworld.config import ConfigError

    if args.command == "collect":
        try:
            return _collect(args)
        except (FileNotFoundError, ValueError) as e:
            print(f"agentworld: error: {e}", file=sys.stderr)
            return 2

    if args.command == "wm":
        from agentworld.worldmodel.judge import EndpointError

        try:
            return _wm(args)
        except (EndpointError, FileNotFoundError, ValueError, ConfigError) as e:
            print(f"agentworld: error: {e}", file=sys.stderr)
            return 2
    from agentworld.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"agentworld: error: {e}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"run {cfg.run.name}: envs {', '.join(f'{k}={v.id}' for k, v in cfg.envs.items())}")
        for arm in cfg.arms:
            print(f"  arm {arm.name}: source {arm.source}, env {arm.env}, {arm.actors} actor(s)")
        print("OK")
        return 0
    from agentworld.driver import run_experiment

    try:
        run_experiment(cfg, config_path=args.config)
    except KeyboardInterrupt:
        print("agentworld: interrupted; rerun the same command to resume from the run dir", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
