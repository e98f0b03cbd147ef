"""`sim`: the arm trains only in the LWM simulator; with `control` it is the controlled arm (sim-controlled)."""

from agentworld.arms.base import ArmKind
from agentworld.registry import ARM_KINDS


@ARM_KINDS.register("sim")
class Sim(ArmKind):
    uses_lwm = True

    def make_envs(self, envs, n: int, arm) -> list:
        return [envs.sim(k) for k in range(n)]
