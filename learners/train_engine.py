"""Training engines behind one interface, used by the WorldModelLearner and the AgentLearner.

`torch` (torch_engine.py, the default) and `deepspeed` (deepspeed_engine.py: ZeRO, data-parallel over Ray actors)
both hold the learner's `model` and answer:
- `step(loss_fn, items)`: one optimizer step on `loss_fn(model, tok, items)`, a picklable function, so that a
  data-parallel engine can run it on each rank's share of `items`; returns the loss;
- `save(path, tokenizer)`: HF weights loadable by path, and beside them `trainer_state.pt` (optimizer, scheduler
  and RNG state) in one format, so a checkpoint of either engine resumes in the other;
- `load_trainer_state(path)`."""

from __future__ import annotations

from typing import Callable, Protocol

TRAIN_ENGINES = ("torch", "deepspeed")


class TrainEngine(Protocol):
    model: object
    steps: int

    def step(self, loss_fn: Callable, items: list) -> float: ...

    def save(self, path, tokenizer=None): ...

    def load_trainer_state(self, path) -> None: ...


def make_trainer(model, tok, lr: float, total_steps: int, warmup_steps: int = 0, weight_decay: float = 0.0,
                 engine: dict | None = None) -> TrainEngine:
    """The training engine the `engine` config section names (None: torch) around `model`."""
    kind = (engine or {}).get("train", "torch")
    if kind == "torch":
        from learners.torch_engine import TorchEngine

        if (engine or {}).get("num_gpus", 0) > 0:
            model.to("cuda")  # DeepSpeed places its model itself
        return TorchEngine(model, lr, total_steps, warmup_steps, weight_decay, tok=tok)
    if kind == "deepspeed":
        from learners.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, tok, lr, total_steps, warmup_steps, weight_decay, **engine["deepspeed"],
                               num_gpus=engine.get("num_gpus", 0), num_cpus=engine.get("num_cpus", 0.25))
    raise ValueError(f"unknown training engine {kind!r} (one of {', '.join(TRAIN_ENGINES)})")
