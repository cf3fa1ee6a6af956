"""The decode-size W8A16 kernels (`inference.quant.decode_kernels`, 2-64 tokens) against the CPU reference,
through Triton's interpreter: every branch (pointer / TMA tiles, split K, K not a multiple of the block, N not
a multiple of the tile, bias, gated). Speed and bf16 on tensor cores (the interpreter's bf16 dot is broken) are
the GPU tests' part; the one-token GEMV and W8A8 kernels are `test_quant_numerics`'."""

from __future__ import annotations

import textwrap

from tests.support.interpreter import run_interpreted

CHECK = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from inference.quant import decode_ops as D, ops as K
    from inference.quant.methods import w8a16_reference
    torch.manual_seed(0)

    def rel(y, r):
        assert torch.isfinite(y.float()).all()
        return float((y.float() - r.float()).norm() / r.float().norm())

    # (m, n, k, bias, gated, dtype, config (BLOCK_N, BLOCK_M, BLOCK_K, warps, stages, SPLIT_K), tma)
    for m, n, k, bias, gated, dt, cfg, tma in (
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
        y = D.w8a16_skinny(x, w, s, b, gated=gated, config=cfg, tma=tma)
        r = w8a16_reference(x, w, s, b).float()
        if gated:
            r = F.silu(r[:, :n]) * r[:, n:]
        assert y.shape == (m, n) and y.dtype == dt
        assert rel(y, r) < 2e-3, (m, n, k, gated, cfg, tma, rel(y, r))
    y = K.w8a16_linear(x, w[:n], s[:n], b)  # the public entry point takes the skinny kernel at 2-64 tokens
    assert rel(y, w8a16_reference(x, w[:n], s[:n], b)) < 2e-3
    assert K.w8a16_config(1, n, x.device)[0] == "gemv" and K.w8a16_config(2, n, x.device)[0] == "decode"
    print("decode kernels ok")
""")


def test_decode_kernels_match_reference_in_the_interpreter():
    run_interpreted(CHECK, "decode kernels ok", timeout=240)
