"""The disk tier of the prefix cache: hits after an engine restart, damaged files detected and never
used, LRU eviction under the size cap, separate stores per model/dtype/tp/quant, and tp=2 per-rank files.

Also the torchrun worker of the tp test: `python -m torch.distributed.run ... test_kv_disk.py ARGS`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_prefix_cache import BS, converse, make_engine, run

from inference.config import EngineConfig, ModelConfig, SamplingParams
from inference.engine.kv_disk import store_key
from inference.engine.kv_disk_format import FORMAT, header_metadata
from inference.engine.kv_disk_store import KVDiskStore
from inference.engine.llm_engine import LLMEngine, start_engine
from inference.engine.sequence import Sequence
from inference.errors import UserError


def full_blocks(n_tokens: int) -> int:
    return n_tokens // BS * BS


def chain(engine: LLMEngine, prompt: list[int]) -> list[bytes]:
    """The block hashes of `prompt`'s full blocks (those a request may reuse)."""
    return engine.block_manager.disk_chain(Sequence("probe", prompt, SamplingParams()), lambda h: True)


@pytest.fixture(scope="module")
def uncached(tiny_model):
    """The reference conversation (3 turns) with prefix caching off."""
    return converse(make_engine(tiny_model, enable_prefix_caching=False))


@pytest.fixture(scope="module")
def populated(tiny_model, uncached, tmp_path_factory):
    """Turns 1 and 2 on an engine with the disk tier, then shut down; returns (root, rank0 dir)."""
    root = tmp_path_factory.mktemp("kv")
    engine = make_engine(tiny_model, kv_disk_dir=str(root))
    for prompt, reply, _ in uncached[:2]:
        assert run(engine, prompt, len(reply))[0] == reply
    store = engine.kv_disk.store.dir
    engine.shutdown()  # saves the last turn's blocks and waits for the writer
    return root, store


def test_restart_hits_from_disk_and_answers_as_without_cache(tiny_model, uncached, populated):
    root, store = populated
    (p2, r2, _), (p3, r3, _) = uncached[1], uncached[2]
    engine = make_engine(tiny_model, kv_disk_dir=str(root))
    got, usage = run(engine, p3, len(r3))
    assert got == r3
    assert usage.cached_tokens >= full_blocks(len(p2) + len(r2))
    assert usage.cached_tokens == full_blocks(len(p2) + len(r2) - 1)  # every block turn 2 computed
    stats = engine.stats()
    assert stats["kv_disk_loaded"] == usage.cached_tokens // BS and stats["kv_disk_corrupt"] == 0
    engine.shutdown()


def test_load_skipped_when_recomputing_was_measured_faster(tiny_model, uncached, populated, tmp_path):
    root = tmp_path / "kv"
    shutil.copytree(populated[0], root)
    p3, r3, _ = uncached[2]
    engine = make_engine(tiny_model, kv_disk_dir=str(root))
    tier = engine.kv_disk
    on_disk = len(engine.block_manager.disk_chain(Sequence("probe", p3, SamplingParams()), tier.store.contains))
    assert on_disk >= 4 and tier.worth_loading()  # nothing measured yet: load
    tier.load_s, tier.compute_s = 1.0, 1e-6  # as on a fast GPU with a slow disk: a block loads in 1 s
    got, usage = run(engine, p3, len(r3))
    assert got == r3 and usage.cached_tokens == 0
    stats = engine.stats()
    assert stats["kv_disk_loaded"] == 0 and stats["kv_disk_skipped"] == on_disk
    assert tier.compute_s > 1e-6  # the prefill it ran instead was measured
    tier.load_s, tier.compute_s = 1e-6, 1.0  # and the other way round: loads again
    assert tier.worth_loading()
    engine.shutdown()


def test_files_are_checksummed_safetensors_named_by_hash(tiny_model, populated):
    root, store = populated
    m = ModelConfig.from_dir(tiny_model)
    files = sorted(store.glob("*.safetensors"))
    assert store.name == "rank0" and len(files) >= 8 and not list(store.glob("*.tmp"))
    for f in files[:3]:
        meta, t = header_metadata(f.read_bytes()), load_file(f)
        assert meta["format"] == FORMAT and f.name == meta["hash"] + ".safetensors"
        assert t["k"].shape == t["v"].shape == (m.num_hidden_layers, BS, m.num_attention_heads, m.head_dim)
        assert t["k"].dtype == torch.float32 and t["k"].abs().sum() > 0


@pytest.mark.parametrize("damage", ["flip-data", "flip-header", "truncate"])
def test_damaged_file_is_detected_and_never_used(tiny_model, uncached, populated, tmp_path, damage):
    root = tmp_path / "kv"
    shutil.copytree(populated[0], root)
    p3, r3, _ = uncached[2]
    engine = make_engine(tiny_model, kv_disk_dir=str(root))
    victim = engine.kv_disk.store.path(chain(engine, p3)[2])
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    else:
        at = len(data) - 10 if damage == "flip-data" else data.index(b"crc_k") + 9
        data[at] ^= 0x01
    victim.write_bytes(bytes(data))
    got, usage = run(engine, p3, len(r3))
    assert got == r3  # still answers correctly: recomputed from the damaged block on
    assert usage.cached_tokens == 2 * BS
    assert engine.stats()["kv_disk_corrupt"] == 1
    engine.shutdown()  # the recomputed block is saved again, intact
    fresh = KVDiskStore(root, victim.parent.parent.name, 1.0)
    k, v = fresh.get(bytes.fromhex(victim.stem), *engine.kv_disk.tier.spec())
    assert k.shape == engine.kv_disk.tier.spec()[0] and fresh.stats()["kv_disk_corrupt"] == 0
    fresh.close()


def test_loaded_counts_only_the_blocks_used(tiny_model, uncached, populated, tmp_path):
    root = tmp_path / "kv"
    shutil.copytree(populated[0], root)
    p3, r3, _ = uncached[2]
    engine = make_engine(tiny_model, kv_disk_dir=str(root))
    hashes = chain(engine, p3)
    on_disk = sum(engine.kv_disk.store.contains(h) for h in hashes)
    victim = engine.kv_disk.store.path(hashes[1])
    victim.write_bytes(victim.read_bytes()[:-7])
    got, usage = run(engine, p3, len(r3))
    assert got == r3 and usage.cached_tokens == BS and on_disk >= 4
    stats = engine.stats()  # the intact blocks read past the damaged one were not used: not "loaded"
    assert stats["kv_disk_loaded"] == 1 and stats["kv_disk_corrupt"] == 1, stats
    engine.shutdown()


def test_fifo_at_a_block_path_is_recomputed_without_waiting(tiny_model, uncached, populated, tmp_path):
    """A FIFO where a block file should be (another local user can plant one) is treated as corrupt: the
    read does not wait for a writer (it hung generation for 60 s), the tokens equal the no-disk run."""
    import threading

    root = tmp_path / "kv"
    shutil.copytree(populated[0], root)
    p3, r3, _ = uncached[2]
    engine = make_engine(tiny_model, kv_disk_dir=str(root))
    victim = engine.kv_disk.store.path(chain(engine, p3)[2])
    victim.unlink()
    os.mkfifo(victim)
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=run(engine, p3, len(r3))), daemon=True)
    t0 = time.monotonic()
    worker.start()
    worker.join(20)
    hung = worker.is_alive()
    if hung:  # unblock the reader (a writer opens and closes the FIFO) so the test ends instead of hanging
        os.close(os.open(victim, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(20)
    assert not hung, "generation waited on the FIFO"
    assert time.monotonic() - t0 < 20
    got, usage = result["out"]
    assert got == r3 and usage.cached_tokens == 2 * BS  # the blocks before the FIFO came from disk
    assert engine.stats()["kv_disk_corrupt"] == 1
    engine.shutdown()
    assert victim.is_file() and not victim.is_symlink()  # recomputed and saved again as a regular file


def test_block_reads_take_regular_files_only(tmp_path):
    from inference.engine.kv_disk_format import read_regular

    real = tmp_path / "real"
    real.write_bytes(b"block")
    (tmp_path / "link").symlink_to(real)
    os.mkfifo(tmp_path / "fifo")
    assert read_regular(real) == b"block"
    assert read_regular(tmp_path / "link") is None and read_regular(tmp_path / "fifo") is None
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing")


def test_lru_eviction_under_the_size_cap(tmp_path):
    shape = (2, BS, 4, 16)
    blocks = {bytes([i]) * 16: (torch.full(shape, float(i)), torch.full(shape, -float(i))) for i in range(5)}
    h = list(blocks)
    probe = KVDiskStore(tmp_path / "probe", "k", 1.0)
    probe.put(h[0], *blocks[h[0]])
    probe.close()
    size = probe.stats()["kv_disk_bytes"]
    cap_gb = 3.5 * size / 2**30  # room for 3 blocks
    store = KVDiskStore(tmp_path, "k", cap_gb)
    for x in h[:3]:
        store.put(x, *blocks[x])
        store.drain()
        time.sleep(0.01)  # distinct mtimes
    store.touch([h[0]])  # h[1] is now the least recently used
    time.sleep(0.01)
    store.put(h[3], *blocks[h[3]])
    store.drain()
    assert [store.contains(x) for x in h[:4]] == [True, False, True, True]
    assert not store.path(h[1]).exists() and store.stats()["kv_disk_evicted"] == 1
    assert store.stats()["kv_disk_bytes"] <= cap_gb * 2**30
    store.close()
    again = KVDiskStore(tmp_path, "k", cap_gb)  # the order survives a restart (file mtimes)
    again.put(h[4], *blocks[h[4]])
    again.drain()
    assert [again.contains(x) for x in h] == [True, False, False, True, True]
    k, v = again.get(h[3], torch.Size(shape), torch.float32)
    assert torch.equal(k, blocks[h[3]][0]) and torch.equal(v, blocks[h[3]][1])
    again.close()


def test_stores_are_separate_per_model_dtype_tp_quant_and_block_size(tiny_model, tmp_path):
    base = b"fp|torch.float32|tp1|None|"
    keys = {store_key(tiny_model, salt, bs) for salt, bs in [
        (base, 8), (base, 16), (b"fp|torch.bfloat16|tp1|None|", 8), (b"fp|torch.float32|tp2|None|", 8),
        (b"fp|torch.float32|tp1|w8a16|", 8)]}
    assert len(keys) == 5
    other = tmp_path / "finetune"  # same config and shard sizes, other weights
    shutil.copytree(tiny_model, other)
    shard = sorted(other.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert store_key(other, base, 8) != store_key(tiny_model, base, 8)


def test_bad_settings_are_refused_and_the_flag_turns_it_off(tmp_path):
    with pytest.raises(UserError, match="--kv-disk-max-gb must be positive"):
        KVDiskStore(tmp_path, "k", 0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="--no-kv-disk"):
        KVDiskStore(tmp_path / "file", "k", 1.0)
    import argparse

    from inference.entrypoints.cli_args import add_engine_args, engine_config_from_args
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_engine_args(p, kv_disk_default=True)
    on = engine_config_from_args(p.parse_args(["--model", str(tmp_path)]))
    off = engine_config_from_args(p.parse_args(["--model", str(tmp_path), "--no-kv-disk"]))
    assert on.kv_disk_dir and on.kv_disk_dir.endswith(os.path.join("qwen-chat", "kv")) and off.kv_disk_dir is None


# --- tensor parallelism: every rank saves and loads its own heads' slice ---------------------------------
def torchrun_worker(model: str, root: str, job_json: str, out: str) -> None:
    """Each turn on a tp=2 engine with the disk tier; rank 0 writes tokens, cached tokens, probe hashes."""
    job = json.loads(job_json)
    engine = start_engine(EngineConfig(model=model, device="cpu", dtype="float32", tp=2, block_size=BS,
                                       num_kv_blocks=64, kv_disk_dir=root))  # rank 1 ends inside, after rank 0
    turns = []
    for prompt, n in job["turns"]:
        toks, usage = run(engine, prompt, n)
        turns.append({"tokens": toks, "cached": usage.cached_tokens})
    probes = [[h.hex() for h in chain(engine, p)] for p in job.get("probe", [])]
    engine.shutdown()
    Path(out).write_text(json.dumps({"turns": turns, "probes": probes}))
    os._exit(0)


def torchrun(*args: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(Path(args[-1]).read_text())


def test_tp2_saves_and_loads_per_rank(tiny_model, uncached, tmp_path):
    root = tmp_path / "kv"
    turns = [[p, len(r)] for p, r, _ in uncached]
    p3, r3, _ = uncached[2]
    job = {"turns": turns[:2], "probe": [p3]}
    first = torchrun(str(tiny_model), str(root), json.dumps(job), str(tmp_path / "a.json"))
    assert [t["tokens"] for t in first["turns"]] == [r for _, r, _ in uncached[:2]]
    assert first["turns"][1]["cached"] > 0
    stores = sorted(root.glob("*/rank*"))
    assert [s.name for s in stores] == ["rank0", "rank1"]
    names = [sorted(f.name for f in s.glob("*.safetensors")) for s in stores]
    assert names[0] == names[1] and len(names[0]) >= 8
    k = load_file(stores[1] / names[1][0])["k"]
    assert k.shape[2] == 8 // 2  # rank 1 holds half of the 8 heads
    k_before = load_file(stores[1] / f"{first['probes'][0][3]}.safetensors")["k"]
    # rank 1's copy of block 3 of turn 3's prefix is damaged: no rank may use it (or anything after it)
    victim = stores[1] / f"{first['probes'][0][3]}.safetensors"
    victim.write_bytes(victim.read_bytes()[:-7])
    second = torchrun(str(tiny_model), str(root), json.dumps({"turns": turns[2:]}), str(tmp_path / "b.json"))
    assert second["turns"][0]["tokens"] == r3
    assert second["turns"][0]["cached"] == 3 * BS
    # both ranks dropped the block and saved the recomputed one again
    assert victim.stat().st_size == (stores[0] / victim.name).stat().st_size
    assert torch.allclose(load_file(victim)["k"], k_before, atol=1e-5)  # recomputed: equal up to rounding


if __name__ == "__main__":
    torchrun_worker(*sys.argv[1:5])


def test_writer_holds_off_from_admission_until_the_step_ends(tiny_model, uncached, tmp_path):
    """The previous turn's blocks are written in the background; a new request pauses the writer from
    add_request (its prompt's hashing and its prefill come first) until the step that served it ends."""
    engine = make_engine(tiny_model, kv_disk_dir=str(tmp_path / "kv"))
    try:
        prompt, reply, _ = uncached[0]
        may_write = engine.kv_disk.store.may_write
        engine.add_request(prompt, SamplingParams(max_new_tokens=len(reply), temperature=0.0, ignore_eos=True))
        assert not may_write.is_set()
        engine.step()
        assert may_write.is_set()
        while engine.has_unfinished():
            engine.step()
        assert may_write.is_set() and engine.kv_disk.store.counts is not None
    finally:
        engine.shutdown()
