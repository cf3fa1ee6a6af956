"""Disk tier of the prefix cache: KV blocks as safetensors files, content-addressed by block hash.

Layout: `<kv_disk_dir>/<store key>/rank<r>/<block hash hex>.safetensors`. The store key hashes the
engine salt (model fingerprint, dtype, tp, quantization), the block size and a sample of the weight
bytes, so another model, dtype, tp or quantization never reads these blocks. Each tensor-parallel rank
keeps its own heads' slice of every block in its own directory: rank 0 decides what to save and load
and broadcasts the op, every rank does it on its own files, and a load only uses the blocks that every
rank read intact (`min_across_ranks`).

Saving: when a request finishes, its newly committed blocks are copied out of the cache before the
next schedule can evict them, and a writer thread writes the files (tmp file + rename). Each file's
metadata holds a CRC32 of each tensor's bytes; a file that does not parse or verify is deleted and
never used, so its tokens are recomputed. A size cap evicts the least recently used files (access time
is the file's mtime, refreshed on every hit, so the order survives restarts).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import queue
import threading
import time
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from inference import distributed as dist
from inference.errors import UserError

log = logging.getLogger("inference.kv_disk")
FORMAT = "qwen-chat-kv-1"
SUFFIX = ".safetensors"
MAX_BACKLOG_BYTES = 2 << 30  # copied out but not yet written; saves beyond this are dropped (a cache may skip)
STALE_TMP_S = 3600.0  # temp files this old are leftovers of a killed writer


def crc(t: torch.Tensor) -> str:
    return f"{zlib.crc32(t.contiguous().view(-1).view(torch.uint8).numpy()):08x}"


def header_metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]).get("__metadata__") or {}


def store_key(model_dir: str | Path, salt: bytes, block_size: int) -> str:
    """Names one store: the engine salt, the block size and 64 KiB from the middle of each weight shard
    (two fine-tunes of one shape have equal configs and shard sizes, not equal weights)."""
    h = hashlib.blake2b(salt + f"|bs{block_size}|{FORMAT}".encode(), digest_size=10)
    for p in sorted(Path(model_dir).glob("*.safetensors")):
        with open(p, "rb") as f:
            f.seek(p.stat().st_size // 2)
            h.update(f.read(65536))
    return h.hexdigest()


class KVDiskStore:
    """One rank's block files: an index in LRU order, verified reads, and a background writer."""

    def __init__(self, root: str | Path, key: str, max_gb: float, rank: int = 0):
        if not max_gb > 0:
            raise UserError(f"--kv-disk-max-gb must be positive, got {max_gb}; use --no-kv-disk to turn it off")
        self.dir = Path(root).expanduser() / key / f"rank{rank}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the KV disk cache {self.dir}: {e.strerror}; "
                            "pass --kv-disk-dir DIR (a writable directory) or --no-kv-disk") from e
        self.max_bytes = int(max_gb * 2**30)
        self.lock = threading.Lock()
        self.index: OrderedDict[bytes, int] = OrderedDict()  # hash -> file bytes, least recently used first
        self.total = 0
        self.queued: set[bytes] = set()
        self.backlog = 0
        self.counts = {"saved": 0, "loaded": 0, "corrupt": 0, "evicted": 0, "dropped": 0, "write_errors": 0}
        self._scan()
        self.queue: queue.Queue = queue.Queue()
        self.closed = False
        self.writer = threading.Thread(target=self._write_loop, name=f"kv-disk-writer-rank{rank}", daemon=True)
        self.writer.start()
        atexit.register(self.close)

    def path(self, h: bytes) -> Path:
        return self.dir / (h.hex() + SUFFIX)

    def _scan(self) -> None:
        found, now = [], time.time()
        for e in os.scandir(self.dir):
            try:
                st = e.stat()
                if e.name.endswith(".tmp"):
                    if now - st.st_mtime > STALE_TMP_S:
                        os.unlink(e.path)
                    continue
                if e.name.endswith(SUFFIX):
                    found.append((st.st_mtime, bytes.fromhex(e.name[:-len(SUFFIX)]), st.st_size))
            except (OSError, ValueError):
                continue
        for _, h, size in sorted(found):
            self.index[h] = size
            self.total += size
        with self.lock:
            victims = self._over_cap()
        self._unlink(victims)

    # --- index ---------------------------------------------------------------------------------------------
    def contains(self, h: bytes) -> bool:
        with self.lock:
            return h in self.index

    def wants(self, h: bytes) -> bool:
        with self.lock:
            return not self.closed and h not in self.index and h not in self.queued

    def touch(self, hashes) -> None:
        """Mark as just used: the end of the LRU order, and the file's mtime (the order after a restart)."""
        with self.lock:
            hit = [h for h in hashes if h in self.index]
            for h in hit:
                self.index.move_to_end(h)
        for h in hit:
            try:
                os.utime(self.path(h))
            except OSError:
                pass

    def discard(self, h: bytes, delete: bool = True) -> None:
        with self.lock:
            self.total -= self.index.pop(h, 0)
        if delete:
            self._unlink([self.path(h)])

    def _over_cap(self) -> list[Path]:  # with the lock held
        out = []
        while self.total > self.max_bytes and self.index:
            h, size = self.index.popitem(last=False)
            self.total -= size
            self.counts["evicted"] += 1
            out.append(self.path(h))
        return out

    @staticmethod
    def _unlink(paths) -> None:
        for p in paths:
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass

    # --- read / write --------------------------------------------------------------------------------------
    def get(self, h: bytes, shape, dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The verified block, or None (missing; or corrupt, which also deletes the file)."""
        path = self.path(h)
        try:
            data = path.read_bytes()
        except OSError:
            self.discard(h, delete=False)
            return None
        try:
            meta, t = header_metadata(data), st_load(data)
            k, v = t["k"], t["v"]
            ok = (meta.get("format") == FORMAT and meta.get("hash") == h.hex() and k.shape == v.shape == shape
                  and k.dtype == v.dtype == dtype and crc(k) == meta.get("crc_k") and crc(v) == meta.get("crc_v"))
        except Exception:  # truncated or garbled: anything safetensors or json may raise
            ok = False
        if not ok:
            log.warning("KV disk cache: %s failed its checksum; deleted, its tokens are recomputed", path)
            self.counts["corrupt"] += 1
            self.discard(h)
            return None
        self.touch([h])
        self.counts["loaded"] += 1
        return k, v

    def put(self, h: bytes, k: torch.Tensor, v: torch.Tensor) -> bool:
        """Queue one block (CPU tensors the caller no longer touches) for the writer thread."""
        size = k.nbytes + v.nbytes
        with self.lock:
            if self.closed or h in self.index or h in self.queued:
                return False
            if self.backlog + size > MAX_BACKLOG_BYTES:
                self.counts["dropped"] += 1
                return False
            self.queued.add(h)
            self.backlog += size
        self.queue.put((h, k, v))
        return True

    def _write_loop(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                h, k, v = item
                try:
                    self._write(h, k, v)
                except Exception as e:  # disk full, permissions: the block is just not on disk
                    self.counts["write_errors"] += 1
                    if self.counts["write_errors"] == 1:
                        log.warning("KV disk cache: writing to %s failed (%s); such blocks stay uncached", self.dir, e)
                finally:
                    with self.lock:
                        self.queued.discard(h)
                        self.backlog -= k.nbytes + v.nbytes
            finally:
                self.queue.task_done()

    def _write(self, h: bytes, k: torch.Tensor, v: torch.Tensor) -> None:
        meta = {"format": FORMAT, "hash": h.hex(), "crc_k": crc(k), "crc_v": crc(v)}
        data = st_save({"k": k.contiguous(), "v": v.contiguous()}, metadata=meta)
        path = self.path(h)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            try:
                tmp.write_bytes(data)
            except FileNotFoundError:  # the directory was removed under us
                self.dir.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(data)
            os.replace(tmp, path)
        except BaseException:
            self._unlink([tmp])
            raise
        with self.lock:
            self.total += len(data) - self.index.pop(h, 0)
            self.index[h] = len(data)
            self.counts["saved"] += 1
            victims = self._over_cap()
        self._unlink(victims)

    def drain(self) -> None:
        """Wait until every queued block is written."""
        self.queue.join()

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        self.queue.put(None)
        self.writer.join()

    def stats(self) -> dict:
        with self.lock:
            return {"kv_disk_blocks": len(self.index), "kv_disk_bytes": self.total,
                    **{f"kv_disk_{k}": v for k, v in self.counts.items()}}


class DiskTier:
    """The engine's side of the store: which blocks to save and load, done on every tensor-parallel rank."""

    def __init__(self, store: KVDiskStore, runner, block_manager=None):
        self.store, self.runner, self.bm = store, runner, block_manager  # block_manager: rank 0 only
        self.pending: list[tuple[int, bytes]] = []  # rank 0: newly committed (block, hash) not yet saved
        self.touched: dict[bytes, None] = {}  # rank 0: memory hits, to refresh in the disk LRU order
        self.due = False  # a request finished: save before the next schedule may evict its blocks
        self._spec = None

    def note_blocks(self, pairs: list[tuple[int, bytes]]) -> None:
        self.pending += pairs

    def spec(self):
        if self._spec is None:
            k, _ = self.runner.read_block(0)
            self._spec = (k.shape, k.dtype)
        return self._spec

    # --- rank 0 --------------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Copy the pending blocks out of the cache on every rank; the writer threads write them."""
        if self.store.closed:
            return
        seen, pairs = set(), []
        for bid, h in self.pending:
            if h not in seen and self.bm.blocks[bid].hash == h and self.store.wants(h):
                seen.add(h)
                pairs.append((bid, h))
        touched = list(self.touched)
        self.pending, self.touched, self.due = [], {}, False
        if pairs or touched:
            dist.broadcast_object(("kv_save", (pairs, touched)))
            self.save_local(pairs, touched)

    def load(self, seq) -> int:
        """Right after seq's allocation: continue its in-memory prefix hit from disk; returns blocks loaded."""
        self.touched.update(dict.fromkeys(seq.block_hashes))
        hashes = self.bm.disk_chain(seq, self.store.contains)
        if not hashes:
            return 0
        start = len(seq.block_hashes)
        pairs = list(zip(seq.block_table[start:start + len(hashes)], hashes))
        dist.broadcast_object(("kv_load", pairs))
        n = self.load_local(pairs)
        if n < len(pairs):  # unreadable on some rank: forget it here too, the next save rewrites it
            self.store.discard(pairs[n][1])
        self.bm.mark_loaded(seq, hashes[:n])
        return n

    # --- every rank ----------------------------------------------------------------------------------------
    def save_local(self, pairs, touched) -> None:
        self.store.touch(touched)
        for bid, h in pairs:
            if not self.store.wants(h):
                continue
            k, v = self.runner.read_block(bid)
            if self.runner.device.type == "cpu":  # read_block gives views of a CPU cache: own the bytes
                k, v = k.clone(), v.clone()
            self.store.put(h, k.contiguous(), v.contiguous())

    def load_local(self, pairs) -> int:
        shape, dtype = self.spec()
        n = 0
        for bid, h in pairs:
            kv = self.store.get(h, shape, dtype)
            if kv is None:
                break
            self.runner.write_block(bid, *kv)
            n += 1
        return dist.min_across_ranks(n)

    def handle(self, op: str, payload) -> None:
        """A worker rank follows rank 0's disk op."""
        if op == "kv_save":
            self.save_local(*payload)
        elif op == "kv_load":
            self.load_local(payload)

    def close(self) -> None:
        self.store.close()

    def stats(self) -> dict:
        return self.store.stats()


def open_tier(root: str, model_dir: Path, salt: bytes, block_size: int, max_gb: float, runner, rank: int
              ) -> DiskTier:
    return DiskTier(KVDiskStore(root, store_key(model_dir, salt, block_size), max_gb, rank), runner)
