"""ReplayService: trajectories as Arrow record batches in memory, with a write-ahead Arrow IPC log on disk.

`add` returns only after the batch is appended to this instance's segment file and fsynced, so every
acknowledged row survives a crash: a new ReplayService over the same dir loads every segment, and a
segment cut short mid-write yields all its complete batches. A write that fails (a full disk, an I/O error) raises
and acknowledges nothing; the segment it damaged is closed, and the next `add` starts a new one. Each batch carries a
CRC-32 of its bytes, checked on recovery: a batch whose bytes changed on disk is skipped and counted, never read."""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from agentworld.schema import TRAJECTORY_SCHEMA


def checksum(batch: pa.RecordBatch) -> str:
    return str(zlib.crc32(batch.serialize()))


def read_segment(path: Path, damaged: list | None = None) -> list[pa.RecordBatch]:
    """Every complete batch of an IPC stream file, stopping at a torn tail; a batch whose checksum does not match its
    bytes is skipped (appended to `damaged`). Batches written before checksums are taken as they are."""
    batches = []
    try:
        with pa.OSFile(str(path), "rb") as f:
            reader = pa.ipc.open_stream(f)
            while True:
                try:
                    batch, meta = reader.read_next_batch_with_custom_metadata()
                except StopIteration:
                    break
                crc = meta.get(b"crc32") if meta is not None else None
                if crc is not None and crc.decode() != checksum(batch):
                    if damaged is not None:
                        damaged.append((path.name, batch.num_rows))
                    continue
                batches.append(batch)
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
        self.damaged: list[tuple[str, int]] = []  # (segment, rows) of batches skipped on recovery: checksum mismatch
        for seg in sorted(self.dir.glob("seg-*.arrow")):
            self.batches += read_segment(seg, self.damaged)
        self.rows = sum(b.num_rows for b in self.batches)
        self._table: pa.Table | None = None
        self._sink = None
        self._writer = None

    def add(self, batch: pa.RecordBatch | pa.Table) -> int:
        """Append durably; returns the total row count."""
        if not batch.schema.equals(TRAJECTORY_SCHEMA):
            raise ValueError("batch schema differs from TRAJECTORY_SCHEMA")
        batches = batch.to_batches() if isinstance(batch, pa.Table) else [batch]
        try:
            if self._writer is None:  # a new segment: the first add, or the first after a failed write
                path = self.dir / f"seg-{time.time_ns()}-{os.getpid()}.arrow"
                self._sink = pa.OSFile(str(path), "wb")
                self._writer = pa.ipc.new_stream(self._sink, TRAJECTORY_SCHEMA)
            for b in batches:
                self._writer.write_batch(b, custom_metadata={"crc32": checksum(b)})
            self._sink.flush()
            os.fsync(self._sink.fileno())
        except (OSError, pa.ArrowException):
            self._abandon()  # its tail may be torn: recovery reads the segment up to there
            raise
        self.batches += batches
        self.rows += batch.num_rows
        self._table = None
        return self.rows

    def _abandon(self) -> None:
        """Drop the segment a write failed on; nothing after the failure is written to it."""
        for closing in (self._writer, self._sink):
            try:
                if closing is not None:
                    closing.close()
            except (OSError, pa.ArrowException):
                pass
        self._writer = self._sink = None

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
