"""Replay at scale (issue 19): insert and sample throughput of RLlib's EpisodeReplayBuffer, ReplayStore in-process
and ReplayService through Ray, side by side in one run, on the same FrozenLake text transitions.

    .venv/bin/python bench/replay.py                                  # 10k, 100k and 1M rows; ~10 min
    .venv/bin/python bench/replay.py --sizes 10000 100000 --samples 100
    .venv/bin/python bench/replay.py --capacity-run 10000000 1000000  # also 10M rows in-process, 1M held
    .venv/bin/python bench/replay.py --sizes 100000 --stores --shards 2 4 --writers 4  # ShardedReplay against 1 shard
    .venv/bin/python bench/replay.py --sizes 10000 100000 --stores ray ray-pickled  # IPC against Ray's pickling

The transitions are synthetic but shaped like the quickstart's (agentworld/schema.py rows, ~142-character grid
observations, episodes of 1-15 steps); an insert is whole episodes of ~1,000 rows, built before timing (an Arrow
batch for the stores, SingleAgentEpisodes for RLlib), and each store gets the same ones. A sample is 256 rows drawn
uniformly (for the stores with the arm and source filters a learner uses); the first sample after the inserts is
timed apart (`first ms`: the store merges its chunks then), the rate is over the `--samples` after it. The stores
fsync every insert (RLlib's buffer is memory only) to a temp dir under --dir."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ACTIONS = ("left", "down", "right", "up")


def observation(pos: int, steps: int) -> str:
    """A FrozenLake text observation: the 4x4 map with the player, then a line of it in words (~142 characters)."""
    grid = list("SFFFFHFHFFFHHFFG")
    grid[pos] = "P"
    rows = "\n".join("".join(grid[r * 4:r * 4 + 4]) for r in range(4))
    return (f"{rows}\nYou are at row {pos // 4 + 1}, column {pos % 4 + 1}. The goal G is at row 4, column 4; "
            f"H is a hole. Steps taken: {steps}. Actions: left, down, right or up.")


def make_inserts(n_rows: int, seed: int = 0) -> list[tuple]:
    """(Arrow batch, RLlib episodes) per insert of whole episodes, ~1,000 rows each, n_rows in all."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    from agentworld.schema import rows_to_batch

    rng = np.random.default_rng(seed)
    inserts, done, ep = [], 0, 0
    while done < n_rows:
        rows, episodes = [], []
        while len(rows) < min(1000, n_rows - done):
            length = min(int(rng.integers(1, 16)), n_rows - done - len(rows))
            path = rng.integers(0, 16, length + 1)
            obs = [observation(int(p), t) for t, p in enumerate(path)]
            acts = [ACTIONS[int(a)] for a in rng.integers(0, 4, length)]
            rewards = [0.0] * (length - 1) + [float(path[-1] == 15)]
            for t in range(length):
                rows.append(dict(run_id="bench", arm="real", episode_id=f"ep{ep}", step=t,
                                 env_id="gymnasium:FrozenLake-v1", domain="gridworld", source="real", obs=obs[t],
                                 action=acts[t], next_obs=obs[t + 1], reward=rewards[t], terminated=t == length - 1,
                                 truncated=False, policy_version=ep // 500, actor_id="actor-0"))
            episodes.append(SingleAgentEpisode(observations=obs, actions=acts, rewards=rewards, terminated=True,
                                               len_lookback_buffer=0))
            ep += 1
        inserts.append((rows_to_batch(rows), episodes))
        done += len(rows)
    return inserts


def measure(add, sample, inserts, samples: int) -> tuple[float, float, float]:
    """Rows inserted per second, milliseconds of the first sample, rows sampled per second after it."""
    t0 = time.perf_counter()
    rows = sum(add(item) for item in inserts)
    insert = rows / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    sample(0)
    first = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    got = sum(sample(i + 1) for i in range(samples))
    return insert, first, got / (time.perf_counter() - t0)


def bench_rllib(inserts, samples):
    from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer

    buf = EpisodeReplayBuffer(capacity=sum(b.num_rows for b, _ in inserts))

    def add(item):
        buf.add(item[1])
        return item[0].num_rows

    return measure(add, lambda i: len(buf.sample(num_items=256, n_step=1)["obs"]), inserts, samples)


def bench_store(inserts, samples, directory, capacity=None):
    from agentworld.replay import ReplayStore

    store = ReplayStore(directory, capacity=capacity)

    def add(item):
        store.add(item[0])
        return item[0].num_rows

    out = measure(add, lambda i: store.sample(256, seed=i, arm="real", source="real").num_rows, inserts, samples)
    return out, store


def bench_ray(inserts, samples, directory, pickled: bool = False):
    """ReplayService as a run starts it: its answers cross Ray as one IPC buffer per table. `pickled`: the same
    store as a plain Ray actor, with Ray's default pickling (what the product did before)."""
    import ray

    from agentworld.replay import ReplayService, ReplayStore

    if pickled:
        actor = ray.remote(ReplayStore).options(num_cpus=0).remote(directory)
    else:
        actor = ReplayService.options(num_cpus=0).remote(directory)
    ray.get(actor.count.remote())  # started: its start-up is not an insert

    def add(item):
        ray.get(actor.add.remote(item[0]))
        return item[0].num_rows

    out = measure(add, lambda i: ray.get(actor.sample.remote(256, seed=i, arm="real", source="real")).num_rows,
                  inserts, samples)
    ray.get(actor.close.remote())
    ray.kill(actor)
    return out


def bench_shards(inserts, samples, directory, shards: int, writers: int):
    """`shards` ReplayService actors (agentworld.replay.start_replay) fed by `writers` concurrent writer actors, as
    rollout actors feed a run's replay; samples from the driver. Insert rate: all rows over the wall-clock from the
    first add to the last acknowledgement."""
    import ray

    from agentworld.replay import start_replay

    replay = start_replay(directory, shards=shards)
    ray.get(replay.count.remote())  # started

    @ray.remote(num_cpus=0)
    class Writer:
        def __init__(self, replay):
            self.replay = replay

        def write(self, batches):
            for b in batches:
                ray.get(self.replay.add.remote(b))
            return sum(b.num_rows for b in batches)

    pool = [Writer.remote(replay) for _ in range(writers)]
    slices = [ray.put([b for b, _ in inserts[w::writers]]) for w in range(writers)]
    ray.get([w.__ray_ready__.remote() for w in pool])
    t0 = time.perf_counter()
    rows = sum(ray.get([w.write.remote(s) for w, s in zip(pool, slices)]))
    insert = rows / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    ray.get(replay.sample.remote(256, seed=0, arm="real", source="real"))
    first = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    got = sum(ray.get(replay.sample.remote(256, seed=i + 1, arm="real", source="real")).num_rows
              for i in range(samples))
    smp = got / (time.perf_counter() - t0)
    ray.get(replay.close.remote())
    for handle in [*pool, *getattr(replay, "shards", [replay])]:
        ray.kill(handle)
    return insert, first, smp


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="*", type=int, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--samples", type=int, default=200, help="samples of 256 rows timed at each size, after the first")
    p.add_argument("--stores", nargs="*", default=["rllib", "store", "ray"],
                   choices=["rllib", "store", "ray", "ray-pickled"])
    p.add_argument("--capacity-run", nargs=2, type=int, metavar=("ROWS", "CAPACITY"),
                   help="also ROWS rows in-process with CAPACITY held (the largest size's inserts, repeated)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the stores' temp dirs go")
    p.add_argument("--shards", nargs="*", type=int, default=[],
                   help="also a replay of N shards (and of 1, the reference) fed by --writers concurrent actors")
    p.add_argument("--writers", type=int, default=4, help="writer actors for --shards")
    args = p.parse_args()

    t0 = time.perf_counter()
    all_inserts = make_inserts(max(args.sizes))
    chars = np.mean([len(o) for o in all_inserts[0][0].column("obs").to_pylist()])
    print(f"built {max(args.sizes):,} transitions (observations of {chars:.0f} characters on average) in "
          f"{time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.2f}", flush=True)
    if any(s.startswith("ray") for s in args.stores) or args.shards:
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: dict = {}
    header = (f"{'rows':>10} {'store':<24} {'insert/s':>10} {'sample/s':>10} {'first ms':>9} "
              f"{'insert x RLlib':>14} {'sample x RLlib':>14}")
    print(header, flush=True)
    for n in sorted(args.sizes):
        inserts, k = [], 0
        for item in all_inserts:
            if k >= n:
                break
            inserts.append(item)
            k += item[0].num_rows
        for name in args.stores:
            with tempfile.TemporaryDirectory(dir=args.dir, ignore_cleanup_errors=True) as d:
                if name == "rllib":
                    r = bench_rllib(inserts, args.samples)
                elif name == "store":
                    r, _ = bench_store(inserts, args.samples, d)
                else:
                    r = bench_ray(inserts, args.samples, d, pickled=name == "ray-pickled")
            results[n, name] = r
            base = results.get((n, "rllib"))
            ratios = (f"{r[0] / base[0]:>14.1f} {r[2] / base[2]:>14.1f}" if base and name != "rllib"
                      else f"{'':>14} {'':>14}")
            label = {"rllib": "RLlib EpisodeReplayBuffer", "store": "ReplayStore in-process",
                     "ray": "ReplayService via Ray", "ray-pickled": "same, Ray's pickling"}[name]
            print(f"{k:>10,} {label:<24} {r[0]:>10,.0f} {r[2]:>10,.0f} {r[1]:>9.1f} {ratios}", flush=True)
        if (n, "ray") in results and (n, "ray-pickled") in results:
            r, q = results[n, "ray"], results[n, "ray-pickled"]
            print(f"{'':>10} via Ray, IPC over Ray's pickling: insert x{r[0] / q[0]:.2f}, sample x{r[2] / q[2]:.2f}",
                  flush=True)
        for shards in sorted({1, *args.shards}) if args.shards else []:
            with tempfile.TemporaryDirectory(dir=args.dir, ignore_cleanup_errors=True) as d:
                r = bench_shards(inserts, args.samples, d, shards, args.writers)
            results[n, f"shards{shards}"] = r
            one = results[n, "shards1"]
            print(f"{k:>10,} {f'{shards} shard(s), {args.writers} writers':<24} {r[0]:>10,.0f} {r[2]:>10,.0f} "
                  f"{r[1]:>9.1f}   x 1 shard: insert {r[0] / one[0]:.2f}, sample {r[2] / one[2]:.2f}", flush=True)
    lo, hi = min(args.sizes), max(args.sizes)
    if lo != hi:
        for name in args.stores:
            print(f"sample time at {hi:,} / at {lo:,} rows, {name}: {results[lo, name][2] / results[hi, name][2]:.2f}")
    if args.capacity_run:
        rows, capacity = args.capacity_run
        inserts, k = [], 0
        while k < rows:
            inserts.append(all_inserts[len(inserts) % len(all_inserts)])
            k += inserts[-1][0].num_rows
        with tempfile.TemporaryDirectory(dir=args.dir, ignore_cleanup_errors=True) as d:
            (ins, first, smp), store = bench_store(inserts, args.samples, d, capacity=capacity)
            print(f"{store.rows:>10,} {'ReplayStore cap ' + f'{capacity:,}':<24} {ins:>10,.0f} {smp:>10,.0f} "
                  f"{first:>9.1f}   held {store.held():,} rows, process RSS {rss_gb():.1f} GiB, "
                  f"on disk {sum(f.stat().st_size for f in Path(d).iterdir()) / 2**30:.1f} GiB", flush=True)
            store.close()


if __name__ == "__main__":
    main()
