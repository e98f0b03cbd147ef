"""The trajectory schema: one row per transition, provenance on every row (docs/architecture.md)."""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

import pyarrow as pa

TRAJECTORY_SCHEMA = pa.schema(
    [
        # ids
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("episode_id", pa.string(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        # env
        pa.field("env_id", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # "real" | "sim"
        # transition
        pa.field("obs", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("next_obs", pa.string(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
        pa.field("terminated", pa.bool_(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        # provenance
        pa.field("policy_version", pa.int64(), nullable=False),
        pa.field("wm_version", pa.int64(), nullable=True),
        pa.field("control", pa.string(), nullable=True),
        # hybrid arm (agentworld/worldmodel/hybrid.py): real env steps a simulated step cost to shadow-execute,
        # whether the LWM's prediction matched the real transition (null: not scored), the live fidelity
        pa.field("shadow_steps", pa.int32(), nullable=True),
        pa.field("fidelity_match", pa.bool_(), nullable=True),
        pa.field("fidelity", pa.float64(), nullable=True),
        pa.field("actor_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # generation: the behaviour policy's log-probability of the action, for off-policy correction
        pa.field("logprobs", pa.list_(pa.float32()), nullable=True),
        # admissible actions the policy chose among (null when it generated freely)
        pa.field("choices", pa.list_(pa.string()), nullable=True),
        # a generated action's token ids, with the stop id where the reply ended by itself: the tokens `logprobs`
        # cover, which the learner scores (the action text may be stripped); null for chosen and scripted actions
        pa.field("action_ids", pa.list_(pa.int32()), nullable=True),
        # whether the env could parse the action (agentworld/episodes.py parsed); null in rows written before it
        pa.field("parsed", pa.bool_(), nullable=True),
        # the real fault a real env's fault layer injected into this step (e.g. MCP's timeout, crash), else null
        pa.field("fault", pa.string(), nullable=True),
    ]
)

SOURCES = ("real", "sim")


def rows_to_batch(rows: Iterable[Mapping[str, Any]]) -> pa.RecordBatch:
    """Build one record batch from transition dicts; missing nullable fields become null."""
    rows = list(rows)
    now = time.time()
    cols = {}
    for field in TRAJECTORY_SCHEMA:
        if field.name == "created_at":  # epoch seconds in, microseconds stored
            micros = [int(float(r.get("created_at") or now) * 1_000_000) for r in rows]
            cols[field.name] = pa.array(micros, pa.int64()).cast(field.type)
            continue
        values = [r.get(field.name) for r in rows]
        if not field.nullable and any(v is None for v in values):
            raise ValueError(f"trajectory field {field.name!r} is required")
        cols[field.name] = pa.array(values, field.type)
    for r in rows:
        if r["source"] not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {r['source']!r}")
    return pa.RecordBatch.from_pydict(cols, schema=TRAJECTORY_SCHEMA)


def epoch_seconds(t) -> float:
    """A row's `created_at` (a datetime from Arrow, or epoch seconds) as epoch seconds."""
    return t.timestamp() if hasattr(t, "timestamp") else float(t)
