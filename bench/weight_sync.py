"""(c) Weight sync latency for 1M, 10M and 100M parameters: every strategy against a raw ray.put/ray.get round
trip of the same bytes; then the two ways a new version reaches a running vLLM engine (worker RPC with a state
dict, or a reload from a checkpoint dir), in-process and with vLLM's engine-core process (where a state dict
crosses to the worker through a temporary dir: vLLM's RPC carries no tensors without pickle).

    .venv/bin/python bench/weight_sync.py                       # both tables
    .venv/bin/python bench/weight_sync.py --sizes 1 10 --repeats 5 --no-vllm

Latency runs from the moment a writer actor (the learner) starts publishing until a reader actor holds the
weights as CPU tensors: fetched from the object store, read back from the directory, or received over gloo.
Each figure is the median of `--repeats` versions; the strategies publish in turns, so they share the machine's load."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

STRATEGIES = ("raw", "object_store", "filesystem", "broadcast")


def state_dict(millions: float) -> dict:
    """Four 1024-wide fp32 matrices with `millions` M parameters in all."""
    rows = int(millions * 1e6 / 1024 / 4)
    return {f"layer{k}.weight": torch.randn(rows, 1024) for k in range(4)}


def sync_runtime(kind: str, root: str):
    """The Runtime a learner and its readers would get, with the `kind` weight sync and its directory."""
    from agentworld.config import EngineConfig, Runtime

    return Runtime(engine=EngineConfig(weight_sync=kind), weights_dir=root)


@ray.remote(num_cpus=0)
class Writer:
    def __init__(self, kind: str, registry, root: str):
        from learners.weight_sync import make_weight_sync

        self.kind, self.sd = kind, {}
        self.sync = None if kind == "raw" else make_weight_sync(sync_runtime(kind, root), registry)

    def prepare(self, millions: float) -> None:
        self.sd = state_dict(millions)

    def publish(self, version: int):
        """(start time, refs for the raw round trip, end time)."""
        t0 = time.time()
        if self.sync is None:
            return t0, [ray.put(self.sd)], None
        self.sync.publish("bench", version, self.sd)
        return t0, None, time.time()


@ray.remote(num_cpus=0)
class Reader:
    def __init__(self, kind: str, registry, root: str):
        from learners.weight_sync import make_weight_sync

        self.sync = None if kind == "raw" else make_weight_sync(sync_runtime(kind, root), registry)
        self.version = 0
        if kind == "broadcast":
            ray.get(registry.subscribe.remote("bench", ray.get_runtime_context().current_actor))

    def fetch(self, refs=None) -> float:
        if refs is not None:
            ray.get(refs[0])
            return time.time()
        version, weights = self.sync.fetch("bench", self.version)
        if isinstance(weights, str):
            from agentworld.models.engine import read_weights

            weights = read_weights(weights)
        self.version = version
        return time.time()

    def receive_broadcast(self, version: int, *group) -> None:
        from learners.broadcast_sync import receive_broadcast

        receive_broadcast(*group)


def sync_latencies(sizes: list[float], repeats: int) -> None:
    from learners.weight_sync import WeightRegistry

    print(f"{'params':>7} {'MB':>6} " + " ".join(f"{s + ' ms':>15}" for s in STRATEGIES) + "   (x raw)  load", flush=True)
    for millions in sizes:
        pairs = {}
        for kind in STRATEGIES:
            registry = WeightRegistry.remote()
            root = tempfile.mkdtemp(prefix="aw-sync-")
            pairs[kind] = (Writer.remote(kind, registry, root), Reader.remote(kind, registry, root))
        ray.get([w.prepare.remote(millions) for w, _ in pairs.values()] +
                [r.__ray_ready__.remote() for _, r in pairs.values()])  # every reader has subscribed
        times = {kind: [] for kind in STRATEGIES}
        for version in range(1, repeats + 2):
            for kind, (writer, reader) in pairs.items():  # in turns, so that every strategy sees the same load
                t0, refs, t_end = ray.get(writer.publish.remote(version))
                t1 = t_end if kind == "broadcast" else ray.get(reader.fetch.remote(refs))
                if version > 1:  # the first round trip warms up connections and the store
                    times[kind].append(1000 * (t1 - t0))
        ms = {kind: statistics.median(t) for kind, t in times.items()}
        for writer, reader in pairs.values():
            ray.kill(writer)
            ray.kill(reader)
        cells = " ".join(f"{ms[k]:8.1f} ({ms[k] / ms['raw']:4.2f}x)" for k in STRATEGIES)
        print(f"{millions:6.0f}M {millions * 4:6.0f} {cells}  {os.getloadavg()[0]:4.1f}", flush=True)


@ray.remote(num_cpus=0)
class VLLMHost:
    """A vLLM engine in its own process (in_process False adds vLLM's engine-core and worker processes)."""

    def __init__(self, path: str, in_process: bool):
        from agentworld.config import VLLMConfig
        from agentworld.models.engine import make_engine, read_weights

        self.engine = make_engine("vllm", path, vllm=VLLMConfig(kv_cache_gb=0.5, max_model_len=2048, in_process=in_process))
        self.sd = read_weights(path)

    def time_updates(self, repeats: int) -> dict:
        from safetensors.torch import save_file

        out = {"rpc": [], "dir (write+reload)": [], "dir (reload only)": []}
        for k in range(repeats + 1):
            t0 = time.perf_counter()
            self.engine.load_weights(self.sd, 2 * k)
            t1 = time.perf_counter()
            d = tempfile.mkdtemp(prefix="aw-vllm-")
            save_file(self.sd, f"{d}/model.safetensors")
            t2 = time.perf_counter()
            self.engine.load_weights(d, 2 * k + 1)
            t3 = time.perf_counter()
            if k:
                out["rpc"].append(t1 - t0)
                out["dir (write+reload)"].append(t3 - t1)
                out["dir (reload only)"].append(t3 - t2)
        return {name: 1000 * statistics.median(v) for name, v in out.items()}


def vllm_update_paths(sizes: list[str], root: str, repeats: int) -> None:
    import models

    print(f"\n{'model':8} {'params':>7} {'engine':>12} {'rpc ms':>8} {'dir ms (write+reload)':>22} "
          f"{'dir ms (reload only)':>21}", flush=True)
    for size in sizes:
        path = models.build(size, root)
        for in_process in (True, False):
            host = VLLMHost.remote(path, in_process)
            try:
                t = ray.get(host.time_updates.remote(repeats))
                print(f"{size:8} {models.parameters(path) / 1e6:6.1f}M {'in-process' if in_process else 'engine-core':>12} "
                      f"{t['rpc']:8.1f} {t['dir (write+reload)']:22.1f} {t['dir (reload only)']:21.1f}", flush=True)
            except ray.exceptions.RayError as e:
                print(f"{size:8} {'in-process' if in_process else 'engine-core':>20} failed: {str(e).splitlines()[-1][:100]}")
            ray.kill(host)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="*", type=float, default=[1, 10, 100], help="millions of parameters")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-vllm", action="store_true")
    p.add_argument("--vllm-models", nargs="*", default=["tiny", "medium"])
    p.add_argument("--root", default="/tmp/agentworld-bench")
    args = p.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        sync_latencies(args.sizes, args.repeats)
        if not args.no_vllm:
            vllm_update_paths(args.vllm_models, args.root, args.repeats)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
