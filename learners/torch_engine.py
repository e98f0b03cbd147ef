"""The `torch` training engine (learners/train_engine.py): AdamW over the trainable parameters (a LoRA model's
adapters only), linear warm-up then cosine decay, gradient clipping, and checkpoints as HF weights (merged, for a
LoRA model, with its adapter beside them: agentworld/models/lora.py) plus optimizer, scheduler and RNG state."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from agentworld.models.lora import merged_state_dict, save_model, trainable_parameters
from agentworld.registry import TRAIN_ENGINES


def lr_schedule(total_steps: int, warmup_steps: int):
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return schedule


class TorchEngine:
    def __init__(self, model, lr: float, total_steps: int, warmup_steps: int = 0, weight_decay: float = 0.0,
                 max_grad_norm: float = 1.0, tok=None):
        self.model, self.tok = model, tok
        self.max_grad_norm = max_grad_norm
        self.params = trainable_parameters(model)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule(total_steps, warmup_steps))
        self.steps = 0

    def step(self, loss_fn, items: list) -> float:
        """One optimizer step on `loss_fn(model, tok, items)`: backward, clip, optimizer and scheduler step.
        Returns the loss."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(self.model, self.tok, items)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.steps += 1
        self.model.eval()
        return float(loss.detach())

    def state_dict(self) -> dict:
        """The full weights under the base model's names (merged, for a LoRA model)."""
        return merged_state_dict(self.model)

    def save(self, path: str | Path, tokenizer=None) -> Path:
        """HF weights (+ tokenizer) loadable by path, and the trainer state beside them for resuming (for a LoRA model
        the weights are merged, and its adapter is in `adapter/`)."""
        path = save_model(self.model, path)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "steps": self.steps, "torch_rng": torch.get_rng_state(), "py_rng": random.getstate()},
                   path / "trainer_state.pt")
        return path

    def load_trainer_state(self, path: str | Path) -> None:
        state = torch.load(Path(path) / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state["steps"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])


@TRAIN_ENGINES.register("torch")
def build_torch_engine(model, tok, lr: float, total_steps: int, warmup_steps: int, weight_decay: float,
                       runtime) -> TorchEngine:
    """The TRAIN_ENGINES builder: the model goes to the GPU when the learner has one (runtime.device; learners load it
    there already). DeepSpeed places its model itself."""
    if runtime.device != "cpu":
        from agentworld.models.hf_engine import place

        place(model, runtime.device)
    return TorchEngine(model, lr, total_steps, warmup_steps, weight_decay, tok=tok)
