"""Training engines behind one interface, used by the WorldModelLearner and the AgentLearner.

`torch` (torch_engine.py, the default) and `deepspeed` (deepspeed_engine.py: ZeRO, data-parallel over Ray actors)
register themselves in TRAIN_ENGINES (agentworld/registry.py) as a builder
`build(model, tok, lr, total_steps, warmup_steps, weight_decay, runtime: Runtime) -> engine`. Both hold the
learner's `model` and answer:
- `step(loss_fn, items)`: one optimizer step on `loss_fn(model, tok, items)`, a picklable function, so that a
  data-parallel engine can run it on each rank's share of `items`; returns the loss;
- `save(path, tokenizer)`: HF weights loadable by path, and beside them `trainer_state.pt` (optimizer, scheduler
  and RNG state) in one format, so a checkpoint of either engine resumes in the other;
- `load_trainer_state(path)`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

from agentworld.registry import TRAIN_ENGINES

if TYPE_CHECKING:
    from agentworld.config import Runtime


class TrainEngine(Protocol):
    model: object
    steps: int

    def step(self, loss_fn: Callable, items: list) -> float: ...

    def save(self, path, tokenizer=None): ...

    def load_trainer_state(self, path) -> None: ...


def make_trainer(model, tok, lr: float, total_steps: int, warmup_steps: int = 0, weight_decay: float = 0.0,
                 runtime: Runtime | None = None) -> TrainEngine:
    """The training engine `runtime.engine.train` names (None: every default, so torch) around `model`."""
    from agentworld.config import Runtime

    runtime = runtime or Runtime()
    return TRAIN_ENGINES.get(runtime.engine.train)(model, tok, lr, total_steps, warmup_steps, weight_decay, runtime)
