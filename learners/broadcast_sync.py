"""The `broadcast` weight sync (learners/weight_sync.py): the learner sends each version straight to every shared
engine actor that subscribed to it, over a collective group formed for that version. gloo carries it on CPU; on
GPUs it is NCCL, from the learner's device to each engine's.

THE NCCL PATH IS UNTESTED HERE (no GPU on these machines). The tests run this same code with gloo; NCCL changes
only `open_group` (a ProcessGroupNCCL) and the device of the flat buffers (the current CUDA device)."""

from __future__ import annotations

from datetime import timedelta

import ray
import torch
import torch.distributed as dist

from agentworld.registry import WEIGHT_SYNCS
from learners.weight_sync import WeightSync


def flatten(state_dict: dict, device) -> tuple[list, dict]:
    """One flat buffer per dtype (a collective per dtype, not per tensor), and what is needed to cut it up."""
    meta = [(k, str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in state_dict.items()]
    flat = {}
    for dtype in sorted({m[1] for m in meta}):
        flat[dtype] = torch.cat([state_dict[k].detach().reshape(-1) for k, d, _ in meta if d == dtype]).to(device)
    return meta, flat


def unflatten(meta: list, flat: dict) -> dict:
    out, offset = {}, dict.fromkeys(flat, 0)
    for k, dtype, shape in meta:
        n = 1
        for s in shape:
            n *= s
        out[k] = flat[dtype][offset[dtype] : offset[dtype] + n].view(shape)
        offset[dtype] += n
    return out


def open_group(store, rank: int, world: int, backend: str, timeout_s: float):
    """A process group of its own, outside torch.distributed's default one (a DeepSpeed learner has that)."""
    timeout = timedelta(seconds=timeout_s)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world, timeout)
    opts = dist.ProcessGroupNCCL.Options()  # untested here: needs a CUDA build of torch and a GPU per rank
    opts._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, world, opts)


def _broadcast(group, tensor: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()


def _device(backend: str):
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def receive_broadcast(meta: list, host: str, port: int, rank: int, world: int, backend: str,
                      timeout_s: float = 300) -> dict:
    """The reader's side of one version: join the group, receive the flat buffers, return the state dict."""
    store = dist.TCPStore(host, port, world, False, timeout=timedelta(seconds=timeout_s))
    group = open_group(store, rank, world, backend, timeout_s)
    sizes: dict[str, int] = {}
    for _, dtype, shape in meta:
        n = 1
        for s in shape:
            n *= s
        sizes[dtype] = sizes.get(dtype, 0) + n
    flat = {d: torch.empty(sizes[d], dtype=getattr(torch, d), device=_device(backend)) for d in sorted(sizes)}
    for d in sorted(flat):
        _broadcast(group, flat[d])
    return unflatten(meta, flat)


class BroadcastWeightSync(WeightSync):
    """Publish pushes to the subscribed engine actors (their `receive_broadcast`) and records the version; a
    fetch never has weights to return, the readers already hold them."""

    pushes = True

    def __init__(self, registry, backend: str = "gloo", timeout_s: float = 300):
        self.registry, self.backend, self.timeout_s = registry, backend, timeout_s

    def publish(self, name: str, version: int, state_dict: dict) -> None:
        readers = ray.get(self.registry.subscribers.remote(name))
        if readers:
            meta, flat = flatten(state_dict, _device(self.backend))
            host, world = ray.util.get_node_ip_address(), len(readers) + 1
            store = dist.TCPStore(host, 0, world, True, timeout=timedelta(seconds=self.timeout_s), wait_for_workers=False)
            refs = [r.receive_broadcast.remote(version, meta, host, store.port, k + 1, world, self.backend)
                    for k, r in enumerate(readers)]
            group = open_group(store, 0, world, self.backend, self.timeout_s)
            for d in sorted(flat):
                _broadcast(group, flat[d])
            ray.get(refs)  # every reader has loaded the version
        ray.get(self.registry.publish.remote(name, version, []))

    def fetch(self, name: str, have: int) -> tuple[int, None]:
        return self.version(name), None

    def version(self, name: str) -> int:
        return ray.get(self.registry.version.remote(name))


WEIGHT_SYNCS.register("broadcast", lambda runtime, registry: BroadcastWeightSync(
    registry, backend="nccl" if runtime.engine.num_gpus > 0 else "gloo"))
