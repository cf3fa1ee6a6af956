"""Int8 linears on a CUDA GPU at 7B shapes: decode throughput of fp16 vs W8A16 vs W8A8, and weight memory.

    python bench/quant_bench.py                      # hidden 4096, ffn 11008, 32 layers, vocab 151936
    python bench/quant_bench.py --batches 1,64 --json bench_quant.json

Random weights, no checkpoint. One decode step = every block's linears (c_attn, attn.c_proj, mlp.w2_w1,
mlp.c_proj, with an RMSNorm before c_attn and w2_w1 and a SiLU gate; the attention itself is left out
and the query slice of c_attn feeds c_proj) plus the fp16 lm_head, through the engine's own parallel
linear layers and quantization methods, captured in one CUDA graph and replayed. tok/s = batch / step
time. The logits cosine against fp16 checks that the int8 paths compute the right thing.
Targets (issue 8): W8A16 batch 1 >= 1.6x fp16; W8A8 batch 64 >= 1.3x fp16; weights about half.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear  # noqa: E402
from inference.quant.apply import quantize_layer  # noqa: E402

VARIANTS = {  # name -> (scheme, module kinds left in fp16)
    "fp16": (None, ()),
    "w8a16": ("w8a16", ()),
    "w8a8": ("w8a8", ()),
    "w8a8 mlp.c_proj fp16": ("w8a8", ("mlp_c_proj",)),
}


def rms(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), eps=1e-6)  # fused: the glue stays small


class LinearStack(torch.nn.Module):
    def __init__(self, layers: int, hidden: int, ffn: int, vocab: int, seed: int):
        super().__init__()
        self.hidden = hidden
        g = torch.Generator(device="cuda").manual_seed(seed)
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            b = torch.nn.ModuleDict({
                "c_attn": QKVParallelLinear(hidden, bias=True), "c_proj": RowParallelLinear(hidden, hidden),
                "w2_w1": MergedColumnParallelLinear(hidden, [ffn, ffn]), "mlp_c_proj": RowParallelLinear(ffn, hidden)})
            for lin in b.values():
                w = lin.weight
                w.data.copy_(torch.randn(w.shape, generator=g, device="cuda", dtype=w.dtype) * w.shape[1] ** -0.5)
                if lin.bias is not None:
                    lin.bias.data.copy_(torch.randn(lin.bias.shape, generator=g, device="cuda") * 0.1)
            self.blocks.append(b)
        self.lm_head = torch.nn.Parameter(
            torch.randn(vocab, hidden, generator=g, device="cuda", dtype=torch.float16) * hidden ** -0.5,
            requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            q = b["c_attn"](rms(x))[:, : self.hidden]
            x = x + b["c_proj"](q)
            gate, up = b["w2_w1"](rms(x)).chunk(2, dim=-1)
            x = x + b["mlp_c_proj"](up * torch.nn.functional.silu(gate))
        return torch.nn.functional.linear(rms(x), self.lm_head)


def build(args, scheme: str | None, keep_fp16: tuple[str, ...]) -> LinearStack:
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device("cuda"):
            model = LinearStack(args.layers, args.hidden, args.ffn, args.vocab, args.seed).eval()
    finally:
        torch.set_default_dtype(prev)
    if scheme:
        for b in model.blocks:
            for kind, lin in b.items():
                if kind not in keep_fp16:
                    quantize_layer(lin, scheme)
    gc.collect()
    torch.cuda.empty_cache()
    return model


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@torch.inference_mode()
def time_step(model: LinearStack, batch: int, args) -> tuple[float, torch.Tensor]:
    """Median milliseconds per replay of one captured decode step, and its logits."""
    g = torch.Generator(device="cuda").manual_seed(args.seed + batch)
    x = torch.randn(batch, args.hidden, generator=g, device="cuda", dtype=torch.float16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # compiles the Triton kernels before capture
            model(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = model(x)
    for _ in range(5):
        graph.replay()
    times = []
    for _ in range(args.trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.iters):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / args.iters)
    logits = out.float().clone()
    del graph
    return statistics.median(times), logits


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--ffn", type=int, default=11008)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--batches", default="1,16,64,256", help="comma-separated decode batch sizes")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    p.add_argument("--iters", type=int, default=30, help="graph replays per trial")
    p.add_argument("--trials", type=int, default=5, help="trials (the median is reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: quant_bench needs a CUDA GPU", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    names = [v.strip() for v in args.variants.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    if "fp16" not in names:
        names.insert(0, "fp16")
    results, ref_logits = {}, {}
    for name in names:
        scheme, keep = VARIANTS[name]
        model = build(args, scheme, keep)
        row = {"weight_gib": weight_bytes(model) / (1 << 30), "ms": {}, "tok_s": {}, "cosine": {}}
        for b in batches:
            ms, logits = time_step(model, b, args)
            row["ms"][b], row["tok_s"][b] = ms, b / ms * 1000
            if name == "fp16":
                ref_logits[b] = logits
            row["cosine"][b] = cosine(logits, ref_logits[b])
            print(f"{name:>22} batch {b:>4}: {ms:8.3f} ms/step {row['tok_s'][b]:10.1f} tok/s "
                  f"cos {row['cosine'][b]:.5f}", file=sys.stderr, flush=True)
        results[name] = row
        del model
        gc.collect()
        torch.cuda.empty_cache()
    base = results["fp16"]
    print(f"\n{torch.cuda.get_device_name()} | {args.layers} layers, hidden {args.hidden}, ffn {args.ffn}, "
          f"vocab {args.vocab} (lm_head fp16) | torch {torch.__version__}")
    head = f"{'variant':<22}{'weights GiB':>12}" + "".join(f"{f'b{b} tok/s':>13}{'x fp16':>8}" for b in batches)
    print(head + f"{'logits cos':>12}")
    print("-" * len(head + " " * 12))
    for name, r in results.items():
        cells = "".join(f"{r['tok_s'][b]:>13.1f}{r['tok_s'][b] / base['tok_s'][b]:>7.2f}x" for b in batches)
        print(f"{name:<22}{r['weight_gib']:>12.2f}{cells}{min(r['cosine'].values()):>12.5f}")
    checks = []
    if "w8a16" in results and 1 in batches:
        checks.append(("W8A16 batch-1 speedup", results["w8a16"]["tok_s"][1] / base["tok_s"][1], 1.6))
    for name in ("w8a8", "w8a8 mlp.c_proj fp16"):
        if name in results and 64 in batches:
            checks.append((f"{name} batch-64 speedup", results[name]["tok_s"][64] / base["tok_s"][64], 1.3))
    for label, value, target in checks:
        print(f"{label}: {value:.2f}x (target >= {target}x) {'ok' if value >= target else 'BELOW TARGET'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "args": vars(args),
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
