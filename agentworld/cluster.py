"""Starting Ray for a command: join the cluster a Ray Job runs in, or start a new embedded one."""

from __future__ import annotations

import os

import ray


LOOPBACK = "127.0.0.1"


def start_ray(cfg) -> None:
    """`cfg`: the `ray` section. Every process gets the section's torch threads."""
    env_vars = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(cfg.torch_threads)}
    address = cfg.address or os.environ.get("RAY_ADDRESS")  # set inside a Ray Job: join its cluster
    if address:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=False)
    else:
        init_local(cfg.num_cpus, env_vars)


def init_local(num_cpus: int, env_vars: dict[str, str]) -> None:
    """A new embedded cluster ("local": even if `ray start` left one running on this machine), on loopback only.
    Ray binds its gRPC servers to 127.0.0.1 only when the node address is 127.0.0.1 and Ray does not replace that
    with the machine's routable address, which it does unless clusters are off: a one-machine cluster, so off."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"  # read by the cluster's processes at their start
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported Ray before
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env_vars},
             log_to_driver=False, _node_ip_address=LOOPBACK)


CLUSTER_FILE = ".cluster.json"  # in the run dir: the driver and the processes of its embedded cluster


def _alive(pid: int, created: float):
    """The process `pid` if it is still the one started at `created`, else None."""
    import psutil

    try:
        p = psutil.Process(pid)
        return p if abs(p.create_time() - created) < 1e-3 else None
    except psutil.Error:
        return None


def claim_run_dir(run_dir) -> list[str]:
    """Before a run on `run_dir` starts: a driver of it still running is an error (ConfigError); the processes an
    earlier embedded cluster of it left behind when its driver was killed (SIGKILL) are ended. Returns what was ended,
    each as "name (pid)"."""
    import json
    from pathlib import Path

    from agentworld.config import ConfigError

    path = Path(run_dir) / CLUSTER_FILE
    if not path.is_file():
        return []
    try:
        rec = json.loads(path.read_text())
        driver = _alive(rec["driver"]["pid"], rec["driver"]["created"])
        procs = rec["processes"]
    except (ValueError, KeyError, TypeError):
        return []
    if driver is not None and driver.pid != os.getpid():
        raise ConfigError(str(run_dir), "run.name", f"in use by a running agentworld (pid {driver.pid}); stop it first")
    ended = []
    for r in procs:
        if (p := _alive(r["pid"], r["created"])) is not None:
            try:
                p.kill()
                ended.append(f"{r['name']} ({r['pid']})")
            except Exception:  # noqa: BLE001  gone meanwhile, or not ours to end
                pass
    path.unlink(missing_ok=True)
    return ended


def record_cluster(run_dir) -> None:
    """Note this driver and every process of its embedded cluster so far (Ray's daemons and workers, children of the
    driver): what `claim_run_dir` ends if this driver is killed. Called again as actors start."""
    import json
    from pathlib import Path

    import psutil

    me = psutil.Process()
    procs = []
    for p in me.children(recursive=True):
        try:
            procs.append({"pid": p.pid, "created": p.create_time(), "name": _name(p)})
        except psutil.Error:
            continue
    path = Path(run_dir) / CLUSTER_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"driver": {"pid": me.pid, "created": me.create_time()}, "processes": procs}))
    os.replace(tmp, path)


def _name(p) -> str:
    cmd = p.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    return os.path.basename(next((c for c in cmd if c.endswith(".py")), cmd[0] if cmd else p.name()))
