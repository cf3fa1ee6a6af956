"""The decode-size int8 kernels (`inference.quant.decode_kernels`, 1-64 tokens) against the CPU reference,
through Triton's interpreter: every branch (GEMV / skinny, pointer / TMA tiles, split K, K not a multiple of
the block, N not a multiple of the tile, bias, gated, W8A8 in-kernel quantization). Speed and bf16 on tensor
cores (the interpreter's bf16 dot is broken) are the GPU tests' part."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from inference.quant import decode_ops as D, ops as K, utils as U
    from inference.quant.methods import w8a16_reference, w8a8_reference
    torch.manual_seed(0)

    def rel(y, r):
        assert torch.isfinite(y.float()).all()
        return float((y.float() - r.float()).norm() / r.float().norm())

    # W8A16: (m, n, k, bias, gated, dtype, config, tma); GEMV config (BLOCK_N, BLOCK_K, warps, stages), skinny
    # (BLOCK_N, BLOCK_M, BLOCK_K, warps, stages, SPLIT_K)
    for m, n, k, bias, gated, dt, cfg, tma in (
            (1, 42, 1100, True, False, torch.float16, None, None),  # K % 1024, N % 4
            (1, 42, 2048, False, True, torch.bfloat16, None, None),  # gated, bf16
            (1, 30, 1000, False, True, torch.float16, (8, 256, 4, 2), None),
            (3, 80, 1000, True, False, torch.float16, (64, 16, 128, 4, 2, 1), False),  # masked K, N % 64
            (3, 80, 1000, True, False, torch.float16, (64, 16, 128, 4, 2, 3), False),  # split K + bias reduce
            (17, 72, 1024, False, True, torch.float16, (64, 32, 128, 4, 2, 2), False),  # gated split, M % 32
            (5, 72, 1008, False, True, torch.float16, (64, 16, 128, 4, 2, 1), True),  # TMA zero fill, gated
            (2, 70, 512, True, False, torch.float16, (64, 16, 64, 4, 2, 2), True),  # TMA split + bias
            (40, 100, 256, True, False, torch.float16, None, None)):  # the default table (M 64 bucket)
        x = torch.randn(m, k).to(dt)
        w = torch.randint(-127, 128, ((2 if gated else 1) * n, k), dtype=torch.int8)
        s = torch.rand(w.shape[0]) * 1e-2
        b = torch.randn(n).to(dt) if bias else None
        y = D.w8a16_decode(x, w, s, b, gated=gated, config=cfg, tma=tma)
        r = w8a16_reference(x, w, s, b).float()
        if gated:
            r = F.silu(r[:, :n]) * r[:, n:]
        assert y.shape == (m, n) and y.dtype == dt
        assert rel(y, r) < (1e-2 if dt == torch.bfloat16 else 2e-3), (m, n, k, gated, cfg, tma, rel(y, r))
    y = K.w8a16_linear(x, w[:n], s[:n], b)  # the public entry point takes the decode kernels
    assert rel(y, w8a16_reference(x, w[:n], s[:n], b)) < 2e-3

    # W8A8, one token, quantized in the kernel: with one-hot weight rows y[j] = q[j] * s, so equality checks
    # every int8 value and the scale bit for bit (dynamic, given, static with an offset; K not a multiple)
    k = 1100
    x = torch.randn(1, k).half()
    x[0, 7] *= 30
    pick = torch.arange(0, k, 11)
    w = torch.zeros(len(pick), k, dtype=torch.int8)
    w[torch.arange(len(pick)), pick] = 1
    ones = torch.ones(len(pick))
    for scale, off in ((None, None), (torch.tensor([0.05]), None), (torch.tensor([0.02]), torch.tensor([3.0]))):
        y, s = D.w8a8_gemv(x, w, ones, scale, off)
        if scale is None:
            q, rs = U.quantize_per_token(x)
            assert torch.equal(s, rs)
        else:
            q, rs = U.quantize_static(x, scale, off), scale
        assert torch.equal(y, w8a8_reference(q, w, rs, ones, out_dtype=torch.float16))

    # W8A8 with quant bias and bias: (m, n, k, static, config, tma)
    for m, n, k, static, cfg, tma in (
            (1, 42, 1100, False, None, None), (1, 24, 512, True, (8, 128, 4, 2), None),
            (3, 80, 1000, False, (64, 16, 128, 4, 2, 1), False), (3, 80, 1000, True, (64, 16, 128, 4, 2, 3), False),
            (20, 72, 512, False, (64, 32, 128, 4, 2, 2), True), (2, 40, 1008, True, (64, 16, 256, 4, 2, 1), True),
            (33, 100, 768, False, None, None)):
        x = torch.randn(m, k).half()
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        cs, b = torch.rand(n) * 1e-3, torch.randn(n).half()
        qb = torch.randint(-999, 999, (n,), dtype=torch.int32)
        sc = torch.tensor([0.05])
        q, rs = (U.quantize_static(x, sc), sc) if static else U.quantize_per_token(x)
        r = w8a8_reference(q, w, rs, cs, qb, b, torch.float32)
        if m == 1:
            y, _ = D.w8a8_gemv(x, w, cs, sc if static else None, None, qb, b, config=cfg)
        elif cfg is None:
            y = K.int8_linear(q, w, rs, cs, qb, b, torch.float16)
        else:
            y = D.w8a8_skinny(q, w, rs, cs, qb, b, torch.float16, config=cfg, tma=tma)
        assert y.shape == (m, n) and rel(y, r) < 2e-3, (m, n, k, static, cfg, tma, rel(y, r))
    print("decode kernels ok")
""")


def test_decode_kernels_match_reference_in_the_interpreter():
    pytest.importorskip("triton")
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=240,
                       env={**os.environ, "TRITON_INTERPRET": "1"})
    assert r.returncode == 0 and "decode kernels ok" in r.stdout, r.stderr[-3000:]
