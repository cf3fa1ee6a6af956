"""A stand-in for Ascend's torch_npu (no NPU can run here): one visible 300I DUO-like device without
bfloat16. It only answers the questions device selection asks; nothing runs on it."""

import types

import torch

npu = types.SimpleNamespace(
    is_available=lambda: True,
    device_count=lambda: 1,
    is_bf16_supported=lambda: False,
    set_device=lambda i: None,
)
torch.utils.rename_privateuse1_backend("npu")  # as torch_npu does, so torch.device('npu') parses
torch.npu = npu
