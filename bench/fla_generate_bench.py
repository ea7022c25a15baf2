#!/usr/bin/env python3
"""Times generation with fla's RetNetForCausalLM next to bench/cuda/bench_generate.cu: decoding tokens/s at batch 1,
64 and 256 after a 128-token prompt (greedy, Hugging Face generate with fla's recurrent cache), and prefill tokens/s
of 2,048 and 32,768-token prompts. Decoding time is that of generating N + 1 tokens minus that of 1 token, so the
prefill is not counted. Skips cleanly when fla is not importable.

Usage: python3 bench/fla_generate_bench.py [FLA_SOURCE_DIR] [heads] [dtype]
       (default: fla as installed, 16 heads (heads of 128/256 as ours), bfloat16)
"""
import sys
import time

if len(sys.argv) > 1 and sys.argv[1] not in ("", "-"):
    sys.path.insert(0, sys.argv[1])

try:
    import torch
    from fla.models import RetNetConfig, RetNetForCausalLM
except Exception as e:  # fla (or torch) not importable: say so and exit cleanly
    print(f"fla not importable: {e}")
    sys.exit(0)


def timed(f):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    f()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def decode(model, B, prompt, new):
    x = torch.randint(0, 32000, (B, prompt), device="cuda")

    def gen(n):
        return model.generate(input_ids=x, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True)

    gen(4)  # warm-up
    one = min(timed(lambda: gen(1)) for _ in range(2))
    full = min(timed(lambda: gen(new + 1)) for _ in range(2))
    dt = (full - one) / new
    print(f"| decode | B={B} after {prompt} | {dt*1e3:.2f} ms/step | {B/dt:,.0f} tokens/s |")


def prefill(model, T):
    x = torch.randint(0, 32000, (1, T), device="cuda")
    with torch.no_grad():
        model(input_ids=x, use_cache=True)
        dt = min(timed(lambda: model(input_ids=x, use_cache=True)) for _ in range(3))
    print(f"| prefill | T={T} | {dt*1e3:.1f} ms | {T/dt:,.0f} tokens/s |")


if __name__ == "__main__":
    heads = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    dtype = getattr(torch, sys.argv[3]) if len(sys.argv) > 3 else torch.bfloat16
    torch.manual_seed(0)
    cfg = RetNetConfig(hidden_size=2048, num_hidden_layers=24, num_heads=heads, expand_k=1, expand_v=2,
                       hidden_ratio=2, vocab_size=32000)
    model = RetNetForCausalLM(cfg).to("cuda", dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"GPU: {torch.cuda.get_device_name()}; fla RetNet heads={heads} {str(dtype).split('.')[-1]}, "
          f"{params/1e9:.3f} B parameters ({params * model.dtype.itemsize / 2**30:.2f} GiB of weights)")
    print("| case | shape | time | tokens/s |")
    print("|---|---|---|---|")
    with torch.no_grad():
        for B in (1, 64, 256):
            try:
                decode(model, B, 128, 32)
            except torch.OutOfMemoryError:
                print(f"| decode | B={B} after 128 | out of memory | |")
                torch.cuda.empty_cache()
        for T in (2048, 32768):
            try:
                prefill(model, T)
            except torch.OutOfMemoryError:
                print(f"| prefill | T={T} | out of memory | |")
                torch.cuda.empty_cache()
