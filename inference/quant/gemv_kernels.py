"""Triton GEMVs for int8 weights at one token (CUDA); `ops` picks the tiles and launches them.

A one-token decode step streams every weight byte once. Both kernels read the int8 weight as 32-bit words, so
a load moves 16 bytes and no byte goes through the conversion unit (16 a clock a multiprocessor on Hopper,
fewer than the int8 bytes its memory delivers):
- `w8a16_gemv_kernel`: y = (q s) x (+ b), or silu(gate) * up of a merged [gate; up] weight. Byte J of a word
  becomes a float exactly (`decode_kernels.i8_to`'s trick): biased by 128 into the mantissa of 2^23, by one
  xor a word and one `prmt` (byte permute) a byte, then a subtraction.
- `w8a8_gemv_kernel`: y = (q xq + qb) rs s (+ b), gated likewise: four int8 products and their sum a `dp4a`
  instruction into int32, exact, so the result equals the tensor-core GEMM's (`kernels.int8_gemm_kernel`).
Both wait for the kernel before them under programmatic dependent launch (`inference.kernels.pdl`); W8A8's
first asks L2 for the start of its weight rows (`fused.l2_prefetch`).
K must be a multiple of 4 and the weight's rows 4-byte aligned (`ops` routes other shapes elsewhere).
ASM=False computes `dp4a` and the byte extraction with shifts (Triton's interpreter runs no inline assembly).
"""

from __future__ import annotations

import triton
import triton.language as tl

from inference.kernels.fused import l2_prefetch, pdl_wait
from inference.quant.decode_kernels import _silu


@triton.jit
def _byte_f32(words, J: tl.constexpr):
    """Byte J (little-endian) of each int32 word as a float32, exact: biased by 128 into the mantissa of 2^23."""
    return (((words >> (8 * J)) & 0xFF) ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def _biased_f32(words):
    """The four bytes of each int32 word as float32 values 2^23 + 128 too large (`_byte_f32` before its
    subtraction): one xor a word, then one `prmt` a byte (inline assembly: CUDA only)."""
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t, k; xor.b32 t, $4, 0x80808080; mov.b32 k, 0x4B000000; prmt.b32 $0, t, k, 0x7650;"
        " prmt.b32 $1, t, k, 0x7651; prmt.b32 $2, t, k, 0x7652; prmt.b32 $3, t, k, 0x7653; }",
        "=r,=r,=r,=r,r", [words], dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True, pack=1)


@triton.jit
def _byte_i32(words, J: tl.constexpr):
    """Byte J of each int32 word, sign-extended."""
    return (words << (24 - 8 * J)) >> 24


@triton.jit
def _dp4a(a, b, c, ASM: tl.constexpr):
    """c + the dot product of the four int8 lanes of a and b (int32 words)."""
    if ASM:
        return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c], dtype=tl.int32,
                                         is_pure=True, pack=1)
    for J in tl.static_range(4):
        c += _byte_i32(a, J) * _byte_i32(b, J)
    return c


@triton.jit
def _start(w_ptr, N, stride_w, BLOCK_N: tl.constexpr, BLOCK_K4: tl.constexpr):
    """This program's output rows, their mask, the word offsets of a K step and the first step's pointers."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows = tl.where(n_ok, offs_n, 0).to(tl.int64)
    offs_j = tl.arange(0, BLOCK_K4)
    return offs_n, n_ok, rows, offs_j, w_ptr + rows[:, None] * stride_w + offs_j[None, :]


@triton.jit
def _load_rows(w_ptrs, k0, k, K, up, GATED: tl.constexpr, EVEN_K: tl.constexpr):
    """One K step of the program's weight rows and, gated, of their up rows `up` elements further (columns k at
    or past K read 0); the second is the first where not gated."""
    if EVEN_K:
        wv = tl.load(w_ptrs + k0)
        wu = tl.load(w_ptrs + k0 + up) if GATED else wv
    else:
        wv = tl.load(w_ptrs + k0, mask=(k < K)[None, :], other=0)
        wu = tl.load(w_ptrs + k0 + up, mask=(k < K)[None, :], other=0) if GATED else wv
    return wv, wu


@triton.jit
def _w8a16_store(acc, acc_up, s_ptr, b_ptr, y_ptr, N, rows, offs_n, n_ok, HAS_BIAS: tl.constexpr,
                 GATED: tl.constexpr):
    """y = the row sums scaled (+ bias), or silu(gate) * up of the gate and up sums, in y's dtype."""
    y = tl.sum(acc, axis=1) * tl.load(s_ptr + rows)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows).to(tl.float32)
    if GATED:
        y = _silu(y) * tl.sum(acc_up, axis=1) * tl.load(s_ptr + N + rows)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def w8a16_gemv_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, N, K4, stride_w, HAS_BIAS: tl.constexpr,
                      GATED: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K4: tl.constexpr,
                      STAGES: tl.constexpr, ASM: tl.constexpr, PDL: tl.constexpr):
    """x [K4] int64 words of 4 fp16/bf16 (y's dtype), w [N (2N gated), K4] int32 words of int8, s float32 per
    row -> y [N]."""
    pdl_wait(PDL)
    offs_n, n_ok, rows, offs_j, w_ptrs = _start(w_ptr, N, stride_w, BLOCK_N, BLOCK_K4)
    acc = tl.zeros((BLOCK_N, BLOCK_K4), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_K4), dtype=tl.float32)
    up = N * stride_w
    for j0 in tl.range(0, K4, BLOCK_K4, num_stages=STAGES):
        j = j0 + offs_j
        wv, wu = _load_rows(w_ptrs, j0, j, K4, up, GATED, EVEN_K)
        xw = tl.load(x_ptr + j, mask=j < K4, other=0)
        lo = xw.to(tl.int32)
        hi = (xw >> 32).to(tl.int32)
        if ASM:
            fw = _biased_f32(wv)
            if GATED:
                fu = _biased_f32(wu)
        for J in tl.static_range(4):
            half = lo if J < 2 else hi
            xj = ((half >> (16 * (J % 2))) & 0xFFFF).to(tl.int16).to(y_ptr.dtype.element_ty, bitcast=True)
            xj = xj.to(tl.float32)[None, :]
            acc += (fw[J] - 8388736.0 if ASM else _byte_f32(wv, J)) * xj
            if GATED:
                acc_up += (fu[J] - 8388736.0 if ASM else _byte_f32(wu, J)) * xj
    _w8a16_store(acc, acc_up, s_ptr, b_ptr, y_ptr, N, rows, offs_n, n_ok, HAS_BIAS, GATED)


@triton.jit
def w8a8_gemv_kernel(x_ptr, w_ptr, cs_ptr, rs_ptr, qb_ptr, b_ptr, y_ptr, N, K4, stride_w, HAS_QB: tl.constexpr,
                     HAS_BIAS: tl.constexpr, GATED: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K4: tl.constexpr, STAGES: tl.constexpr, ASM: tl.constexpr, PREFETCH: tl.constexpr,
                     PDL: tl.constexpr):
    """x [K4] int32 words of the int8 token, w [N (2N gated), K4] words, rs [1], cs per row -> y [N]."""
    offs_n, n_ok, rows, offs_j, w_ptrs = _start(w_ptr, N, stride_w, BLOCK_N, BLOCK_K4)
    l2_prefetch(w_ptr, rows, 0, K4, stride_w, N * stride_w, PREFETCH, 32, GATED)
    pdl_wait(PDL)
    acc = tl.zeros((BLOCK_N, BLOCK_K4), dtype=tl.int32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_K4), dtype=tl.int32)
    up = N * stride_w
    for j0 in tl.range(0, K4, BLOCK_K4, num_stages=STAGES):
        j = j0 + offs_j
        wv, wu = _load_rows(w_ptrs, j0, j, K4, up, GATED, EVEN_K)
        xv = tl.load(x_ptr + j) if EVEN_K else tl.load(x_ptr + j, mask=j < K4, other=0)
        xb = tl.broadcast_to(xv[None, :], (BLOCK_N, BLOCK_K4))
        acc = _dp4a(wv, xb, acc, ASM)
        if GATED:
            acc_up = _dp4a(wu, xb, acc_up, ASM)
    dot = tl.sum(acc, axis=1)
    if HAS_QB:
        dot += tl.load(qb_ptr + rows)
    rs = tl.load(rs_ptr)
    y = dot.to(tl.float32) * rs * tl.load(cs_ptr + rows)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows).to(tl.float32)
    if GATED:
        dot_up = tl.sum(acc_up, axis=1)
        if HAS_QB:
            dot_up += tl.load(qb_ptr + N + rows)
        y = _silu(y) * (dot_up.to(tl.float32) * rs * tl.load(cs_ptr + N + rows))
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def w8a16_gemv_bytes_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, N, K, stride_w, HAS_BIAS: tl.constexpr,
                            GATED: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
    """x [K], w [N (2N gated), K] int8 -> y [N], each byte converted by the conversion unit (any K)."""
    pdl_wait(PDL)
    offs_n, n_ok, rows, offs_k, w_ptrs = _start(w_ptr, N, stride_w, BLOCK_N, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    up = N * stride_w
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        k = k0 + offs_k
        wv, wu = _load_rows(w_ptrs, k0, k, K, up, GATED, EVEN_K)
        xv = (tl.load(x_ptr + k) if EVEN_K else tl.load(x_ptr + k, mask=k < K, other=0.0)).to(tl.float32)[None, :]
        acc += wv.to(tl.float32) * xv
        if GATED:
            acc_up += wu.to(tl.float32) * xv
    _w8a16_store(acc, acc_up, s_ptr, b_ptr, y_ptr, N, rows, offs_n, n_ok, HAS_BIAS, GATED)
