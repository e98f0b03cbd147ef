"""ShardedReplay (issue 19): N ReplayService actors on one dir behind the one replay API."""

import numpy as np
import pyarrow.dataset as ds
import ray

from agentworld.replay import ReplayStore, ShardedReplay, start_replay
from agentworld.schema import rows_to_batch


def batch(arm: str, n: int, ep: str, version: int = 0):
    return rows_to_batch([dict(run_id="r", arm=arm, episode_id=f"{ep}-{i // 3}", step=i % 3, env_id="E",
                               domain="gridworld", source="real", obs=f"{ep}/{i}", action="left", next_obs="n",
                               reward=0.0, terminated=False, truncated=False, policy_version=version, actor_id="a")
                          for i in range(n)])


def obs(table) -> set:
    return set(table.column("obs").to_pylist())


def test_a_sharded_replay_answers_as_one_store_and_keeps_every_row_across_restarts(tmp_path, ray_local):
    replay = start_replay(str(tmp_path), shards=3)
    assert isinstance(replay, ShardedReplay) and len(replay.shards) == 3
    adds = [batch("a", 5, "a0"), batch("b", 4, "b0"), batch("a", 6, "a1"), batch("b", 2, "b1"), batch("a", 3, "a2")]
    for b in adds:
        ray.get(replay.add.remote(b))
    per_shard = [ray.get(s.count.remote()) for s in replay.shards]
    assert sum(per_shard) == 20 and sum(1 for k in per_shard if k) >= 2  # the writes went to more than one shard
    assert ray.get(replay.count.remote()) == 20 and ray.get(replay.count.remote(arm="a")) == 14
    assert ray.get(replay.stats.remote()) == {"a/real": 14, "b/real": 6}
    assert obs(ray.get(replay.sample.remote(arm="b"))) == obs(adds[1]) | obs(adds[3])
    # a sample is drawn from the matching rows only, and over seeds every matching row is drawn
    a_rows, drawn = obs(adds[0]) | obs(adds[2]) | obs(adds[4]), set()
    for seed in range(30):
        s = ray.get(replay.sample.remote(4, seed=seed, arm="a"))
        assert s.num_rows == 4 and obs(s) <= a_rows
        drawn |= obs(s)
    assert drawn == a_rows
    assert ray.get(replay.sample.remote(4, seed=3, arm="a")) == ray.get(replay.sample.remote(4, seed=3, arm="a"))

    # a since cursor is one row count per shard: it returns exactly the rows added after it
    cursor = ray.get(replay.cursor.remote())
    assert isinstance(cursor, list) and len(cursor) == 3 and sum(cursor) == 20
    later = [batch("a", 2, "a3"), batch("b", 3, "b2"), batch("a", 4, "a4")]
    for b in later:
        ray.get(replay.add.remote(b))
    new, cursor2 = ray.get(replay.since.remote(cursor, arm="a"))
    assert obs(new) == obs(later[0]) | obs(later[2]) and sum(cursor2) == 29
    assert ray.get(replay.since.remote(cursor2))[0].num_rows == 0
    assert ray.get(replay.since.remote(0, arm="b"))[0].num_rows == 9
    for s in replay.shards:
        ray.get(s.close.remote())
        ray.kill(s)

    # one store reads every shard's segments; pyarrow.dataset too
    everything = obs(ReplayStore(str(tmp_path)).table())
    assert len(everything) == 29 and everything == set().union(*map(obs, adds + later))
    assert ds.dataset(str(tmp_path), format="arrow").count_rows() == 29
    # reopened with the same shards, or another number of them, no row is lost or read twice
    for n in (3, 2):
        replay = start_replay(str(tmp_path), shards=n)
        assert ray.get(replay.count.remote()) == 29 and obs(ray.get(replay.table.remote())) == everything
        for s in replay.shards:
            ray.kill(s)


def test_a_sharded_sample_weighs_each_shard_by_its_matching_rows(tmp_path, ray_local):
    """900 matching rows in one shard, 100 in the other: a tenth of the draws come from the second (drawing as many
    from each shard would give a half)."""
    replay = start_replay(str(tmp_path), shards=2)
    big, small = batch("a", 900, "big"), batch("a", 100, "small")
    ray.get(replay.shards[0].add.remote(big))
    ray.get(replay.shards[1].add.remote(small))
    ray.get(replay.shards[1].add.remote(batch("other", 500, "o")))  # not matching: no weight
    draws = [ray.get(replay.sample.remote(100, seed=seed, arm="a")) for seed in range(20)]
    assert all(d.num_rows == 100 and len(obs(d)) == 100 for d in draws)  # without replacement
    share = np.mean([o.startswith("small/") for d in draws for o in d.column("obs").to_pylist()])
    assert 0.07 < share < 0.13, share
    assert ray.get(replay.sample.remote(5000, arm="a")).num_rows == 1000  # more than there is: all of them


def test_a_cursor_of_another_shape_is_refused_by_name(tmp_path, ray_local):
    replay = start_replay(str(tmp_path), shards=2)
    ray.get(replay.add.remote(batch("a", 3, "x")))
    for bad in (3, [0, 0, 0]):
        try:
            ray.get(replay.since.remote(bad))
        except ray.exceptions.RayTaskError as e:
            assert "a cursor of a replay of 2 shards is a list of 2 row counts" in str(e)
        else:
            raise AssertionError(f"cursor {bad!r} accepted")
