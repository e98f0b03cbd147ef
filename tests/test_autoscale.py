"""Autoscaling rollout actors: the pool's decisions, the config keys, and Ray's real autoscaler adding and
removing nodes of its fake multi-node provider on this machine as the pool grows and shrinks."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from actors.pool import Demand, decide
from agentworld.config import ConfigError, actor_bounds, load_config

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")
STARVED = Demand(starved=0.9, batches_waiting=0.2, fill_rate=50, consume_rate=50)
PILED_UP = Demand(starved=0.0, batches_waiting=3.0, fill_rate=80, consume_rate=20)


def test_pool_grows_while_the_learner_waits_and_no_batch_is_ready():
    assert decide(2, 1, 4, 0, STARVED)[0] == 3
    assert decide(4, 1, 4, 0, STARVED)[0] == 4  # never past actors_max
    assert decide(2, 1, 4, 0, Demand(0.2, 0.2, 50, 50)) == (2, "steady")  # the learner is mostly busy


def test_pool_shrinks_while_batches_pile_up_faster_than_they_are_consumed():
    assert decide(3, 1, 4, 0, PILED_UP)[0] == 2
    assert decide(1, 1, 4, 0, PILED_UP)[0] == 1  # never under actors_min
    assert decide(3, 1, 4, 0, Demand(0.0, 3.0, 20, 80))[0] == 3  # a backlog being drained is no reason


def test_pool_holds_while_an_actor_waits_for_a_node():
    n, reason = decide(2, 1, 4, 1, STARVED)
    assert n == 2 and "placed" in reason


def test_actors_keys_keep_old_yamls_and_name_the_bad_key():
    cfg = load_config(QUICKSTART, ["arms.0.actors=2"])
    assert actor_bounds(cfg.arms[0]) == (2, 2)  # `actors: N` alone is still a fixed pool
    cfg = load_config(QUICKSTART, ["arms.1.actors_min=1", "arms.1.actors_max=4"])
    assert actor_bounds(cfg.arms[1]) == (1, 4)
    for overrides, key in ((["arms.1.actors_max=0"], "arms.1.actors_max"),
                           (["arms.0.actors_min=3"], "arms.0.actors_min"),
                           (["arms.0.actors_max=lots"], "arms.0.actors_max"),
                           (["pool.interval_s=0"], "pool.interval_s")):
        with pytest.raises(ConfigError) as e:
            load_config(QUICKSTART, overrides)
        assert key in str(e.value), str(e.value)


# ---------------------------------------------------------------------------------------------------------
# Ray's autoscaler, for real, against its fake multi-node provider: each "node" it launches is a real raylet
# on this machine. Head: no CPU. Worker type: 2 CPUs, at most 2 nodes. Actors take 1 CPU each, so the pool's
# 1 -> 4 actors need 1 -> 2 nodes, and its shrink back to 1 leaves one node idle for the autoscaler to remove.

FAKE_CLUSTER = {
    "cluster_name": "agentworld-fake", "max_workers": 2, "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1,  # 6 s idle, then a node goes
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
        "cpu_node": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2}},
    "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
    "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": []}


def scenario(address: str) -> dict:
    """A real ActorPool of RolloutActors (random policy, real FrozenLake), with this function as the learner:
    first it consumes every row at once and waits for more (the pool grows), then it stops consuming (the
    pool shrinks), then the pool stops. Returns the worker-node counts seen and the pool's decisions."""
    import ray

    from actors.pool import ActorPool, request_cluster
    from actors.rollout import RolloutSpec
    from agentworld.arms.real import Real
    from agentworld.config import AgentConfig, ArmConfig, EnvConfig, Runtime
    from agentworld.envs import make_env_from
    from agentworld.replay import ReplayService
    from learners.weight_sync import WeightRegistry

    ray.init(address=address, log_to_driver=False)
    t0 = time.time()
    timeline = []

    def workers() -> int:
        n = sum(1 for x in ray.nodes() if x["Alive"] and "node:__internal_head__" not in x["Resources"])
        if not timeline or timeline[-1][1] != n:
            timeline.append((round(time.time() - t0, 1), n))
        return n

    env = EnvConfig(id="gymnasium:FrozenLake-v1", kwargs={"map_name": "4x4", "is_slippery": False}, max_steps=30)
    agent = AgentConfig(episodes_per_update=8, max_staleness=10**9)  # no learner publishes: never throttle the actors
    spec = RolloutSpec(run_id="autoscale", arm=ArmConfig(name="real", envs_per_actor=4), kind=Real(), env=env,
                       domain=make_env_from(env).domain, agent=agent, runtime=Runtime(), seed=0)
    replay = ReplayService.options(num_cpus=0).remote(tempfile.mkdtemp())
    registry = WeightRegistry.options(num_cpus=0).remote()
    pool = ActorPool(spec, replay, registry, lo=1, hi=4, start=1, num_cpus=1, interval_s=2, t0=t0,
                     episodes_per_update=8)
    request_cluster([pool])
    cursor, trained = 0, [0, 0]

    def tick(phase: str, consume: bool):
        nonlocal cursor
        if consume:  # what AgentLearner does: read the arm's new rows
            table, cursor = ray.get(replay.since.remote(cursor, arm="real"))
            trained[0] += table.num_rows
            trained[1] += len(set(table["episode_id"].to_pylist()))
        row = pool.step(phase, *trained)
        if row and row["decision"] != "hold":
            request_cluster([pool])
        workers()
        time.sleep(0.5)

    counts = {"workers_at_start": workers()}
    deadline = time.time() + 240
    while not (pool.size == 4 and pool.pending() == 0) and time.time() < deadline:
        tick("waiting for rollouts", consume=True)
    counts["actors_under_load"], counts["workers_under_load"] = pool.size, workers()
    counts["load_s"] = round(time.time() - t0, 1)
    assert ray.get(replay.count.remote()) > 0, "the actors wrote nothing: see their errors in the worker logs"
    while not (pool.size == 1 and workers() == 1) and time.time() < deadline + 120:
        tick("training", consume=False)
    counts["actors_when_idle"], counts["workers_when_idle"] = pool.size, workers()
    counts["idle_s"] = round(time.time() - t0, 1)
    statuses = pool.stop()
    request_cluster([pool])
    while workers() and time.time() < deadline + 240:
        time.sleep(1)
    counts["workers_after_stop"], counts["stop_s"] = workers(), round(time.time() - t0, 1)
    counts["rows_written"] = ray.get(replay.count.remote())
    counts["actor_errors"] = [e for s in statuses for e in s["errors"]]
    counts["decisions"] = [(round(r["wall_time"], 1), r["decision"], r["actors"], r["reason"]) for r in pool.rows]
    counts["timeline"] = timeline
    ray.shutdown()
    return counts


@pytest.mark.slow
def test_autoscaler_adds_nodes_under_load_and_removes_them_when_idle(tmp_path):
    from tests.local_head import LOOPBACK_ENV, free_port, ray_head

    port = free_port()
    config = tmp_path / "fake_cluster.json"  # the fake provider starts its nodes against this GCS
    config.write_text(json.dumps({**FAKE_CLUSTER, "provider": {**FAKE_CLUSTER["provider"],
                                                               "gcs_address": f"127.0.0.1:{port}"}}))
    with ray_head(["--num-cpus=0", "--include-dashboard=false", f"--autoscaling-config={config}"], port=port,
                  env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}) as (address, _, _):
        r = subprocess.run([sys.executable, __file__, address], capture_output=True, text=True, timeout=600,
                           cwd=ROOT, env={**os.environ, **LOOPBACK_ENV})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    print("autoscaler node counts:", json.dumps(counts, indent=1))
    assert counts["workers_at_start"] == 0
    assert counts["actors_under_load"] == 4 and counts["workers_under_load"] == 2  # nodes added under load
    assert counts["actors_when_idle"] == 1 and counts["workers_when_idle"] == 1  # an idle node removed
    assert counts["workers_after_stop"] == 0
    assert counts["rows_written"] > 0 and not counts["actor_errors"]
    decisions = [d[1] for d in counts["decisions"]]
    assert decisions.count("grow") == 3 and decisions.count("shrink") == 3 and decisions[-1] == "stop"


if __name__ == "__main__":  # the scenario runs in its own interpreter, with the loopback environment
    print(json.dumps(scenario(sys.argv[1])))
