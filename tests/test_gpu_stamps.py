"""CUDA: per-program timestamps of the decode matmuls (`inference/kernels/stamps.py`, bench/timeline_probe.py)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_stamps_cover_every_program_in_launch_order_and_leave_results_alone():
    from inference.kernels.skinny import skinny_config, skinny_linear, use_tma
    from inference.kernels.stamps import Recorder, recording

    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(16, 4096, device="cuda", dtype=torch.float16, generator=g)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.float16, generator=g) * 0.02
    if not use_tma(x, w):
        pytest.skip("the stamps are in the TMA kernel (Hopper and newer)")
    plain = skinny_linear(x, w)
    rec = Recorder(capacity=4096)
    with recording(rec):
        y = skinny_linear(x, w)
    torch.cuda.synchronize()
    assert torch.equal(y, plain)
    bn, _, _, _, _, split = skinny_config(16, 4096, 4096, x.device)
    assert split > 1  # attn.c_proj at 16 tokens splits K: a matmul and its reduce kernel
    assert [(kind, n, k) for kind, _, n, k, _, _ in rec.launches] == [("skinny", 4096, 4096), ("reduce", 4096, split)]
    programs = 4096 // bn * split
    assert rec.launches[0][4:] == (0, programs) and rec.launches[1][4] == programs
    rows = rec.rows[:rec.used].cpu()
    assert (rows[:, 0] > 0).all()  # every program wrote its row
    assert (rows[:, 0] <= rows[:, 1]).all() and (rows[:, 1] <= rows[:, 2]).all()  # entry, past the wait, end
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert ((rows[:, 3] >= 0) & (rows[:, 3] < sms)).all()
    assert rows[programs:, 1].min() >= rows[:programs, 2].max()  # the reduce waited for the whole matmul


def test_recorder_refuses_more_programs_than_rows():
    from inference.kernels.stamps import Recorder

    rec = Recorder(capacity=8, device="cuda")
    rec.take("skinny", 16, 4096, 4096, 8)
    with pytest.raises(ValueError, match="make the Recorder larger"):
        rec.take("reduce", 16, 4096, 2, 1)
