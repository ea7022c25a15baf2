#!/usr/bin/env python3
"""Times a training step of fla's RetNetForCausalLM (bf16, fused AdamW) next to bench/cuda/bench_model.cu: tokens/s
and peak memory. Skips cleanly when fla is not importable.

Two setups: "bf16", the model, its gradients and AdamW's moments all in bf16 (fla's own benchmarks); and "amp",
float parameters, gradients and moments with the forward and backward under torch.autocast(bfloat16) (the usual
mixed precision, and what Trainer<__nv_bfloat16, Cuda> keeps: bf16 parameters, float gradients, master weights and
moments).

Also measures the cuBLAS bf16 GEMM rate (torch.matmul, 8192^3) in the same process: the reference for model FLOP
utilisation.

Usage: PYTHONPATH=<fla source> python3 bench/fla_model_bench.py [heads ...] (default 16 8: heads of 128/256 as ours,
and fla's default 8 heads of 256/512)
"""
import sys
import time

import torch

try:
    from fla.models import RetNetConfig, RetNetForCausalLM
except Exception as e:  # fla not importable: say so and exit cleanly
    print(f"fla not importable: {e}")
    sys.exit(0)


def run(heads, B, T, setup, steps=10):
    torch.manual_seed(0)
    cfg = RetNetConfig(hidden_size=2048, num_hidden_layers=24, num_heads=heads, expand_k=1, expand_v=2,
                       hidden_ratio=2, vocab_size=32000, fuse_cross_entropy=True)
    amp = setup == "amp"
    model = RetNetForCausalLM(cfg).to("cuda", torch.float32 if amp else torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, 32000, (B, T), device="cuda")
    torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"| fla RetNet heads={heads} {setup} | {B}x{T} | {params/1e9:.3f} B | "
          f"{dt*1e3:.1f} ms | {B*T/dt:,.0f} tokens/s | {peak:.1f} GiB |")
    del model, opt
    torch.cuda.empty_cache()


def gemm_rate(n=8192, reps=20):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


if __name__ == "__main__":
    heads_list = [int(a) for a in sys.argv[1:]] or [16, 8]
    print(f"GPU: {torch.cuda.get_device_name()}")
    print(f"cuBLAS bf16 GEMM 8192^3: {gemm_rate() / 1e12:.0f} TFLOP/s")
    print("| model | B x T | params | step | tokens/s | peak |")
    print("|---|---|---|---|---|---|")
    for heads in heads_list:
        for setup in ("bf16", "amp"):
            for B, T in ((1, 8192), (2, 8192), (8, 2048)):
                try:
                    run(heads, B, T, setup)
                except torch.OutOfMemoryError:
                    print(f"| fla RetNet heads={heads} {setup} | {B}x{T} | out of memory |")
                    torch.cuda.empty_cache()
