import pyarrow as pa
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
    seg = next(tmp_path.glob("seg-*.arrow"))
    data = seg.read_bytes()
    seg.write_bytes(data[:-40])  # the second batch is torn
    assert ReplayStore(str(tmp_path)).count() == 3


def test_a_replay_written_before_the_generation_columns_reads_them_as_null(tmp_path):
    old = batch(n=2)
    old = old.select([n for n in old.schema.names if n not in ("action_ids", "parsed")])  # the schema before them
    with pa.OSFile(str(tmp_path / "seg-0-0.arrow"), "wb") as f, pa.ipc.new_stream(f, old.schema) as w:
        w.write_batch(old)
    rows = ReplayStore(str(tmp_path)).sample().to_pylist()
    assert len(rows) == 2 and all(r["action_ids"] is None and r["parsed"] is None for r in rows)


def test_replay_survives_actor_kill(tmp_path, ray_local):
    ray = ray_local
    actor = ReplayService.remote(str(tmp_path))
    acked = 0
    for v in range(5):
        acked = ray.get(actor.add.remote(batch(version=v, ep=f"v{v}-")))
    ray.kill(actor, no_restart=True)
    again = ReplayService.remote(str(tmp_path))
    assert ray.get(again.count.remote()) == acked == 15
    table = ray.get(again.sample.remote())
    assert sorted(set(table["policy_version"].to_pylist())) == [0, 1, 2, 3, 4]
    ray.get(again.add.remote(batch()))  # and it keeps writing, to a segment of its own
    assert ray.get(again.count.remote()) == 18
    assert len(list(tmp_path.glob("seg-*.arrow"))) == 2


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
    assert len(list(tmp_path.glob("seg-*.arrow"))) >= 2


def test_a_flipped_byte_is_caught_by_the_checksum_and_only_that_batch_is_skipped(tmp_path):
    store = ReplayStore(str(tmp_path))
    for k in range(3):
        store.add(rows_to_batch([dict(run_id="r", arm="real", episode_id=f"e{k}", step=0, env_id="x", domain="d",
                                      source="real", obs=f"MARKER-{k}-observation", action="a", next_obs="n",
                                      reward=0.0, terminated=False, truncated=False, policy_version=0, actor_id="a")]))
    seg = next(tmp_path.glob("seg-*.arrow"))
    data = bytearray(seg.read_bytes())
    at = data.index(b"MARKER-1-observation")
    data[at + 7] ^= 0x01  # one bit of the second batch's observation
    seg.write_bytes(bytes(data))
    again = ReplayStore(str(tmp_path))
    assert again.table()["obs"].to_pylist() == ["MARKER-0-observation", "MARKER-2-observation"]
    assert again.damaged == [(seg.name, 1)]
