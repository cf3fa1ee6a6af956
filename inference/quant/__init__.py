"""Int8 quantization: W8A16 (int8 weights, float activations) and W8A8 (int8 weights and activations).

- `utils`: schemes, skip lists, and the quantization arithmetic (the reference for every path)
- `methods`: the linear methods a `LinearBase.quant_method` points to (CPU reference / CUDA kernels)
- `kernels`, `ops`: Triton kernels (CUDA only) and their launchers with the measured tile choices
- `apply`: prepare a model for a quantized checkpoint, or quantize a loaded float model (`--quant`)
- `calibrate`, `quantize`, `cli`: the offline quantizer (`qwen-chat quantize`)
- `msmodelslim`: loads the Ascend msmodelslim layout
"""
