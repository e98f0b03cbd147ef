"""ReplayService: trajectories as Arrow record batches in memory, with a write-ahead Arrow IPC log on disk.

`add` returns only after the batch is appended to this instance's WAL segment and fsynced, so every acknowledged
row survives a crash: a new ReplayService over the same dir loads every segment, and a segment cut short mid-write
yields all its complete batches. A write that fails (a full disk, an I/O error) raises and acknowledges nothing; the
segment it damaged is closed, and the next `add` starts a new one. Each batch carries a CRC-32 of its bytes, checked
on load: a batch whose bytes changed on disk is skipped and counted (`damaged`), never read.

On disk: the live WAL `_wal-<ns>-<pid>.arrows` is an Arrow IPC file still being written (flock-ed by its writer).
Sealing it (at `seal_bytes`, on `close()`, at interpreter exit, and when Ray ends the actor with SIGTERM, as
`ray.shutdown()` does) appends the footer, fsyncs and renames it to `seg-<ns>-<pid>.arrow`. A WAL no process holds
(its writer crashed or was killed) and an old stream-format `seg-*.arrow` (told by the missing `ARROW1` magic) are
rewritten as IPC files on load (temp, fsync, rename; the WAL is deleted after). So
`pyarrow.dataset.dataset(dir, format="arrow")` reads every sealed row: it skips `_`-prefixed names, the live WAL
among them. A segment with a damaged batch is left as it is, for inspection, and reported on every load.

In memory: rows are held per (arm, source), each with numpy columns of global row index, policy_version and env
code, so a filtered sample of B rows costs O(B) takes from a few chunks (chunks are merged, binary-counter
style, when sampled from), `since` costs O(new rows) and `count` O(keys). With `capacity`, each (arm, source)
holds its newest `capacity` rows (FIFO); the on-disk log keeps everything. Then `sample`, `table` and `since` see
the held rows only (a `since` cursor older than the held rows gets the held ones: evicted rows are skipped), while
`count` and `stats` count every row ever added (`count()` is the global row cursor `since` takes)."""

from __future__ import annotations

import atexit
import fcntl
import os
import signal
import threading
import time
import weakref
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from agentworld.schema import TRAJECTORY_SCHEMA

MAGIC = b"ARROW1"
# merges and takes allocate from the system allocator: pyarrow's default, mimalloc, took 5-20x longer to fill fresh
# memory on our 2-core VM (merging 1M rows' chunks, bench/replay.py: 9.0 s against 1.8 s), and merges fill fresh memory
POOL = pa.system_memory_pool()
_LIVE: weakref.WeakSet = weakref.WeakSet()  # stores with a live WAL, sealed when the interpreter exits
atexit.register(lambda: [store.close() for store in list(_LIVE)])


def checksum(batch: pa.RecordBatch) -> str:
    return str(zlib.crc32(batch.serialize()))


def _stream_batches(f) -> list:
    """(batch, custom metadata) of an IPC stream from f's position, stopping at a torn tail or the end marker."""
    out = []
    try:
        reader = pa.ipc.open_stream(f)
        while True:
            try:
                out.append(reader.read_next_batch_with_custom_metadata())
            except StopIteration:
                break
    except (pa.ArrowInvalid, OSError, EOFError):
        pass  # a torn tail: keep what was read before it
    return out


def read_segment(path: Path, damaged: list | None = None) -> list[pa.RecordBatch]:
    """Every complete batch of a segment (a sealed IPC file, a WAL or an old stream segment), stopping at a torn tail;
    a batch whose checksum does not match its bytes is skipped (appended to `damaged`). Batches written before
    checksums are taken as they are."""
    with pa.OSFile(str(path), "rb") as f:
        start = 8 if f.read(6) == MAGIC else 0  # an IPC file is its stream after 8 bytes, then a footer
        pairs = None
        if start:
            try:
                reader = pa.ipc.open_file(f)
                pairs = [reader.get_batch_with_custom_metadata(i) for i in range(reader.num_record_batches)]
            except (pa.ArrowInvalid, OSError):
                pass  # no footer yet (a WAL) or a broken one: read it as the stream it holds
        if pairs is None:
            f.seek(start)
            pairs = _stream_batches(f)
    batches = []
    for batch, meta in pairs:
        crc = meta.get(b"crc32") if meta is not None else None
        if crc is not None and crc.decode() != checksum(batch):
            if damaged is not None:
                damaged.append((path.name, batch.num_rows))
            continue
        batches.append(_upgrade(batch))
    return batches


def _upgrade(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch written before nullable fields were added to the schema: those fields become null."""
    if batch.schema.equals(TRAJECTORY_SCHEMA):
        return batch
    cols = [batch.column(f.name) if f.name in batch.schema.names else pa.nulls(batch.num_rows, f.type)
            for f in TRAJECTORY_SCHEMA]
    return pa.RecordBatch.from_arrays(cols, schema=TRAJECTORY_SCHEMA)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_sealed(batches: list[pa.RecordBatch], dst: Path) -> None:
    """`batches` as the IPC file `dst`, atomically: a temp file, fsynced, renamed over it."""
    tmp = dst.with_name(f"_seal-{dst.name}")
    sink = pa.OSFile(str(tmp), "wb")
    try:
        writer = pa.ipc.new_file(sink, TRAJECTORY_SCHEMA)
        for b in batches:
            writer.write_batch(b, custom_metadata={"crc32": checksum(b)})
        writer.close()
        sink.flush()
        os.fsync(sink.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        sink.close()
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


class _Column:
    """A numpy column appended to in amortized O(1) and trimmed at the front (eviction)."""

    def __init__(self, dtype):
        self.a = np.empty(1024, dtype)
        self.lo = self.hi = 0

    def extend(self, values: np.ndarray) -> None:
        k = len(values)
        if self.hi + k > len(self.a):
            live = self.a[self.lo:self.hi]
            grown = np.empty(max(2 * len(live) + k, 1024), self.a.dtype)
            grown[:len(live)] = live
            self.a, self.lo, self.hi = grown, 0, len(live)
        self.a[self.hi:self.hi + k] = values
        self.hi += k

    def drop(self, k: int) -> None:
        self.lo += k

    def view(self) -> np.ndarray:
        return self.a[self.lo:self.hi]

    def __len__(self) -> int:
        return self.hi - self.lo


class _Partition:
    """One (arm, source)'s held rows: record batch chunks, and per row numpy columns to select them without Arrow."""

    def __init__(self, max_chunk: int):
        self.chunks: list[pa.RecordBatch] = []
        self.offsets: np.ndarray | None = None  # first held row of each chunk, and the end; None: stale
        self.gidx, self.version, self.env = _Column(np.int64), _Column(np.int64), _Column(np.int32)
        self.by_env: dict[int, _Column] = {}  # env code -> positions (since the partition began) of its rows
        self.head = 0  # rows evicted so far: the position of the first held row
        self.monotone = True  # policy versions never decrease: version ranges are found by bisection
        self.counts: dict[tuple[int, int], int] = {}  # (env code, policy_version) -> rows ever added
        self.max_chunk = max_chunk

    def append(self, batch: pa.RecordBatch, gidx: np.ndarray, env: np.ndarray) -> None:
        version = batch.column("policy_version").to_numpy()
        v = self.version.view()
        if self.monotone and (np.any(np.diff(version) < 0) or (len(v) and version[0] < v[-1])):
            self.monotone = False
        pos = self.head + len(self.gidx) + np.arange(len(version))
        for code in np.unique(env):
            self.by_env.setdefault(int(code), _Column(np.int64)).extend(pos[env == code])
            for ver, k in zip(*np.unique(version[env == code], return_counts=True)):
                self.counts[int(code), int(ver)] = self.counts.get((int(code), int(ver)), 0) + int(k)
        self.gidx.extend(gidx)
        self.version.extend(version)
        self.env.extend(env)
        self.chunks.append(batch)
        self.offsets = None

    def evict(self, k: int) -> None:
        """Drop the oldest k held rows."""
        self.head += k
        for col in (self.gidx, self.version, self.env):
            col.drop(k)
        for col in self.by_env.values():
            col.drop(int(np.searchsorted(col.view(), self.head)))
        while k:
            first = self.chunks[0]
            if first.num_rows <= k:
                self.chunks.pop(0)
                k -= first.num_rows
            else:
                self.chunks[0] = first.slice(k)
                k = 0
        self.offsets = None

    def compact(self) -> None:
        """Merge chunks binary-counter style (a chunk absorbs newer ones while it is at most twice their size, up to
        max_chunk): a random sample touches O(log rows) chunks, a row is copied O(log rows) times in all, and at most
        once a compaction."""
        stack: list[list] = []  # [rows, chunks to merge into one]
        for c in self.chunks:
            stack.append([c.num_rows, [c]])
            while len(stack) > 1 and stack[-2][0] <= 2 * stack[-1][0] and stack[-2][0] + stack[-1][0] <= self.max_chunk:
                rows, group = stack.pop()
                stack[-1][0] += rows
                stack[-1][1] += group
        if len(stack) < len(self.chunks):
            self.chunks = [g[0] if len(g) == 1 else pa.concat_batches(g, memory_pool=POOL) for _, g in stack]
            self.offsets = None

    def select(self, code: int | None, vmin: int | None, vmax: int | None, after: int | None):
        """Held rows matching: a range of positions among the held rows, or an array of them."""
        lo, hi = 0, len(self.gidx)
        if after is not None:
            lo = int(np.searchsorted(self.gidx.view(), after))
        ranged = vmin is not None or vmax is not None
        if ranged and self.monotone:
            v = self.version.view()
            lo = max(lo, int(np.searchsorted(v, vmin, "left"))) if vmin is not None else lo
            hi = int(np.searchsorted(v, vmax, "right")) if vmax is not None else hi
        sel: range | np.ndarray = range(lo, max(lo, hi))
        if code is not None:
            pos = self.by_env[code].view() - self.head if code in self.by_env else np.empty(0, np.int64)
            sel = pos[np.searchsorted(pos, lo):np.searchsorted(pos, max(lo, hi))]
        if ranged and not self.monotone:
            idx = np.arange(sel.start, sel.stop) if isinstance(sel, range) else sel
            v = self.version.view()[idx]
            sel = idx[((v >= vmin) if vmin is not None else True) & ((v <= vmax) if vmax is not None else True)]
        return sel

    def pieces(self, sel: range | np.ndarray) -> list[pa.RecordBatch]:
        """The rows at held positions `sel` (sorted), as batches owning their buffers (a slice would drag its whole
        chunk through Ray's serialization)."""
        if self.offsets is None:
            self.offsets = np.cumsum([0] + [c.num_rows for c in self.chunks])
        if isinstance(sel, range):
            out = []
            for c in range(max(0, int(np.searchsorted(self.offsets, sel.start, "right")) - 1), len(self.chunks)):
                a, b = max(sel.start, self.offsets[c]), min(sel.stop, self.offsets[c + 1])
                if a >= b:
                    break
                whole = a == self.offsets[c] and b == self.offsets[c + 1] and self.chunks[c].column(0).offset == 0
                piece = self.chunks[c].slice(a - self.offsets[c], b - a)
                out.append(self.chunks[c] if whole else pa.concat_batches([piece], memory_pool=POOL))
            return out
        chunk = np.searchsorted(self.offsets, sel, "right") - 1
        cuts = np.flatnonzero(np.diff(chunk)) + 1
        return [pc.take(self.chunks[chunk[s]], pa.array(sel[s:e] - self.offsets[chunk[s]]), memory_pool=POOL)
                for s, e in zip(np.r_[0, cuts], np.r_[cuts, len(sel)])]


class ReplayStore:
    def __init__(self, directory: str, capacity: int | None = None, seal_bytes: int = 64 << 20,
                 shard: tuple[int, int] | None = None):
        """`capacity`: rows held in memory per (arm, source), None or 0 for all; `seal_bytes`: the WAL size at which
        it is sealed into a `seg-*.arrow` IPC file; `shard`: (k, n), shard k of n sharing `directory` (its segments
        are named `...-s<k>`; it loads those whose shard number is k modulo n, unsharded ones in shard 0). Without
        `shard`, a store loads every segment in the dir, every shard's."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity or None
        self.seal_bytes = seal_bytes
        self.shard = shard
        self.rows = 0  # rows ever added: the global index of the next row
        self.damaged: list[tuple[str, int]] = []  # (segment, rows) of batches skipped on load: checksum mismatch
        self.parts: dict[tuple[str, str], _Partition] = {}
        self.env_codes: dict[str, int] = {}
        self._table: pa.Table | None = None
        self._sink = self._writer = self._wal = None
        self._abandoned: list[Path] = []  # own WALs a write failed on: sealed on close
        self._writing = False
        stems = {n[4:-6] for n in os.listdir(self.dir) if n.startswith("seg-") and n.endswith(".arrow")}
        stems |= {n[5:-7] for n in os.listdir(self.dir) if n.startswith("_wal-") and n.endswith(".arrows")}
        for stem in sorted(stems):
            if shard is not None and stem_shard(stem) % shard[1] != shard[0]:
                continue
            for b in self._load(stem):
                self._hold(b)

    # -- disk

    def _load(self, stem: str) -> list[pa.RecordBatch]:
        seg, wal = self.dir / f"seg-{stem}.arrow", self.dir / f"_wal-{stem}.arrows"
        if seg.exists():
            if wal.exists():  # sealed, then its writer died before deleting the WAL: the copy is complete
                self._seal_dead(wal, seg, keep=False)
            with open(seg, "rb") as f:
                sealed = f.read(6) == MAGIC
            return read_segment(seg, self.damaged) if sealed else self._seal_dead(seg, seg)
        return self._seal_dead(wal, seg)

    def _seal_dead(self, src: Path, dst: Path, keep: bool = True) -> list[pa.RecordBatch]:
        """The batches of stream segment `src`; when no process writes it (flock), it is sealed into `dst` first (a
        live writer's WAL is only read). `keep=False`: `dst` already holds them, `src` is just deleted."""
        try:
            fd = os.open(src, os.O_RDONLY)
        except FileNotFoundError:  # its writer sealed it meanwhile
            return read_segment(dst, self.damaged) if keep else []
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live writer's WAL
                try:
                    return read_segment(src, self.damaged) if keep else []
                except FileNotFoundError:  # sealed by its writer meanwhile
                    return read_segment(dst, self.damaged)
            if not src.exists():  # sealed by its writer between the open and the lock
                return read_segment(dst, self.damaged) if keep else []
            damaged: list = []
            batches = read_segment(src, damaged) if keep else []
            self.damaged += damaged
            try:
                if keep and batches and not damaged:
                    _write_sealed(batches, dst)
                if src != dst and not damaged:
                    src.unlink()
            except (OSError, pa.ArrowException):
                pass  # a read-only dir or a full disk: it stays a stream segment, read as one
            return batches
        finally:
            os.close(fd)

    def add(self, batch: pa.RecordBatch | pa.Table) -> int:
        """Append durably; returns the total row count."""
        if not batch.schema.equals(TRAJECTORY_SCHEMA):
            raise ValueError("batch schema differs from TRAJECTORY_SCHEMA")
        batches = batch.to_batches() if isinstance(batch, pa.Table) else [batch]
        self._writing = True  # a SIGTERM now leaves the WAL to the next load
        try:
            try:
                if self._writer is None:  # a new segment: the first add, or the first after a failed write or a seal
                    tag = f"-s{self.shard[0]}" if self.shard else ""
                    self._wal = self.dir / f"_wal-{time.time_ns()}-{os.getpid()}{tag}.arrows"
                    self._sink = pa.OSFile(str(self._wal), "wb")
                    fcntl.flock(self._sink.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when this process ends
                    self._writer = pa.ipc.new_file(self._sink, TRAJECTORY_SCHEMA)
                    _LIVE.add(self)
                for b in batches:
                    self._writer.write_batch(b, custom_metadata={"crc32": checksum(b)})
                self._sink.flush()
                os.fsync(self._sink.fileno())
            except (OSError, pa.ArrowException):
                self._abandon()  # its tail may be torn: loading reads the segment up to there
                raise
            for b in batches:
                self._hold(b)
            if self._wal.stat().st_size >= self.seal_bytes:
                self._seal()
        finally:
            self._writing = False
        return self.rows

    def _seal(self) -> None:
        """The live WAL, footer appended, becomes a sealed segment (its rows are already durable)."""
        if self._writer is None:
            return
        try:
            self._writer.close()
            self._sink.flush()
            os.fsync(self._sink.fileno())
            os.rename(self._wal, self._wal.with_name(f"seg-{self._wal.name[5:-7]}.arrow"))
            _fsync_dir(self.dir)
        except (OSError, pa.ArrowException):
            self._abandon()
            return
        self._sink.close()
        self._writer = self._sink = None

    def _abandon(self) -> None:
        """Drop the segment a write failed on; nothing after the failure is written to it."""
        for closing in (self._writer, self._sink):
            try:
                if closing is not None:
                    closing.close()
            except (OSError, pa.ArrowException):
                pass
        self._writer = self._sink = None
        self._abandoned.append(self._wal)

    def close(self) -> None:
        """Seal this store's WALs, so every row it wrote is readable as an IPC file."""
        self._seal()
        for wal in self._abandoned:
            if wal.exists():
                self._seal_dead(wal, wal.with_name(f"seg-{wal.name[5:-7]}.arrow"))
        self._abandoned = []

    # -- memory

    def _hold(self, batch: pa.RecordBatch) -> None:
        """Index a durable batch under its (arm, source) and evict beyond capacity."""
        n = batch.num_rows
        if not n:
            return
        gidx = self.rows + np.arange(n)
        arms, sources = pc.unique(batch.column("arm")), pc.unique(batch.column("source"))
        if len(arms) == 1 and len(sources) == 1:
            groups = [((arms[0].as_py(), sources[0].as_py()), batch, gidx)]
        else:
            keys = pc.binary_join_element_wise(batch.column("arm"), batch.column("source"), "\x00")
            enc = pc.dictionary_encode(keys)
            codes = enc.indices.to_numpy()
            groups = []
            for c, key in enumerate(enc.dictionary.to_pylist()):
                idx = np.flatnonzero(codes == c)
                groups.append((tuple(key.split("\x00")), batch.take(pa.array(idx)), gidx[idx]))
        self.rows += n
        for key, part_batch, part_gidx in groups:
            part = self.parts.get(key)
            if part is None:
                part = self.parts[key] = _Partition(max(1, self.capacity // 4) if self.capacity else 1 << 20)
            part.append(part_batch, part_gidx, self._env_codes(part_batch.column("env_id")))
            if self.capacity and len(part.gidx) > self.capacity:
                part.evict(len(part.gidx) - self.capacity)
        self._table = None

    def _env_codes(self, env: pa.Array) -> np.ndarray:
        enc = pc.dictionary_encode(env)
        lut = np.array([self.env_codes.setdefault(e, len(self.env_codes)) for e in enc.dictionary.to_pylist()],
                       np.int32)
        return lut[enc.indices.to_numpy()]

    def _select(self, arm=None, source=None, env_id=None, min_policy_version=None, max_policy_version=None,
                after=None) -> list[tuple[_Partition, range | np.ndarray]]:
        """Per (arm, source) partition that matches, its matching held rows."""
        code = None
        if env_id is not None:
            code = self.env_codes.get(env_id, -1)
        return [(p, p.select(code, min_policy_version, max_policy_version, after)) for (a, s), p in self.parts.items()
                if (arm is None or a == arm) and (source is None or s == source)]

    @staticmethod
    def _gather(picks: list[tuple[_Partition, range | np.ndarray]]) -> pa.Table:
        """The picked rows as one table, in the order they were added."""
        picks = [(p, sel) for p, sel in picks if len(sel)]
        table = pa.Table.from_batches([b for p, sel in picks for b in p.pieces(sel)], schema=TRAJECTORY_SCHEMA)
        if len(picks) > 1:
            order = np.concatenate([p.gidx.view()[sel] for p, sel in picks])
            if np.any(np.diff(order) < 0):
                table = pc.take(table, pa.array(np.argsort(order, kind="stable")), memory_pool=POOL)
        return table

    def table(self) -> pa.Table:
        """Every held row, in the order added."""
        if self._table is None:
            self._table = self._gather([(p, range(len(p.gidx))) for p in self.parts.values()])
        return self._table

    def sample(self, n: int | None = None, *, seed: int | None = None, **filters) -> pa.Table:
        """Matching held rows: all when n is None, else n drawn uniformly without replacement (in the order added)."""
        return self._draw(self._select(**filters), n, seed)

    def _draw(self, picks: list[tuple[_Partition, range | np.ndarray]], n: int | None, seed: int | None) -> pa.Table:
        sizes = np.array([len(sel) for _, sel in picks], np.int64)
        total = int(sizes.sum())
        if n is None or n >= total:
            return self._gather(picks)
        ranks = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
        ends = np.cumsum(sizes)
        which = np.searchsorted(ends, ranks, "right")
        chosen = []
        for i, (p, sel) in enumerate(picks):
            mine = ranks[which == i] - (ends[i] - sizes[i])
            if len(mine):
                p.compact()
                chosen.append((p, sel.start + mine if isinstance(sel, range) else sel[mine]))
        return self._gather(chosen)

    def sample_counted(self, n: int, *, seed: int | None = None, **filters) -> tuple[pa.Table, int]:
        """`sample(n, ...)`, and how many held rows matched: what a sharded replay weighs its shards' samples by."""
        picks = self._select(**filters)
        return self._draw(picks, n, seed), sum(len(sel) for _, sel in picks)

    def since(self, cursor: int, **filters) -> tuple[pa.Table, int]:
        """Matching held rows appended after global row `cursor`, and the new cursor."""
        return self._gather(self._select(after=cursor, **filters)), self.rows

    def cursor(self) -> int:
        """The cursor `since` takes for "from now on": rows ever added (a list of one per shard for ShardedReplay)."""
        return self.rows

    def count(self, arm=None, source=None, env_id=None, min_policy_version=None, max_policy_version=None) -> int:
        """Matching rows ever added, evicted ones included: with no filter, the global row cursor."""
        if env_id is None and min_policy_version is None and max_policy_version is None:
            return sum(sum(p.counts.values()) for (a, s), p in self.parts.items()
                       if (arm is None or a == arm) and (source is None or s == source))
        code = self.env_codes.get(env_id, -1) if env_id is not None else None
        lo = -np.inf if min_policy_version is None else min_policy_version
        hi = np.inf if max_policy_version is None else max_policy_version
        return sum(k for (a, s), p in self.parts.items()
                   if (arm is None or a == arm) and (source is None or s == source)
                   for (c, v), k in p.counts.items() if (code is None or c == code) and lo <= v <= hi)

    def held(self) -> int:
        """Rows held in memory."""
        return sum(len(p.gidx) for p in self.parts.values())

    def stats(self) -> dict[str, int]:
        """Rows ever added per (arm, source)."""
        return {f"{a}/{s}": sum(p.counts.values()) for (a, s), p in self.parts.items()}


def _to_ipc(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _from_ipc(buf: pa.Buffer) -> pa.Table:
    return pa.ipc.open_stream(buf).read_all()


def ship_tables_as_ipc() -> None:
    """In this Ray process, send Arrow tables as one IPC buffer each: the replay's answers (samples, `since`,
    `table`). Ray's default pickles a table column by column, which made a 256-row sample 1.7-3.0x slower
    (`bench/replay.py --stores ray ray-pickled`). Record batches (what `add` gets) keep Ray's default: their
    buffers go out of band uncopied, and sent as IPC, adds of 1,000 rows ran at 0.73-0.92x. Only the sender needs
    this (the deserializer travels with the object), so the replay actors and their fan-out task call it."""
    ray.util.register_serializer(pa.Table, serializer=_to_ipc, deserializer=_from_ipc)


def stem_shard(stem: str) -> int:
    """The shard number in a segment's stem (`<ns>-<pid>-s<k>`); 0 for an unsharded store's (`<ns>-<pid>`)."""
    last = stem.rsplit("-", 1)[-1]
    return int(last[1:]) if last[:1] == "s" and last[1:].isdigit() else 0


class _Service(ReplayStore):
    """The store as a Ray actor: `ray.shutdown()` ends it with SIGTERM, and it seals its WAL first, so a finished
    run's replay is all sealed segments (a kill -9 leaves the WAL to the next load, which seals it)."""

    def __init__(self, directory: str, capacity: int | None = None, seal_bytes: int = 64 << 20,
                 shard: tuple[int, int] | None = None):
        super().__init__(directory, capacity, seal_bytes, shard)
        ship_tables_as_ipc()
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)

            def on_term(signum, frame):
                if not self._writing:  # mid-add, the WAL is left to the next load
                    self.close()
                if callable(previous):
                    previous(signum, frame)
                elif previous != signal.SIG_IGN:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    os.kill(os.getpid(), signal.SIGTERM)

            signal.signal(signal.SIGTERM, on_term)


ReplayService = ray.remote(_Service)


@ray.remote(num_cpus=0)
def _fan_out(shards: list, op: str, args: tuple, kwargs: dict):
    """One replay call on every shard, merged into the answer one store would give (see ShardedReplay)."""
    ship_tables_as_ipc()
    n = len(shards)
    if op == "since":
        cursor = args[0]
        if isinstance(cursor, int) and cursor == 0:
            cursor = [0] * n
        if isinstance(cursor, int) or len(cursor) != n:
            raise ValueError(f"a cursor of a replay of {n} shards is a list of {n} row counts, not {cursor!r}")
        got = ray.get([s.since.remote(c, **kwargs) for s, c in zip(shards, cursor)])
        return pa.concat_tables([t for t, _ in got]), [c for _, c in got]
    if op == "sample" and (args[0] if args else kwargs.get("n")) is not None:
        size = args[0] if args else kwargs.pop("n")
        seed = kwargs.pop("seed", None)
        seeds = np.random.SeedSequence(seed).spawn(n + 1)
        got = ray.get([s.sample_counted.remote(size, seed=int(q.generate_state(1)[0]), **kwargs)
                       for s, q in zip(shards, seeds)])
        held = np.array([k for _, k in got], np.int64)
        rng = np.random.default_rng(seeds[-1])
        # how many of the `size` uniform draws over all matching rows fall in each shard, then that many of its own
        # uniform draws (a uniform subset of a uniform subset is uniform), in the order added
        take = rng.multivariate_hypergeometric(held, min(size, int(held.sum())))
        parts = [t.take(pa.array(np.sort(rng.choice(t.num_rows, k, replace=False)))) for (t, _), k in zip(got, take)]
        return pa.concat_tables(parts)
    got = ray.get([getattr(s, op).remote(*args, **kwargs) for s in shards])
    if op in ("count", "held"):
        return sum(got)
    if op in ("sample", "table"):
        return pa.concat_tables(got)
    if op == "cursor":
        return got
    if op == "stats":
        out: dict[str, int] = {}
        for d in got:
            for k, v in d.items():
                out[k] = out.get(k, 0) + v
        return out
    return got  # close: one None per shard


class _Op:
    def __init__(self, replay: "ShardedReplay", name: str):
        self.replay, self.name = replay, name

    def remote(self, *args, **kwargs):
        return self.replay._call(self.name, args, kwargs)


class ShardedReplay:
    """N ReplayService actors behind one replay's API: `replay.add.remote(batch)`, `ray.get(replay.count.remote())`
    and the rest, as with one actor, so rollout actors, learners and the driver take either.

    Each `add` goes whole to one shard, round robin from a per-process offset, so writers spread over the shards and
    an episode's rows stay together. Every other call asks all shards in one task and merges: counts add up, tables
    are concatenated shard by shard (in the order added within a shard), `sample(n)` is uniform over all matching
    held rows (each shard draws n, then a multivariate hypergeometric split picks how many come from each), and a
    `since` cursor is a list of one row count per shard (`cursor()` gives the current one; 0 means the start). The
    shards share one directory, each writing its own segments; `ReplayStore(dir)` reads them all."""

    def __init__(self, shards: list):
        self.shards = list(shards)
        self._next: int | None = None

    def __getstate__(self):
        return {"shards": self.shards, "_next": None}  # each process starts its own round robin

    def _call(self, op: str, args: tuple, kwargs: dict):
        if op == "add":
            if self._next is None:
                self._next = os.getpid() % len(self.shards)
            shard = self.shards[self._next % len(self.shards)]
            self._next += 1
            return shard.add.remote(*args, **kwargs)
        return _fan_out.remote(self.shards, op, args, kwargs)

    def __getattr__(self, name: str) -> _Op:
        if name.startswith("_") or not callable(getattr(ReplayStore, name, None)):
            raise AttributeError(name)
        return _Op(self, name)


def start_replay(directory: str, capacity: int | None = None, shards: int = 1):
    """The run's replay: one ReplayService actor, or a ShardedReplay of `shards` of them on the same directory."""
    if shards <= 1:
        return ReplayService.options(num_cpus=0).remote(directory, capacity=capacity)
    return ShardedReplay([ReplayService.options(num_cpus=0).remote(directory, capacity=capacity, shard=(k, shards))
                          for k in range(shards)])
