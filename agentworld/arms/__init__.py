"""Arm kinds, one file each: where an arm's actors step (real envs, the LWM, or both), and the metric rows the
kind adds. A YAML names the kind in `arms[i].source`. Adding a kind is a new file here with an `ArmKind`
subclass registered by `@ARM_KINDS.register(name)`, plus its import below (docs/architecture.md)."""

from agentworld.arms.base import ArmKind, EnvFactory  # noqa: F401
from agentworld.arms import real, sim, hybrid  # noqa: F401,E402  (each registers its kind)
