"""ReplayService: trajectories as Arrow record batches in memory, with a write-ahead Arrow IPC log on disk.

`add` returns only after the batch is appended to this instance's segment file and fsynced, so every
acknowledged row survives a crash: a new ReplayService over the same dir loads every segment, and a
segment cut short mid-write yields all its complete batches."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from agentworld.schema import TRAJECTORY_SCHEMA


def read_segment(path: Path) -> list[pa.RecordBatch]:
    """Every complete batch of an IPC stream file, stopping at the first damaged one."""
    batches = []
    try:
        with pa.OSFile(str(path), "rb") as f:
            reader = pa.ipc.open_stream(f)
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
    except (pa.ArrowInvalid, OSError, EOFError):
        pass  # a torn tail: keep what was read before it
    return [_upgrade(b) for b in batches]


def _upgrade(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch written before nullable fields were added to the schema: those fields become null."""
    if batch.schema.equals(TRAJECTORY_SCHEMA):
        return batch
    cols = [batch.column(f.name) if f.name in batch.schema.names else pa.nulls(batch.num_rows, f.type)
            for f in TRAJECTORY_SCHEMA]
    return pa.RecordBatch.from_arrays(cols, schema=TRAJECTORY_SCHEMA)


class ReplayStore:
    def __init__(self, directory: str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.batches: list[pa.RecordBatch] = []
        for seg in sorted(self.dir.glob("seg-*.arrow")):
            self.batches += read_segment(seg)
        self.rows = sum(b.num_rows for b in self.batches)
        self._table: pa.Table | None = None
        self._path = self.dir / f"seg-{time.time_ns()}-{os.getpid()}.arrow"
        self._sink = None
        self._writer = None

    def add(self, batch: pa.RecordBatch | pa.Table) -> int:
        """Append durably; returns the total row count."""
        if not batch.schema.equals(TRAJECTORY_SCHEMA):
            raise ValueError("batch schema differs from TRAJECTORY_SCHEMA")
        batches = batch.to_batches() if isinstance(batch, pa.Table) else [batch]
        if self._writer is None:
            self._sink = pa.OSFile(str(self._path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, TRAJECTORY_SCHEMA)
        for b in batches:
            self._writer.write_batch(b)
        self._sink.flush()
        os.fsync(self._sink.fileno())
        self.batches += batches
        self.rows += batch.num_rows
        self._table = None
        return self.rows

    def table(self) -> pa.Table:
        if self._table is None:
            self._table = pa.Table.from_batches(self.batches, schema=TRAJECTORY_SCHEMA)
        return self._table

    @staticmethod
    def _filter(table: pa.Table, arm=None, source=None, env_id=None, min_policy_version=None,
                max_policy_version=None) -> pa.Table:
        mask = None
        for name, value in (("arm", arm), ("source", source), ("env_id", env_id)):
            if value is not None:
                m = pc.equal(table[name], value)
                mask = m if mask is None else pc.and_(mask, m)
        if min_policy_version is not None:
            m = pc.greater_equal(table["policy_version"], min_policy_version)
            mask = m if mask is None else pc.and_(mask, m)
        if max_policy_version is not None:
            m = pc.less_equal(table["policy_version"], max_policy_version)
            mask = m if mask is None else pc.and_(mask, m)
        return table if mask is None else table.filter(mask)

    def sample(self, n: int | None = None, *, seed: int | None = None, **filters) -> pa.Table:
        """Matching rows: all when n is None, else n drawn uniformly without replacement."""
        table = self._filter(self.table(), **filters)
        if n is None or n >= table.num_rows:
            return table
        idx = np.random.default_rng(seed).choice(table.num_rows, size=n, replace=False)
        return table.take(pa.array(np.sort(idx)))

    def since(self, cursor: int, **filters) -> tuple[pa.Table, int]:
        """Matching rows appended after global row `cursor`, and the new cursor."""
        return self._filter(self.table().slice(cursor), **filters), self.rows

    def count(self, **filters) -> int:
        return self._filter(self.table(), **filters).num_rows if filters else self.rows

    def stats(self) -> dict[str, int]:
        """Row counts per (arm, source)."""
        table = self.table()
        out: dict[str, int] = {}
        for arm, source in zip(table["arm"].to_pylist(), table["source"].to_pylist()):
            out[f"{arm}/{source}"] = out.get(f"{arm}/{source}", 0) + 1
        return out


ReplayService = ray.remote(ReplayStore)
