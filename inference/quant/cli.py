"""`qwen-chat quantize`: write an int8 copy of a float Qwen v1 checkpoint.

    qwen-chat quantize --model 14b --out ~/models/qwen-14b-w8a16 --scheme w8a16
    qwen-chat quantize --model 14b --out ~/models/qwen-14b-w8a8 --scheme w8a8 --calib calib.jsonl --smooth 0.5

W8A16: int8 weights (symmetric, one scale per output channel); activations stay fp16/bf16.
W8A8: int8 weights and activations: per token at run time (dynamic, the default), or one static scale
per layer from calibration (--calib: a .jsonl file, one {"text": "..."} per line), with SmoothQuant
smoothing folded into the RMSNorm weights (--smooth ALPHA, default 0.5; 0 = off).
Embeddings and lm_head stay float; --skip leaves more modules float (default for w8a8: mlp.c_proj,
like the reference's Qwen-14B). Load the result with `--model DST`; `--quant w8a16|w8a8` instead
quantizes a float checkpoint at load time.
"""

from __future__ import annotations

import argparse
import sys

from inference.errors import CliParser, UserError


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(allow_abbrev=False, prog="qwen-chat quantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="float checkpoint: a directory, an alias (7b, 14b, ...) or demo")
    p.add_argument("--out", required=True, help="new directory for the quantized checkpoint")
    p.add_argument("--scheme", required=True, choices=("w8a16", "w8a8"), help="w8a16 or w8a8")
    p.add_argument("--calib", metavar="FILE.jsonl", help="w8a8: calibration texts -> static activation scales")
    p.add_argument("--smooth", type=float, metavar="ALPHA", help="SmoothQuant migration strength (default 0.5 "
                                                                  "with --calib; 0 = no smoothing)")
    p.add_argument("--skip", metavar="LIST", help="comma-separated modules left in float, e.g. mlp.c_proj or "
                                                  "transformer.h.0.attn.c_attn (default: w8a8 mlp.c_proj, w8a16 "
                                                  "none; 'none' quantizes all)")
    p.add_argument("--calib-samples", type=int, default=128, help="texts used from --calib (default 128)")
    p.add_argument("--calib-max-len", type=int, default=512, help="tokens per calibration text (default 512)")
    p.add_argument("--device", default="auto", help="where to compute: auto | cpu | cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        from inference.model_path import resolve_model
        from inference.quant.quantize import QuantizeOptions, quantize_checkpoint
        from inference.quant.utils import parse_skip

        src = resolve_model(a.model)
        if a.model == "demo":
            from inference.models.demo import ensure_demo

            ensure_demo(src)
        opts = QuantizeOptions(model=str(src), out=a.out, scheme=a.scheme, calib=a.calib, smooth=a.smooth,
                               skip=parse_skip(a.skip, a.scheme), calib_samples=a.calib_samples,
                               calib_max_len=a.calib_max_len, device=a.device, quiet=a.quiet)
        s = quantize_checkpoint(opts)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions: the partial output was removed
        print(f"error: {e}; nothing was written to --out", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written to --out", file=sys.stderr)
        return 130
    gib = 1 << 30
    print(f"wrote {s['out']}: {s['scheme']}, {s['quantized_linears']} int8 linears, activations "
          f"{s['activations']}, skip {','.join(s['skip']) or 'none'}; weights {s['in_bytes'] / gib:.2f} GiB -> "
          f"{s['out_bytes'] / gib:.2f} GiB in {s['seconds']:.1f} s")
    print(f"run it with: qwen-chat --model {s['out']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
