"""`real`: the arm trains on real env steps."""

from agentworld.arms.base import ArmKind
from agentworld.registry import ARM_KINDS


@ARM_KINDS.register("real")
class Real(ArmKind):
    def make_envs(self, envs, n: int, arm) -> list:
        return [envs.real() for _ in range(n)]
