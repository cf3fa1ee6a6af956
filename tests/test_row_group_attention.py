"""The grouped-rows paged attention (`inference.kernels.row_group_attention`: a prefill chunk's rows in a CUDA
graph, an aligned group of one sequence's rows per program) against the per-row torch reference, through
Triton's interpreter: several sequences with cached prefixes, padding rows (context 0: zeros), split
contexts, float16 and float32. Its speed and the engine's use of it are the GPU tests' part."""

from __future__ import annotations

import textwrap

from tests.support.interpreter import run_interpreted

CHECK = textwrap.dedent("""
    import torch
    from inference.kernels.row_group_attention import GROUP, row_group_attention
    from inference.layers.attention import decode_attention_torch
    torch.manual_seed(0)
    H, D, BS, NB = 2, 64, 16, 40
    for dtype, splits in ((torch.float16, 1), (torch.float16, 4), (torch.float32, 2)):
        k_cache = torch.randn(NB, BS, H, D).to(dtype)
        v_cache = torch.randn(NB, BS, H, D).to(dtype)
        perm = torch.randperm(NB).tolist()
        # (cached tokens, new rows): each sequence's rows start a group and are padded to a multiple of GROUP
        seqs, tables, ctx, first = [(130, 20), (0, 5), (47, 16)], [], [], []
        for i, (cached, new) in enumerate(seqs):
            need = -(-(cached + new) // BS)
            table, perm = perm[:need], perm[need:]
            pad = -new % GROUP
            first += [len(ctx)]
            ctx += [cached + j + 1 for j in range(new)] + [0] * pad
            tables += [table] * (new + pad)
        width = max(len(t) for t in tables)
        bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
        lens = torch.tensor(ctx, dtype=torch.int32)
        q = torch.randn(len(ctx), H, D).to(dtype)
        got = row_group_attention(q, k_cache, v_cache, bt, lens, D ** -0.5, splits=splits)
        want = decode_attention_torch(q, k_cache, v_cache, bt, lens, max(ctx), D ** -0.5)
        real = lens > 0
        assert torch.equal(got[~real].float(), torch.zeros_like(got[~real].float())), "padding rows not zero"
        err = float((got[real].float() - want[real].float()).abs().max())
        assert err < (2e-3 if dtype == torch.float16 else 1e-5), (dtype, splits, err)
    try:
        row_group_attention(q[:5], k_cache, v_cache, bt[:5], lens[:5], 1.0)
        raise SystemExit("5 rows accepted")
    except ValueError as e:
        assert f"multiple of {GROUP}" in str(e)
    print("row groups ok")
""")


def test_row_group_attention_matches_per_row_reference_in_the_interpreter():
    run_interpreted(CHECK, "row groups ok", timeout=300)
