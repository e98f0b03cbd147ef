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
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
