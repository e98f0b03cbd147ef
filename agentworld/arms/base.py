"""What every arm kind answers. Kinds are stateless: the driver resolves `arms[i].source` to one, and hands it
to the arm's rollout actors and learner."""

from __future__ import annotations

from typing import Callable, Protocol


class EnvFactory(Protocol):
    """What a rollout actor offers a kind to build its envs with."""

    def real(self): ...  # a real env of the arm's `env`

    def sim(self, k: int): ...  # env k simulated by the actor's LWM engine, with its own control sampler


class ArmKind:
    uses_lwm = False  # its actors step the LWM: they get an LWM engine, and the LWM's data counts as its real steps

    def make_envs(self, envs: EnvFactory, n: int, arm) -> list:
        """The actor's `n` envs; `arm` is the ArmConfig."""
        raise NotImplementedError

    def row_source(self, info: dict) -> str:
        """The replay `source` of a step: where it really happened."""
        return "sim" if self.uses_lwm else "real"

    def validate(self, arm, fail: Callable[[str, str], None]) -> None:
        """Checks of the arm's config sections; `fail(key under the arm, message)` raises."""
        from agentworld.controls import validate_control

        validate_control(arm.control, self.uses_lwm, lambda key, msg: fail(f"control.{key}", msg))

    def replay_metrics(self, arm) -> list[Callable[[list[dict], str, float], list[dict]]]:
        """Functions (the arm's replay rows, arm name, t0) -> metric rows, run once the arm has finished."""
        if arm.control.kind == "none":
            return []
        from agentworld.controls import obedience_metric_rows

        return [obedience_metric_rows]
