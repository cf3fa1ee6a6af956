"""Disk tier of the prefix cache: KV blocks as safetensors files, content-addressed by block hash.

Layout: `<kv_disk_dir>/<store key>/rank<r>/<block hash hex>.safetensors`. The store key hashes the
engine salt (model fingerprint, dtype, tp, quantization), the block size and a sample of the weight
bytes, so another model, dtype, tp or quantization never reads these blocks. Each tensor-parallel rank
keeps its own heads' slice of every block in its own directory: rank 0's `DiskTierScheduler` decides
what to save and load and broadcasts the op, every rank's `DiskTier` does it on its own files, and a load
only uses the blocks that every rank read intact (`min_across_ranks`).

Saving: when a request finishes, its newly committed blocks are copied out of the cache before the
next schedule can evict them, and a writer thread writes the files (tmp file + rename). The writer
holds off while a step with a prefill runs (`pause_writes`), so a new turn's first token never waits on it.
Each file's metadata holds a CRC32 of each tensor's bytes; a file that does not parse or verify is
deleted and never used, so its tokens are recomputed. A size cap evicts the least recently used files
(access time is the file's mtime, refreshed on every hit, so the order survives restarts); see
kv_disk_store.py.

Loading reads and verifies the files on a few threads and writes the intact run of blocks into the
cache with one copy. Rank 0 measures both costs (seconds per block loaded, per token prefilled) and
skips a load that recomputing would beat: on a fast GPU a short history is cheaper to recompute.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from safetensors.torch import load as st_load

from inference import distributed as dist
from inference.engine.kv_disk_format import FORMAT
from inference.engine.kv_disk_store import KVDiskStore

__all__ = ["DiskTier", "DiskTierScheduler", "KVDiskStore", "open_tier", "store_key"]
LOAD_THREADS = 8
MIN_PREFILL_TOKENS = 64


def ema(old: float | None, new: float, weight: float = 0.3) -> float:
    return new if old is None else (1 - weight) * old + weight * new


def store_key(model_dir: str | Path, salt: bytes, block_size: int) -> str:
    """Names one store: the engine salt, the block size and 64 KiB from the middle of each weight shard
    (two fine-tunes of one shape have equal configs and shard sizes, not equal weights)."""
    h = hashlib.blake2b(salt + f"|bs{block_size}|{FORMAT}".encode(), digest_size=10)
    for p in sorted(Path(model_dir).glob("*.safetensors")):
        with open(p, "rb") as f:
            f.seek(p.stat().st_size // 2)
            h.update(f.read(65536))
    return h.hexdigest()


class DiskTier:
    """The worker side, on every rank: saves and loads blocks of its own cache in its own files."""

    def __init__(self, store: KVDiskStore, runner):
        self.store, self.runner = store, runner
        self._spec = None
        self.pool: ThreadPoolExecutor | None = None

    def spec(self):
        if self._spec is None:
            k, _ = self.runner.read_block(0)
            self._spec = (k.shape, k.dtype)
        return self._spec

    def hold_writes(self) -> None:
        """The writer starts no new file until the next step ends (a request was just admitted: the hashing
        of its prompt and its prefill come before disk writes)."""
        self.store.may_write.clear()

    @contextmanager
    def pause_writes(self, active: bool = True):
        """While active, the writer thread starts no new file (it waits MAX_PAUSE_S at most per file); when
        the step ends, writing resumes (also after a `hold_writes`)."""
        if active:
            self.store.may_write.clear()
        try:
            yield
        finally:
            self.store.may_write.set()

    def save_local(self, pairs, hits) -> None:
        self.store.touch(hits)
        for bid, h in pairs:
            if not self.store.wants(h):
                continue
            k, v = self.runner.read_block(bid)
            if self.runner.device.type == "cpu":  # read_block gives views of a CPU cache: own the bytes
                k, v = k.clone(), v.clone()
            self.store.put(h, k.contiguous(), v.contiguous())

    def load_local(self, pairs) -> int:
        """Read and verify the files on LOAD_THREADS threads (file reads and CRCs release the GIL), then
        write the longest intact run of blocks into the cache in one copy."""
        shape, dtype = self.spec()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="kv-disk-load")
        got = list(self.pool.map(lambda p: self.store.read_verified(p[1], shape, dtype), pairs))
        n = next((i for i, data in enumerate(got) if data is None), len(got))
        if n:
            blocks = [st_load(data) for data in got[:n]]
            self.runner.write_blocks([bid for bid, _ in pairs[:n]], [t["k"] for t in blocks], [t["v"] for t in blocks])
        return dist.min_across_ranks(n)

    def handle(self, op: str, payload) -> None:
        """A worker rank follows rank 0's disk op."""
        if op == "kv_save":
            self.save_local(*payload)
        elif op == "kv_load":
            self.load_local(payload)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.store.close()


class DiskTierScheduler:
    """The scheduler side, on rank 0 beside the block manager: which blocks to save and load; each op is
    broadcast, then done on rank 0's own `DiskTier`."""

    def __init__(self, tier: DiskTier, block_manager):
        self.tier, self.store, self.bm = tier, tier.store, block_manager
        self.pending: list[tuple[int, bytes]] = []  # newly committed (block, hash) not yet saved
        self.recent_hits: dict[bytes, None] = {}  # memory hits, to move up in the disk's LRU order
        self.needs_flush = False  # a request finished: save before the next schedule may evict its blocks
        self.load_s: float | None = None  # measured seconds to load one block from disk
        self.compute_s: float | None = None  # measured seconds to prefill one token
        self.skipped = 0  # blocks left on disk because recomputing them was measured to be faster
        self.loaded = 0  # blocks loaded into the cache and used (read but past a damaged one: not counted)

    def note_blocks(self, pairs: list[tuple[int, bytes]]) -> None:
        self.pending += pairs

    def flush(self) -> None:
        """Copy the pending blocks out of the cache on every rank; the writer threads write them."""
        if self.store.closed:
            return
        seen, pairs = set(), []
        for bid, h in self.pending:
            if h not in seen and self.bm.blocks[bid].hash == h and self.store.wants(h):
                seen.add(h)
                pairs.append((bid, h))
        hits = [h for h in self.recent_hits if self.store.contains(h)]
        self.pending, self.recent_hits, self.needs_flush = [], {}, False
        if pairs or hits:
            dist.broadcast_object(("kv_save", (pairs, hits)))
            self.tier.save_local(pairs, hits)

    def load(self, seq) -> int:
        """Right after seq's allocation: continue its in-memory prefix hit from disk; returns blocks loaded."""
        self.recent_hits.update(dict.fromkeys(seq.block_hashes))
        hashes = self.bm.disk_chain(seq, self.store.contains)
        if not hashes:
            return 0
        if not self.worth_loading():
            self.skipped += len(hashes)
            return 0
        start = len(seq.block_hashes)
        pairs = list(zip(seq.block_table[start:start + len(hashes)], hashes))
        t0 = time.perf_counter()
        dist.broadcast_object(("kv_load", pairs))
        n = self.tier.load_local(pairs)
        self.load_s = ema(self.load_s, (time.perf_counter() - t0) / len(pairs))
        if n < len(pairs):  # unreadable on some rank: forget it here too, the next save rewrites it
            self.store.discard(pairs[n][1])
        self.bm.mark_loaded(seq, hashes[:n])
        self.loaded += n
        return n

    def note_prefill(self, tokens: int, seconds: float) -> None:
        """The engine's measured prefill cost (steps of at least MIN_PREFILL_TOKENS new prompt tokens)."""
        if tokens >= MIN_PREFILL_TOKENS:
            self.compute_s = ema(self.compute_s, seconds / tokens)

    def worth_loading(self) -> bool:
        """Load from disk unless measurements say recomputing a block is faster (a fast GPU, a slow disk);
        until both costs are measured, load."""
        if self.load_s is None or self.compute_s is None:
            return True
        return self.load_s < self.compute_s * self.bm.block_size

    def stats(self) -> dict:
        return {**self.store.stats(), "kv_disk_loaded": self.loaded, "kv_disk_skipped": self.skipped}


def open_tier(root: str, model_dir: Path, salt: bytes, block_size: int, max_gb: float, runner, rank: int
              ) -> DiskTier:
    return DiskTier(KVDiskStore(root, store_key(model_dir, salt, block_size), max_gb, rank), runner)
