import fcntl
import os
import resource
import signal
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from agentworld.replay import ReplayService, ReplayStore
from agentworld.schema import rows_to_batch


def batch(arm="real", source="real", version=0, n=3, ep="e"):
    return rows_to_batch([dict(run_id="r", arm=arm, episode_id=f"{ep}{i // 2}", step=i % 2, env_id="gymnasium:FrozenLake-v1",
                               domain="gridworld", source=source, obs=f"o{i}", action="left", next_obs=f"n{i}",
                               reward=0.0, terminated=False, truncated=False, policy_version=version, actor_id="a")
                          for i in range(n)])


def test_sample_filters_by_arm_source_env_and_version(tmp_path):
    store = ReplayStore(str(tmp_path))
    store.add(batch("real", "real", 0))
    store.add(batch("sim", "sim", 1))
    store.add(batch("sim", "sim", 3, n=4))
    assert store.count() == 10
    assert store.sample(arm="sim").num_rows == 7
    assert store.sample(source="real").num_rows == 3
    assert store.sample(min_policy_version=1, max_policy_version=2).num_rows == 3
    assert store.sample(env_id="nope").num_rows == 0
    s = store.sample(2, arm="sim", seed=1)
    assert s.num_rows == 2 and set(s["arm"].to_pylist()) == {"sim"}
    assert store.stats() == {"real/real": 3, "sim/sim": 7}


def test_since_returns_only_new_rows(tmp_path):
    store = ReplayStore(str(tmp_path))
    store.add(batch("a"))
    rows, cursor = store.since(0, arm="a")
    assert rows.num_rows == 3 and cursor == 3
    store.add(batch("b"))
    store.add(batch("a", n=2))
    rows, cursor = store.since(cursor, arm="a")
    assert rows.num_rows == 2 and cursor == 8


def test_schema_mismatch_is_rejected(tmp_path):
    store = ReplayStore(str(tmp_path))
    with pytest.raises(ValueError, match="schema"):
        store.add(pa.table({"x": [1]}))


def test_truncated_segment_recovers_complete_batches(tmp_path):
    store = ReplayStore(str(tmp_path))
    store.add(batch(n=3))
    store.add(batch(n=4))
    wal = next(tmp_path.glob("_wal-*.arrows"))  # the live WAL, unsealed
    data = wal.read_bytes()
    wal.write_bytes(data[:-40])  # the second batch is torn
    assert ReplayStore(str(tmp_path)).count() == 3


def test_a_replay_written_before_the_generation_columns_reads_them_as_null(tmp_path):
    old = batch(n=2)
    old = old.select([n for n in old.schema.names if n not in ("action_ids", "parsed")])  # the schema before them
    with pa.OSFile(str(tmp_path / "seg-0-0.arrow"), "wb") as f, pa.ipc.new_stream(f, old.schema) as w:
        w.write_batch(old)
    rows = ReplayStore(str(tmp_path)).sample().to_pylist()
    assert len(rows) == 2 and all(r["action_ids"] is None and r["parsed"] is None for r in rows)
    # the old stream segment was rewritten as an IPC file, in the current schema, so standard tools read it
    assert (tmp_path / "seg-0-0.arrow").read_bytes()[:6] == b"ARROW1"
    assert ds.dataset(str(tmp_path), format="arrow").to_table().num_rows == 2
    assert ReplayStore(str(tmp_path)).count() == 2


def test_replay_survives_actor_kill(tmp_path, ray_local):
    ray = ray_local
    actor = ReplayService.remote(str(tmp_path))
    acked = 0
    for v in range(5):
        acked = ray.get(actor.add.remote(batch(version=v, ep=f"v{v}-")))
    ray.kill(actor, no_restart=True)
    wal = next(tmp_path.glob("_wal-*.arrows"))
    with open(wal, "rb") as f:  # the kill is asynchronous: wait until the process is gone (its flock with it)
        for _ in range(100):
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.1)
    again = ReplayService.remote(str(tmp_path))
    assert ray.get(again.count.remote()) == acked == 15
    table = ray.get(again.sample.remote())
    assert sorted(set(table["policy_version"].to_pylist())) == [0, 1, 2, 3, 4]
    ray.get(again.add.remote(batch()))  # and it keeps writing, to a segment of its own
    assert ray.get(again.count.remote()) == 18
    assert len(list(tmp_path.glob("seg-*.arrow"))) == 1  # the killed actor's WAL, sealed on load
    assert len(list(tmp_path.glob("_wal-*.arrows"))) == 1  # the live one
    assert ds.dataset(str(tmp_path), format="arrow").to_table().num_rows == 15


def test_the_replay_actors_tables_cross_ray_as_one_ipc_buffer_and_arrive_unchanged(tmp_path, ray_local):
    import ray.cloudpickle

    from agentworld.replay import ship_tables_as_ipc

    ray = ray_local
    sliced = batch(n=10).slice(3, 4)  # offsets into shared buffers
    tables = [pa.Table.from_batches([sliced, batch(n=2)]), pa.Table.from_batches([], schema=sliced.schema)]
    assert b"agentworld.replay" not in ray.cloudpickle.dumps(tables[0])
    ship_tables_as_ipc()
    try:
        for table in tables:
            blob = ray.cloudpickle.dumps(table)
            assert b"agentworld.replay" in blob
            back = ray.cloudpickle.loads(blob)
            assert back.equals(table) and back.schema.metadata == table.schema.metadata
        assert b"agentworld.replay" not in ray.cloudpickle.dumps(sliced)  # a batch (an add) keeps Ray's default
    finally:
        ray.util.deregister_serializer(pa.Table)
    actor = ReplayService.remote(str(tmp_path))
    ray.get(actor.add.remote(sliced))
    ray.get(actor.add.remote(batch(version=1, n=5)))
    local = ReplayStore(str(tmp_path))
    assert ray.get(actor.table.remote()).equals(local.table())
    assert ray.get(actor.sample.remote(3, seed=4, min_policy_version=1)).equals(local.sample(3, seed=4,
                                                                                              min_policy_version=1))
    got, cursor = ray.get(actor.since.remote(4))
    assert got.equals(local.since(4)[0]) and cursor == 9


def test_sigterm_seals_the_actors_wal(tmp_path, ray_local):
    """`ray.shutdown()` ends the actor with SIGTERM: its WAL is sealed first, so a finished run reads as a dataset."""
    ray = ray_local
    actor = ReplayService.remote(str(tmp_path))
    ray.get(actor.add.remote(batch(n=4)))
    wal = next(tmp_path.glob("_wal-*.arrows"))
    os.kill(int(wal.name[:-len(".arrows")].rsplit("-", 1)[1]), signal.SIGTERM)
    for _ in range(100):
        if not wal.exists():
            break
        time.sleep(0.1)
    assert not list(tmp_path.glob("_wal-*")) and len(list(tmp_path.glob("seg-*.arrow"))) == 1
    assert ds.dataset(str(tmp_path), format="arrow").to_table().num_rows == 4


class FullDisk:
    """A writable file whose writes fail with ENOSPC while `full` is set: a disk filling up, then freed."""

    full = False

    def __init__(self, path, mode="wb"):
        self.f = open(path, mode)

    def write(self, data):
        import errno

        if FullDisk.full:
            self.f.write(bytes(data)[: len(data) // 2])  # part of it lands, as on a real disk filling up
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def flush(self):
        self.f.flush()

    def fileno(self):
        return self.f.fileno()

    def close(self):
        self.f.close()

    closed = property(lambda self: self.f.closed)
    writable = lambda self: True  # noqa: E731
    seekable = lambda self: False  # noqa: E731
    readable = lambda self: False  # noqa: E731


def test_a_full_disk_acknowledges_nothing_and_what_is_acknowledged_after_it_is_recovered(tmp_path, monkeypatch):
    """A write that hits ENOSPC raises and is not counted; once space is back, adds go to a new segment, and a new
    store over the dir recovers exactly the acknowledged rows (before the fix, rows acked after the failure were
    appended behind the torn bytes and lost)."""
    real = pa.OSFile
    monkeypatch.setattr(pa, "OSFile", lambda path, mode="rb": FullDisk(path, mode) if "w" in mode else real(path, mode))
    store = ReplayStore(str(tmp_path))
    store.add(batch(n=3, ep="a"))
    FullDisk.full = True
    try:
        for _ in range(2):
            with pytest.raises(OSError):
                store.add(batch(n=5, ep="b"))
    finally:
        FullDisk.full = False
    assert store.rows == 3
    for k in range(25):
        store.add(batch(n=1, ep=f"c{k}-"))
    assert store.rows == 28
    again = ReplayStore(str(tmp_path))
    assert again.rows == 28 and sorted(again.table()["episode_id"].to_pylist()) == sorted(store.table()["episode_id"].to_pylist())
    # the WAL the writes failed on: no writer holds it, so it is sealed (and the one left empty deleted)
    assert len(list(tmp_path.glob("seg-*.arrow"))) == 1
    assert len(list(tmp_path.glob("_wal-*.arrows"))) == 1  # the live one, only read


def test_a_flipped_byte_is_caught_by_the_checksum_and_only_that_batch_is_skipped(tmp_path):
    store = ReplayStore(str(tmp_path))
    for k in range(3):
        store.add(rows_to_batch([dict(run_id="r", arm="real", episode_id=f"e{k}", step=0, env_id="x", domain="d",
                                      source="real", obs=f"MARKER-{k}-observation", action="a", next_obs="n",
                                      reward=0.0, terminated=False, truncated=False, policy_version=0, actor_id="a")]))
    for close in (False, True):  # in the live WAL, then in the sealed segment
        if close:
            store.close()
        seg = next(tmp_path.glob("seg-*.arrow" if close else "_wal-*.arrows"))
        data = bytearray(seg.read_bytes())
        at = data.index(b"MARKER-1-observation")
        data[at + 7] ^= 0x01  # one bit of the second batch's observation
        seg.write_bytes(bytes(data))
        again = ReplayStore(str(tmp_path))
        assert again.table()["obs"].to_pylist() == ["MARKER-0-observation", "MARKER-2-observation"]
        assert again.damaged == [(seg.name, 1)]
        data[at + 7] ^= 0x01
        seg.write_bytes(bytes(data))


def test_a_dead_wal_with_a_damaged_batch_is_left_for_inspection(tmp_path):
    store = ReplayStore(str(tmp_path))
    store.add(batch(n=2, ep="MARKER"))
    store._abandon()  # as if its writer died: no one holds the WAL
    wal = next(tmp_path.glob("_wal-*.arrows"))
    data = bytearray(wal.read_bytes())
    data[data.index(b"MARKER") + 1] ^= 0x01
    wal.write_bytes(bytes(data))
    for _ in range(2):  # reported on every load, not sealed away
        again = ReplayStore(str(tmp_path))
        assert again.rows == 0 and again.damaged == [(wal.name, 2)] and wal.exists()


def rows(n, arm="a", source="real", env="E0", versions=None, ep="e", obs_chars=8):
    versions = [0] * n if versions is None else versions
    return rows_to_batch([dict(run_id="r", arm=arm, episode_id=f"{ep}{i}", step=0, env_id=env, domain="d",
                               source=source, obs="o" * obs_chars, action="a", next_obs="n", reward=0.0,
                               terminated=False, truncated=False, policy_version=int(versions[i]), actor_id="a")
                          for i in range(n)])


def mixed_store(path, capacity=None, seal_bytes=64 << 20):
    """Adds interleaving two arms, both sources, three envs, versions rising in one arm and shuffled in the other,
    some batches mixing keys; each row's episode_id names it."""
    store = ReplayStore(str(path), capacity=capacity, seal_bytes=seal_bytes)
    rng = np.random.default_rng(0)
    for k in range(60):
        arm, source, env = ("a", "b")[k % 2], ("real", "sim")[k % 3 == 0], f"E{k % 3}"
        versions = [k] * 5 if arm == "a" else rng.integers(0, 10, 5)
        b = rows(5, arm, source, env, versions, ep=f"{k}-")
        if k % 7 == 0:  # a batch of several (arm, source) keys
            b = pa.concat_batches([b, rows(3, "b", "sim", "E1", [k] * 3, ep=f"{k}x-")])
        store.add(b)
    return store


FILTERS = [dict(arm="a"), dict(source="sim"), dict(env_id="E1"), dict(arm="b", env_id="E2"),
           dict(min_policy_version=3, max_policy_version=6), dict(arm="a", min_policy_version=20),
           dict(arm="b", source="sim", env_id="E1", max_policy_version=30)]


def matching(table, arm=None, source=None, env_id=None, min_policy_version=None, max_policy_version=None):
    return {r["episode_id"] for r in table.to_pylist()
            if (arm is None or r["arm"] == arm) and (source is None or r["source"] == source)
            and (env_id is None or r["env_id"] == env_id)
            and (min_policy_version is None or r["policy_version"] >= min_policy_version)
            and (max_policy_version is None or r["policy_version"] <= max_policy_version)}


@pytest.mark.parametrize("filters", FILTERS)
def test_filtered_samples_are_uniform_over_exactly_the_matching_rows(tmp_path, filters):
    store = mixed_store(tmp_path)
    want = matching(store.table(), **filters)
    assert 8 <= len(want) < store.rows and store.count(**filters) == len(want)
    assert set(store.sample(**filters)["episode_id"].to_pylist()) == want
    draws, k = 1500, 4
    seen: dict = {}
    for seed in range(draws):
        ids = store.sample(k, seed=seed, **filters)["episode_id"].to_pylist()
        assert len(set(ids)) == k  # without replacement
        for i in ids:
            seen[i] = seen.get(i, 0) + 1
    assert set(seen) == want
    expected = draws * k / len(want)
    assert all(abs(c - expected) < 5 * np.sqrt(expected) for c in seen.values()), (expected, sorted(seen.values()))


def test_with_capacity_samples_are_uniform_over_the_held_matching_rows(tmp_path):
    store = mixed_store(tmp_path, capacity=12)
    want = matching(store.table(), arm="b")
    assert len(want) == 24 and want == {i for i in want if int(i.split("-")[0].rstrip("x")) >= 45}  # the newest
    seen: dict = {}
    for seed in range(600):
        for i in store.sample(4, seed=seed, arm="b")["episode_id"].to_pylist():
            seen[i] = seen.get(i, 0) + 1
    assert set(seen) == want and all(abs(c - 100) < 50 for c in seen.values()), sorted(seen.values())


def test_since_after_many_adds_returns_the_new_matching_rows_in_order(tmp_path):
    store = mixed_store(tmp_path)
    table = store.table()
    assert table.num_rows == store.rows == store.count()
    for cursor in (0, 1, 37, 150, store.rows - 3, store.rows):
        for filters in FILTERS:
            new, at = store.since(cursor, **filters)
            want = matching(table, **filters)
            assert at == store.rows
            assert new["episode_id"].to_pylist() == [i for i in table.slice(cursor)["episode_id"].to_pylist()
                                                     if i in want]


def test_memory_stays_under_capacity(tmp_path):
    cap = 40
    store = ReplayStore(str(tmp_path), capacity=cap)
    for k in range(50):  # 10x capacity per (arm, source)
        for arm in ("a", "b"):
            store.add(rows(8, arm, ep=f"{arm}{k}-"))
            assert store.held() <= 2 * cap
    assert store.held() == 2 * cap and store.count() == 800 and store.count(arm="a") == 400
    assert store.stats() == {"a/real": 400, "b/real": 400}
    held = store.sample(arm="a")["episode_id"].to_pylist()
    assert held == [f"a{k}-{i}" for k in range(45, 50) for i in range(8)]  # the newest, FIFO
    assert store.sample(100, seed=0, arm="a").num_rows == cap
    # a cursor before the evicted rows gets what is held: evicted rows are skipped
    new, cursor = store.since(0, arm="a")
    assert new["episode_id"].to_pylist() == held and cursor == 800
    new, _ = store.since(800 - 16, arm="a")
    assert new["episode_id"].to_pylist() == held[-8:]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_process_memory_does_not_grow_past_capacity(tmp_path):
    """256 KiB rows, capacity 50: after the first few times capacity the process stops growing; without eviction it
    would grow by 2.5 MiB an add (the bound is a coarse one, allocator slack included)."""
    store = ReplayStore(str(tmp_path), capacity=50)
    for k in range(40):
        store.add(rows(10, ep=f"{k}-", obs_chars=256 << 10))
        if k == 9:
            base, arrow = rss_mb(), pa.total_allocated_bytes()
    assert store.held() == 50
    assert pa.total_allocated_bytes() - arrow < 4 << 20
    assert rss_mb() - base < 30, (base, rss_mb())  # 30 more adds: 75 MiB more if nothing were evicted


def test_every_acknowledged_row_is_recovered_after_10x_capacity(tmp_path):
    store = mixed_store(tmp_path, capacity=6, seal_bytes=16 << 10)  # sealing every few adds
    assert store.held() <= 6 * len(store.parts)
    assert len(list(tmp_path.glob("seg-*.arrow"))) > 5
    acked = store.count()
    again = ReplayStore(str(tmp_path))
    assert again.rows == acked and again.table().num_rows == acked
    unbounded = mixed_store(tmp_path / "unbounded")
    assert again.table()["episode_id"].to_pylist() == unbounded.table()["episode_id"].to_pylist()
    bounded = ReplayStore(str(tmp_path), capacity=6)
    assert bounded.count() == acked and bounded.held() <= 6 * len(bounded.parts)


def test_pyarrow_dataset_reads_the_sealed_segments(tmp_path):
    store = mixed_store(tmp_path, seal_bytes=16 << 10)
    store.add(batch(n=1))
    sealed = ds.dataset(str(tmp_path), format="arrow").to_table()  # a live WAL is there too: skipped (`_` prefix)
    assert list(tmp_path.glob("_wal-*.arrows")) and 0 < sealed.num_rows < store.rows
    assert sealed["episode_id"].to_pylist() == store.table()["episode_id"].to_pylist()[:sealed.num_rows]
    store.close()
    assert not list(tmp_path.glob("_*"))
    everything = ds.dataset(str(tmp_path), format="arrow").to_table()
    assert everything.num_rows == store.rows and everything.schema.equals(store.table().schema)
    assert ReplayStore(str(tmp_path)).table().equals(store.table())


def test_a_crash_between_sealing_and_deleting_the_wal_reads_each_row_once(tmp_path):
    store = ReplayStore(str(tmp_path))
    store.add(batch(n=4))
    store._abandon()
    wal = next(tmp_path.glob("_wal-*.arrows"))
    kept = wal.read_bytes()
    assert ReplayStore(str(tmp_path)).rows == 4 and not wal.exists()  # sealed on load
    wal.write_bytes(kept)  # as if the loader died before deleting it
    assert ReplayStore(str(tmp_path)).rows == 4 and not wal.exists()


DEAF_REPLAY = """
import signal, sys, types
import ray
from agentworld.driver import end_ray
from agentworld.replay import _Service
from agentworld.schema import rows_to_batch

class Deaf(_Service):  # dies at SIGTERM without sealing, as a worker may exit on its raylet's death first
    def __init__(self, directory):
        super().__init__(directory)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
replay = ray.remote(Deaf).options(num_cpus=0).remote(sys.argv[1])
ray.get(replay.add.remote(rows_to_batch([dict(run_id="r", arm="a", episode_id="e", step=0, env_id="x", domain="d",
    source="real", obs="o", action="a", next_obs="n", reward=0.0, terminated=True, truncated=False, policy_version=0,
    actor_id="a")])))
end_ray(types.SimpleNamespace(replay=replay)) if sys.argv[2] == "end_ray" else ray.shutdown()
"""


@pytest.mark.parametrize("end", ["end_ray", "ray.shutdown"])
def test_the_driver_seals_the_replay_before_it_ends_ray(tmp_path, end):
    """The driver's `end_ray` has the replay seal its WAL before `ray.shutdown()`: a replay that exits without
    running its SIGTERM handler still leaves only sealed segments (plain `ray.shutdown()` leaves the WAL)."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", DEAF_REPLAY, str(tmp_path), end], check=True, timeout=300)
    sealed, wals = list(tmp_path.glob("seg-*.arrow")), list(tmp_path.glob("_wal-*"))
    assert (len(sealed), len(wals)) == ((1, 0) if end == "end_ray" else (0, 1))
    assert ReplayStore(str(tmp_path)).count() == 1  # either way no row is lost: a load seals a dead WAL
