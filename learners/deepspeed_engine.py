"""The `deepspeed` training engine (learners/train_engine.py): ZeRO with its stage and offload from the YAML,
data-parallel over Ray actors, gloo on CPU and NCCL on GPUs.

Rank 0 is the learner's own process and holds the learner's model; ranks 1.. are `DataParallelRank` actors, each
with a replica loaded from the same checkpoint path (DeepSpeed broadcasts rank 0's weights when it wraps a model,
so replicas start equal even after earlier training). Every step runs `loss_fn` on each rank's share of the items;
DeepSpeed averages the gradients. Checkpoints are those of the torch engine: HF weights (merged, for a LoRA model, with
its adapter beside them), and the optimizer state of the trainable parameters gathered into torch AdamW's
per-parameter format, so either engine resumes the other's checkpoints. Replicas load the model as the learner does
(model.dtype, model.lora); with LoRA only the adapters are DeepSpeed's parameters."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import ray
import torch

from agentworld.models.lora import merged_state_dict, save_model, trainable_parameters
from agentworld.registry import TRAIN_ENGINES
from learners.torch_engine import lr_schedule

if TYPE_CHECKING:
    from agentworld.config import DeepSpeedConfig

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def ds_config(lr: float, weight_decay: float, max_grad_norm: float, world: int, zero_stage: int,
              offload_optimizer: bool, torch_adam: bool) -> dict:
    zero = {"stage": zero_stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": world,
            "gradient_clipping": max_grad_norm, "zero_optimization": zero, "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False,  # torch AdamW with offload: no C++ CPU-Adam build needed
            "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": weight_decay, "torch_adam": torch_adam}},
            "steps_per_print": 10**9, "wall_clock_breakdown": False}


def _init_process_group(init_method: str, rank: int, world: int, backend: str) -> None:
    """Once per process: torch.distributed has one default group, shared by every engine this process builds."""
    import deepspeed

    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("LOCAL_RANK", "0")  # each rank is its own Ray actor; on GPUs Ray gives it one device
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, init_method=init_method, rank=rank,
                               world_size=world, verbose=False)


class _Shard:
    """One rank's DeepSpeed engine around its model."""

    def __init__(self, model, tok, lr, total_steps, warmup_steps, weight_decay, max_grad_norm, world, zero_stage,
                 offload_optimizer, torch_adam):
        import deepspeed

        self.model, self.tok = model, tok
        config = ds_config(lr, weight_decay, max_grad_norm, world, zero_stage, offload_optimizer, torch_adam)
        schedule = lr_schedule(total_steps, warmup_steps)
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=trainable_parameters(model), config=config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
        self.model.eval()

    def step(self, loss_fn, items) -> float:
        self.model.train()
        loss = loss_fn(self.model, self.tok, items)
        self.ds.backward(loss)
        self.ds.step()  # clips, steps the optimizer and the scheduler, zeroes the gradients
        self.model.eval()
        return float(loss.detach())

    def _state(self):
        """The torch optimizer DeepSpeed drives (on the flat fp32 partitions under ZeRO 1-2), with its state."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        flats = getattr(self.optimizer, "single_partition_of_fp32_groups", None)
        if flats is not None and not inner.state:
            # AdamW creates its state at its first step; create it now, as it would, before any step was taken
            for flat in flats:
                inner.state[flat] = {"step": torch.tensor(0.0), **{k: torch.zeros_like(flat) for k in ADAM_KEYS}}
            self.optimizer._lazy_init_hp_params_optimizer_state()
        return inner

    def optimizer_state(self, steps: int) -> dict:
        """AdamW's state_dict() format, one entry per model parameter (a collective under ZeRO: every rank calls it)."""
        from deepspeed.utils import safe_get_full_optimizer_state

        inner = self._state()
        state = {}
        params = trainable_parameters(self.model)
        for i, p in enumerate(params):
            full = {k: safe_get_full_optimizer_state(p, k) for k in ADAM_KEYS}
            if full["exp_avg"] is None:  # ZeRO stage 0: the torch optimizer holds the parameters themselves
                full = {k: inner.state[p][k] for k in ADAM_KEYS} if p in inner.state else {}
            if full:
                state[i] = {"step": torch.tensor(float(steps)), **{k: v.detach().cpu().clone() for k, v in full.items()}}
        group = {k: v for k, v in inner.param_groups[0].items() if k != "params"}
        return {"state": state, "param_groups": [dict(group, params=list(range(len(params))))]}

    def load_optimizer_state(self, optimizer: dict, scheduler: dict) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        inner = self._state()
        params = trainable_parameters(self.model)
        for i, s in optimizer["state"].items():
            p = params[int(i)]
            if hasattr(p, "_hp_mapping"):
                for k in ADAM_KEYS:
                    safe_set_full_optimizer_state(p, s[k].to(p.device), k)
            else:
                inner.state[p] = {k: (v.to(p.device) if k != "step" else v) for k, v in s.items()}
        steps = next(iter(optimizer["state"].values()))["step"] if optimizer["state"] else torch.tensor(0.0)
        for s in inner.state.values():
            s["step"] = steps.clone()
        self.scheduler.load_state_dict(scheduler)
        for g, lr in zip(inner.param_groups, self.scheduler.get_last_lr()):
            g["lr"] = lr


@ray.remote
class DataParallelRank:
    """Rank k > 0: a replica of the learner's model in its own process."""

    def __init__(self, path: str, init_method: str, rank: int, world: int, backend: str, torch_threads: int, load: dict):
        torch.set_num_threads(torch_threads)
        from agentworld.models.lora import load_trainable

        self.model, self.tok = load_trainable(path, **load)  # dtype, device and LoRA as the learner's model
        _init_process_group(init_method, rank, world, backend)
        self.shard = None

    def build(self, *args) -> None:
        self.shard = _Shard(self.model, self.tok, *args)

    def call(self, method: str, *args):
        return getattr(self.shard, method)(*args)


_RANKS: dict = {}  # this process's data-parallel ranks, made once: the process group outlives each engine


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _data_parallel_ranks(path: str, world: int, backend: str, num_cpus: float, num_gpus: float, load: dict) -> list:
    if world not in _RANKS:
        if _RANKS:
            raise RuntimeError(f"this process already trains with {next(iter(_RANKS))} data-parallel ranks, not {world}")
        host = ray.util.get_node_ip_address() if world > 1 else "127.0.0.1"
        init = f"tcp://{host}:{_free_port(host)}"
        threads = torch.get_num_threads()
        ranks = [DataParallelRank.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(path, init, r, world, backend,
                                                                                       threads, load)
                 for r in range(1, world)]
        _init_process_group(init, 0, world, backend)  # waits for every rank to join
        _RANKS[world] = ranks
    return _RANKS[world]


def shard(items: list, world: int) -> list[list]:
    """Contiguous, near-equal shares; a rank never gets an empty share (it must take part in every collective)."""
    if len(items) < world:
        return [[items[r % len(items)]] for r in range(world)]
    k, extra = divmod(len(items), world)
    out, start = [], 0
    for r in range(world):
        n = k + (r < extra)
        out.append(items[start : start + n])
        start += n
    return out


class DeepSpeedEngine:
    """ZeRO `config.zero_stage` (0-2) with optional optimizer offload, over `config.data_parallel` ranks; each
    rank's actor reserves `num_cpus` and `num_gpus` and loads its replica with `load` (load_trainable's dtype, device
    and lora)."""

    def __init__(self, model, tok, lr: float, total_steps: int, warmup_steps: int = 0, weight_decay: float = 0.0,
                 max_grad_norm: float = 1.0, *, config: DeepSpeedConfig, num_cpus: float, num_gpus: float,
                 load: dict | None = None):
        self.model, self.tok, self.steps, self.world = model, tok, 0, config.data_parallel
        # a LoRA model's name_or_path is its base checkpoint's: replicas add adapters, then get rank 0's weights
        self.ranks = _data_parallel_ranks(model.name_or_path, config.data_parallel, config.backend, num_cpus, num_gpus,
                                          load or {})
        args = (lr, total_steps, warmup_steps, weight_decay, max_grad_norm, config.data_parallel, config.zero_stage,
                config.offload_optimizer, config.torch_adam)
        refs = [r.build.remote(*args) for r in self.ranks]  # wrapping is a collective: all ranks at once
        self.local = _Shard(model, tok, *args)
        ray.get(refs)

    def _all(self, method: str, per_rank: list[tuple]) -> list:
        """`method` on every rank at once (rank 0 here, the others remotely); their results in rank order."""
        refs = [r.call.remote(method, *a) for r, a in zip(self.ranks, per_rank[1:])]
        return [getattr(self.local, method)(*per_rank[0])] + ray.get(refs)

    def step(self, loss_fn, items: list) -> float:
        losses = self._all("step", [(loss_fn, share) for share in shard(items, self.world)])
        self.steps += 1
        return sum(losses) / len(losses)

    def state_dict(self) -> dict:
        return merged_state_dict(self.model)

    def save(self, path: str | Path, tokenizer=None) -> Path:
        """HF weights (+ tokenizer) and trainer_state.pt in the torch engine's format."""
        optimizer = self._all("optimizer_state", [(self.steps,)] * self.world)[0]
        path = save_model(self.model, path)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        torch.save({"optimizer": optimizer, "scheduler": self.local.scheduler.state_dict(), "steps": self.steps,
                    "torch_rng": torch.get_rng_state(), "py_rng": random.getstate()}, path / "trainer_state.pt")
        return path

    def load_trainer_state(self, path: str | Path) -> None:
        state = torch.load(Path(path) / "trainer_state.pt", weights_only=False)
        self._all("load_optimizer_state", [(state["optimizer"], state["scheduler"])] * self.world)
        self.steps = state["steps"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])


@TRAIN_ENGINES.register("deepspeed")  # deepspeed itself is imported only when an engine is built
def build_deepspeed_engine(model, tok, lr: float, total_steps: int, warmup_steps: int, weight_decay: float,
                           runtime) -> DeepSpeedEngine:
    """The TRAIN_ENGINES builder: engine.deepspeed, and each rank's share of the Ray resources."""
    return DeepSpeedEngine(model, tok, lr, total_steps, warmup_steps, weight_decay, config=runtime.engine.deepspeed,
                           num_cpus=runtime.ray.actor_num_cpus, num_gpus=runtime.engine.num_gpus,
                           load=dict(dtype=runtime.dtype, device=runtime.device, lora=runtime.lora,
                                     gradient_checkpointing=runtime.gradient_checkpointing))
