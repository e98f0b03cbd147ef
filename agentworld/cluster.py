"""Starting Ray for a command: join the cluster a Ray Job runs in, or start a new embedded one."""

from __future__ import annotations

import os

import ray


def start_ray(cfg) -> None:
    """`cfg`: the `ray` section. Every process gets the section's torch threads."""
    env_vars = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(cfg.torch_threads)}
    address = cfg.address or os.environ.get("RAY_ADDRESS")  # set inside a Ray Job: join its cluster
    if address:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=False)
    else:
        # "local": always a new embedded cluster, even if `ray start` left one running on this machine
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, runtime_env={"env_vars": env_vars},
                 log_to_driver=False)
