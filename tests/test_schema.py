import pytest

from agentworld.schema import TRAJECTORY_SCHEMA, rows_to_batch


def row(**kw):
    base = dict(run_id="r", arm="real", episode_id="e0", step=0, env_id="gymnasium:FrozenLake-v1", domain="gridworld",
                source="real", obs="o", action="left", next_obs="n", reward=0.0, terminated=False, truncated=False,
                policy_version=0, actor_id="a0")
    return base | kw


def test_batch_carries_provenance_on_every_row():
    b = rows_to_batch([row(step=i, wm_version=2, logprobs=[-1.0], choices=["left", "up"]) for i in range(3)])
    assert b.schema.equals(TRAJECTORY_SCHEMA) and b.num_rows == 3
    r = b.to_pylist()[2]
    assert r["wm_version"] == 2 and r["actor_id"] == "a0" and r["created_at"] is not None and r["choices"] == ["left", "up"]


def test_required_fields_and_source_are_checked():
    with pytest.raises(ValueError, match="policy_version"):
        rows_to_batch([row(policy_version=None)])
    with pytest.raises(ValueError, match="source"):
        rows_to_batch([row(source="dream")])
