"""`hybrid`: steps in the LWM, shadow-executes a share of them in the real env, and routes to the real env while
live fidelity is low (agentworld/worldmodel/hybrid.py)."""

from agentworld.arms.base import ArmKind
from agentworld.registry import ARM_KINDS


@ARM_KINDS.register("hybrid")
class Hybrid(ArmKind):
    uses_lwm = True

    def make_envs(self, envs, n: int, arm) -> list:
        from agentworld.worldmodel.hybrid import FidelityGate, HybridEnv

        h = arm.hybrid
        gate = FidelityGate(h)  # one per actor: all its envs are the same env
        return [HybridEnv(envs.sim(k), envs.real(), gate, h.shadow_fraction) for k in range(n)]

    def row_source(self, info: dict) -> str:
        return info["source"]  # routed steps are real

    def validate(self, arm, fail) -> None:
        super().validate(arm, fail)
        h = arm.hybrid
        for key in ("shadow_fraction", "threshold", "recover_threshold"):
            if not 0 <= getattr(h, key) <= 1:
                fail(f"hybrid.{key}", f"must be in [0, 1] (got {getattr(h, key)})")
        if h.recover_threshold < h.threshold:
            fail("hybrid.recover_threshold", f"must be >= threshold ({h.threshold})")
        if h.window < 1 or not 1 <= h.min_scores <= h.window:
            fail("hybrid.min_scores", f"window must be >= 1 and min_scores in [1, window] (got {h.window}, {h.min_scores})")

    def replay_metrics(self, arm) -> list:
        from agentworld.worldmodel.hybrid import hybrid_metric_rows

        return [hybrid_metric_rows] + super().replay_metrics(arm)
