#!/usr/bin/env python3
"""Times fla's chunk_retention (flash-linear-attention) on the six benchmark shapes, forward and forward+backward,
bf16 and float, with triton.testing.do_bench (median, CUDA events). Prints a markdown table and writes JSON.

Usage: PYTHONPATH=<fla source> python3 bench/fla_bench.py [out.json]
(FLA_DTYPES=bf16 and FLA_HEAD_SIZES=256, comma-separated, restrict the runs.)
"""
import json
import os
import sys

import torch

try:
    from fla.ops.retention import chunk_retention
except Exception as e:  # fla not importable: say so and exit cleanly
    print(f"fla not importable: {e}")
    sys.exit(0)
from triton.testing import do_bench

SHAPES = [(8, 4096, 16, 128), (4, 4096, 64, 128), (2, 16384, 16, 128), (4, 2048, 16, 128), (8, 1024, 8, 64),
          (4, 8192, 8, 256)]


def bench(B, T, H, D, dtype, backward):
    torch.manual_seed(0)
    q = torch.randn(B, T, H, D, device="cuda", dtype=dtype, requires_grad=backward)
    k = (torch.randn(B, T, H, D, device="cuda", dtype=dtype) * D ** -0.5).requires_grad_(backward)
    v = torch.randn(B, T, H, D, device="cuda", dtype=dtype, requires_grad=backward)
    do = torch.randn(B, T, H, D, device="cuda", dtype=dtype)

    def fwd():
        return chunk_retention(q, k, v, scale=1.0)[0]

    def fwdbwd():
        o = chunk_retention(q, k, v, scale=1.0)[0]
        o.backward(do)

    fn = fwdbwd if backward else fwd
    if not backward:
        with torch.no_grad():
            return do_bench(fn, warmup=50, rep=300, return_mode="median")
    return do_bench(fn, warmup=50, rep=300, return_mode="median", grad_to_none=[q, k, v])


def main():
    out = {}
    print("| B, T, H, D | dtype | fla fwd ms | fla fwd+bwd ms |")
    print("|---|---|---|---|")
    dtypes = ((torch.bfloat16, "bf16"), (torch.float32, "f32"))
    only = os.environ.get("FLA_DTYPES")  # e.g. "bf16"
    heads = os.environ.get("FLA_HEAD_SIZES")  # e.g. "256": only the shapes of these head sizes
    for dtype, name in dtypes:
        if only and name not in only.split(","):
            continue
        for s in SHAPES:
            if heads and str(s[3]) not in heads.split(","):
                continue
            f = bench(*s, dtype, False)
            fb = bench(*s, dtype, True)
            out[f"{name}/{s}"] = {"fwd": f, "fwdbwd": fb}
            print(f"| {s} | {name} | {f:.3f} | {fb:.3f} |", flush=True)
    if len(sys.argv) > 1:
        json.dump(out, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
