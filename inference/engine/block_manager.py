"""Block pool of the paged KV cache with prefix caching.

Full blocks are keyed by a chained hash (parent hash, token ids, salt): the salt holds the model
fingerprint, dtype, tp, quantization and the sequence's dynamic-NTK alpha, so K/V rotated under one
alpha is never reused under another. Freed blocks keep their hash and stay reusable until evicted,
least recently used first (vLLM v1's free queue of cached blocks). With the disk tier, the hash chain
continues past the in-memory hit against the files on disk (`disk_chain`, then `mark_loaded`).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from inference.engine.sequence import Sequence


def block_hash(parent: bytes, tokens: list[int], salt: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(parent)
    h.update(salt)
    h.update(array("i", tokens).tobytes())
    return h.digest()


@dataclass
class Block:
    id: int
    ref_count: int = 0
    hash: bytes | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, salt: bytes = b"", enable_caching: bool = True):
        self.block_size = block_size
        self.salt = salt
        self.enable_caching = enable_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # LRU: evict from the front
        self.cached: dict[bytes, int] = {}

    # --- accounting -------------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def seq_salt(self, seq: Sequence) -> bytes:
        return self.salt + repr(seq.ntk_alpha).encode()

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- allocation -------------------------------------------------------------------------------------
    def _take_free(self) -> Block:
        bid, _ = self.free.popitem(last=False)
        block = self.blocks[bid]
        if block.hash is not None:  # evict the cached content
            if self.cached.get(block.hash) == bid:
                del self.cached[block.hash]
            block.hash = None
        block.ref_count = 1
        return block

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks for the longest prefix of full blocks; the last token is always left to compute."""
        if not self.enable_caching or seq.params.all_rows:
            return []
        hashes, parent, out = [], b"", []
        salt = self.seq_salt(seq)
        for i in range((len(seq) - 1) // self.block_size):
            toks = seq.token_ids[i * self.block_size:(i + 1) * self.block_size]
            parent = block_hash(parent, toks, salt)
            bid = self.cached.get(parent)
            if bid is None:
                break
            hashes.append(parent)
            out.append(bid)
        seq.block_hashes = hashes
        return out

    def disk_chain(self, seq: Sequence, on_disk) -> list[bytes]:
        """After the in-memory hit: hashes of the next full blocks that `on_disk(hash)` holds, in order."""
        if not self.enable_caching or seq.params.all_rows:
            return []
        salt, out = self.seq_salt(seq), []
        parent = seq.block_hashes[-1] if seq.block_hashes else b""
        for i in range(len(seq.block_hashes), (len(seq) - 1) // self.block_size):
            parent = block_hash(parent, seq.token_ids[i * self.block_size:(i + 1) * self.block_size], salt)
            if not on_disk(parent):
                break
            out.append(parent)
        return out

    def mark_loaded(self, seq: Sequence, hashes: list[bytes]) -> None:
        """The blocks after seq's hit now hold `hashes`' K/V (loaded from disk): cached and computed."""
        start = len(seq.block_hashes)
        for i, h in enumerate(hashes):
            block = self.blocks[seq.block_table[start + i]]
            if block.hash is None and h not in self.cached:
                block.hash = h
                self.cached[h] = block.id
            seq.block_hashes.append(h)
        seq.num_computed += len(hashes) * self.block_size
        seq.num_cached_tokens += len(hashes) * self.block_size

    def drop_cached(self) -> int:
        """Forget the content of every free cached block, as a restart would (benchmarks); returns how many."""
        n = 0
        for bid in self.free:
            block = self.blocks[bid]
            if block.hash is not None:
                if self.cached.get(block.hash) == bid:
                    del self.cached[block.hash]
                block.hash = None
                n += 1
        return n

    def can_allocate(self, seq: Sequence, hits: list[int]) -> bool:
        need = self.blocks_needed(len(seq)) - len(hits)
        hit_free = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return self.num_free - hit_free >= need

    def allocate(self, seq: Sequence, hits: list[int]) -> None:
        """Blocks for all of seq's tokens: the cached prefix `hits` plus fresh ones."""
        for bid in hits:
            block = self.blocks[bid]
            if block.ref_count == 0:
                del self.free[bid]
            block.ref_count += 1
        seq.block_table = list(hits)
        seq.num_computed = seq.num_cached_tokens = len(hits) * self.block_size
        for _ in range(self.blocks_needed(len(seq)) - len(hits)):
            seq.block_table.append(self._take_free().id)

    def can_append(self, seq: Sequence, num_tokens: int) -> bool:
        return self.num_free >= self.blocks_needed(num_tokens) - len(seq.block_table)

    def append_slots(self, seq: Sequence, num_tokens: int) -> None:
        """Grow seq's block table to hold `num_tokens` tokens."""
        while len(seq.block_table) < self.blocks_needed(num_tokens):
            seq.block_table.append(self._take_free().id)

    def commit(self, seq: Sequence) -> list[tuple[int, bytes]]:
        """Hash the blocks that became full and computed; returns the newly hashed (block, hash) pairs."""
        new = []
        if not self.enable_caching or seq.params.all_rows:
            return new
        salt = self.seq_salt(seq)
        full = seq.num_computed // self.block_size
        while len(seq.block_hashes) < full:
            i = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if seq.block_hashes else b""
            h = block_hash(parent, seq.token_ids[i * self.block_size:(i + 1) * self.block_size], salt)
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if block.hash is None and h not in self.cached:
                block.hash = h
                self.cached[h] = block.id
                new.append((block.id, h))
        return new

    def deallocate(self, seq: Sequence) -> None:
        """Release seq's blocks; the tail goes first in the eviction order, cached content is kept."""
        for bid in reversed(seq.block_table):
            block = self.blocks[bid]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[bid] = None
        seq.block_table = []
        seq.num_computed = 0
        seq.block_hashes = []

    def stats(self) -> dict:
        return {"kv_blocks_total": self.num_blocks, "kv_blocks_used": self.num_blocks - self.num_free,
                "kv_blocks_cached": len(self.cached), "block_size": self.block_size}
