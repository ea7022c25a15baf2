#!/usr/bin/env python3
"""Groups the kernels of a training-step benchmark by op and prints a Markdown table: GPU time per step and share,
with the kernels named by the library's source. Takes either Nsight Systems' kernel summary (nsys stats -r
cuda_gpu_kern_sum --format csv) or Nsight Compute's per-launch CSV (ncu --csv --metrics gpu__time_duration.sum).

Usage: python3 bench/cuda/model_profile.py KERNELS.csv
The number of steps is the number of AdamW launches (one per step).
"""
import csv
import re
import sys

GROUPS = [
    ("GEMM (cuBLAS: projections, FFN, head)", r"gemm|xmma|cutlass|nvjet|sm90_|splitK|Kernel2"),
    ("retention", r"engine|scan|chunk|prefix|mu_kernel|recurrent|float256|state|summar|retention|repeat_heads"),
    ("cross-entropy", r"cross_entropy|loss"),
    ("norms (RMSNorm, LayerNorm)", r"rmsnorm|layernorm|column_sums"),
    ("group norm + swish gate", r"group_norm"),
    ("activation / GLU", r"glu|activation"),
    ("rotation", r"rotate"),
    ("embedding", r"embedding|iota|RadixSort|radix"),
    ("AdamW", r"adamw"),
    ("gradient norm and scaling", r"sum_squares|scale"),
    ("dropout, copies, residual adds", r"mask|copy|residual|zero|fill"),
]


NS_PER_UNIT = {"ns": 1.0, "nsecond": 1.0, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6, "s": 1e9, "second": 1e9}


def kernel_times(path):
    """(name, instances, total ns) per kernel name, from either tool's CSV."""
    lines = [line for line in open(path) if line.strip()]
    if any(line.startswith('"ID"') for line in lines):  # ncu: one row per launch
        rows = csv.DictReader(line for line in lines if line.startswith('"'))
        agg = {}
        for r in rows:
            if r.get("Metric Name") != "gpu__time_duration.sum":
                continue
            t = float(r["Metric Value"].replace(",", "")) * NS_PER_UNIT[r["Metric Unit"]]
            n, tot = agg.get(r["Kernel Name"], (0, 0.0))
            agg[r["Kernel Name"]] = (n + 1, tot + t)
        return [(k, n, t) for k, (n, t) in agg.items()]
    rows = list(csv.DictReader(lines))
    total_key = next(k for k in rows[0] if k.startswith("Total Time"))
    return [(r["Name"], int(r["Instances"]), float(r[total_key])) for r in rows]


def main():
    kernels = kernel_times(sys.argv[1])
    steps = float(sum(n for name, n, _ in kernels if "adamw" in name))
    totals = {g: 0.0 for g, _ in GROUPS}
    other = {}
    for name, _, t in kernels:
        for g, pat in GROUPS:
            if re.search(pat, name, re.I):
                totals[g] += t
                break
        else:
            other[name[:60]] = other.get(name[:60], 0.0) + t
    grand = sum(totals.values()) + sum(other.values())
    print(f"{steps:.0f} steps")
    print("| op | ms per step | share |")
    print("|---|---|---|")
    for g, _ in GROUPS:
        if totals[g] > 0:
            print(f"| {g} | {totals[g] / steps / 1e6:.2f} | {100 * totals[g] / grand:.1f} % |")
    if other:
        print(f"| other ({', '.join(sorted(other, key=other.get, reverse=True)[:3])}) | "
              f"{sum(other.values()) / steps / 1e6:.2f} | {100 * sum(other.values()) / grand:.1f} % |")
    print(f"| **all kernels** | **{grand / steps / 1e6:.2f}** | 100 % |")


if __name__ == "__main__":
    main()
