"""One rank's files of the KV disk tier: one file per block (kv_disk_format.py), named by block hash hex.

Writes are atomic (tmp file + rename) and done by a writer thread; a read that does not parse or verify
(CRC32s in each file's metadata) deletes the file and returns None. A size cap evicts
the least recently used files; the access time is the file's mtime (refreshed on every hit), so the order
survives restarts. The files hold conversations: folders 0700, files 0600 whatever the umask
(existing ones are tightened when the store opens), temp files created without following links.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load as st_load

from inference.config import default_kv_disk_dir
from inference.engine.kv_disk_format import ST_DTYPES, SUFFIX, raw, read_regular, st_header, verify
from inference.errors import UserError
from inference.private_files import CLOEXEC, NOFOLLOW, private_dir

log = logging.getLogger("inference.kv_disk")
MAX_BACKLOG_BYTES = 2 << 30  # copied out but not yet written; saves beyond this are dropped (a cache may skip)
STALE_TMP_S = 3600.0  # temp files this old are leftovers of a killed writer
MAX_PAUSE_S = 0.5  # a paused writer waits at most this long per file (writes must not starve)


class KVDiskStore:
    """One rank's block files: an index in LRU order, verified reads, and a background writer."""

    def __init__(self, root: str | Path, key: str, max_gb: float, rank: int = 0):
        if not max_gb > 0:
            raise UserError(f"--kv-disk-max-gb must be positive, got {max_gb}; use --no-kv-disk to turn it off")
        root = Path(root).expanduser()
        self.dir = root / key / f"rank{rank}"
        try:
            private_dir(root, tighten=root.absolute() == Path(default_kv_disk_dir()).absolute())
            private_dir(root / key)
            private_dir(self.dir)
        except OSError as e:
            raise UserError(f"cannot create the KV disk cache {self.dir}: {e.strerror}; "
                            "pass --kv-disk-dir DIR (a writable directory) or --no-kv-disk") from e
        self.max_bytes = int(max_gb * 2**30)
        self.lock = threading.Lock()
        self.index: OrderedDict[bytes, int] = OrderedDict()  # hash -> file bytes, least recently used first
        self.total = 0
        self.queued: set[bytes] = set()
        self.backlog = 0
        self.counts = {"saved": 0, "corrupt": 0, "evicted": 0, "dropped": 0, "write_errors": 0}
        self._scan()
        self.queue: queue.Queue = queue.Queue()
        self.closed = False
        self.may_write = threading.Event()  # cleared while a prefill runs: first tokens come before disk writes
        self.may_write.set()
        self.writer = threading.Thread(target=self._write_loop, name=f"kv-disk-writer-rank{rank}", daemon=True)
        self.writer.start()
        atexit.register(self.close)

    def path(self, h: bytes) -> Path:
        return self.dir / (h.hex() + SUFFIX)

    def _scan(self) -> None:
        found, now = [], time.time()
        uid = os.getuid()
        for e in os.scandir(self.dir):
            try:
                st = e.stat(follow_symlinks=False)
                if st.st_uid == uid and st.st_mode & 0o077 and e.is_file(follow_symlinks=False):
                    os.chmod(e.path, 0o600)  # written by an older version under a lax umask
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
        data = self.read_verified(h, shape, dtype)
        if data is None:
            return None
        t = st_load(data)
        return t["k"], t["v"]

    def read_verified(self, h: bytes, shape, dtype) -> bytes | None:
        """The file's bytes once its header and CRCs check out, else None. No torch op, so the engine may
        call it from several threads (file reads and CRCs release the GIL)."""
        path = self.path(h)
        try:
            data = read_regular(path)
        except OSError:
            self.discard(h, delete=False)
            return None
        why = "is not a regular file" if data is None else "failed its checksum"  # not regular: never read
        try:
            ok = data is not None and verify(data, h, list(shape), ST_DTYPES[dtype])
        except Exception:  # truncated or garbled: anything json may raise
            ok = False
        if not ok:
            log.warning("KV disk cache: %s %s; deleted, its tokens are recomputed", path, why)
            with self.lock:
                self.counts["corrupt"] += 1
            self.discard(h)
            return None
        self.touch([h])
        return data

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
        self.queue.put((h, ST_DTYPES[k.dtype], list(k.shape), raw(k), raw(v)))
        return True

    def _write_loop(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                self.may_write.wait(MAX_PAUSE_S)
                try:
                    self._write(*item)
                except Exception as e:  # disk full, permissions: the block is just not on disk
                    self.counts["write_errors"] += 1
                    if self.counts["write_errors"] == 1:
                        log.warning("KV disk cache: writing to %s failed (%s); such blocks stay uncached", self.dir, e)
                finally:
                    with self.lock:
                        self.queued.discard(item[0])
                        self.backlog -= item[3].nbytes + item[4].nbytes
            finally:
                self.queue.task_done()

    def _write(self, h: bytes, dtype: str, shape: list[int], kb, vb) -> None:
        header = st_header(h, dtype, shape, kb, vb)
        path = self.path(h)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
            try:
                fd = os.open(tmp, flags, 0o600)
            except FileNotFoundError:  # the directory was removed under us
                private_dir(self.dir)
                fd = os.open(tmp, flags, 0o600)
            with open(fd, "wb") as f:
                f.write(header)
                f.write(kb)
                f.write(vb)
            os.replace(tmp, path)
        except BaseException:
            self._unlink([tmp])
            raise
        size = len(header) + kb.nbytes + vb.nbytes
        with self.lock:
            self.total += size - self.index.pop(h, 0)
            self.index[h] = size
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
