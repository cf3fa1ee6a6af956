"""The KV disk tier's block file: safetensors holding one block's k and v, named by the block hash hex,
CRC32s of both tensors' bytes in its metadata; building its header, reading it without following links,
verifying it."""

from __future__ import annotations

import errno
import json
import os
import stat
import zlib
from pathlib import Path

import torch

FORMAT = "qwen-chat-kv-1"
SUFFIX = ".safetensors"
ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def raw(t: torch.Tensor):
    """The tensor's bytes as a numpy uint8 view (no copy when contiguous)."""
    return t.contiguous().view(-1).view(torch.uint8).numpy()


def crc(buf) -> str:
    return f"{zlib.crc32(buf):08x}"


def st_header(h: bytes, dtype: str, shape: list[int], kb, vb) -> bytes:
    """The safetensors header of a block file (k then v, CRC32s in the metadata). Built from byte buffers
    only: the writer thread runs no torch op (those on a second thread made torchrun ranks abort at exit)."""
    meta = {"format": FORMAT, "hash": h.hex(), "crc_k": crc(kb), "crc_v": crc(vb)}
    header = {"__metadata__": meta, "k": {"dtype": dtype, "shape": shape, "data_offsets": [0, kb.nbytes]},
              "v": {"dtype": dtype, "shape": shape, "data_offsets": [kb.nbytes, kb.nbytes + vb.nbytes]}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def read_regular(path: Path) -> bytes | None:
    """The bytes of the regular file at `path`, or None where it holds anything else (a FIFO, a device, a
    symlink): opened without blocking (a FIFO would wait for a writer) and without following links."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read() if stat.S_ISREG(os.fstat(fd).st_mode) else None


def header_metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]).get("__metadata__") or {}


def verify(data: bytes, h: bytes, shape: list[int], dtype: str) -> bool:
    """A block file's header names this hash, format, shape and dtype, and each tensor's bytes match
    their CRC32."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT or meta.get("hash") != h.hex():
        return False
    view, nbytes = memoryview(data), len(data) - 8 - n
    for name in ("k", "v"):
        info = header[name]
        start, end = info["data_offsets"]
        if info["dtype"] != dtype or info["shape"] != shape or not 0 <= start <= end <= nbytes:
            return False
        if crc(view[8 + n + start:8 + n + end]) != meta.get(f"crc_{name}"):
            return False
    return header["k"]["data_offsets"][1] - header["k"]["data_offsets"][0] == \
        header["v"]["data_offsets"][1] - header["v"]["data_offsets"][0] > 0
