#!/usr/bin/env python3
"""Groups a kernel summary of a training-step benchmark (nsys stats -r cuda_gpu_kern_sum --format csv) by op and
prints a Markdown table: GPU time per step and share, with the kernels named by the library's source.

Usage: python3 bench/cuda/model_profile.py SUMMARY.csv
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


def main():
    path = sys.argv[1]
    rows = list(csv.DictReader(open(path)))
    steps = float(sum(int(r["Instances"]) for r in rows if "adamw" in r["Name"]))
    total_key = next(k for k in rows[0] if k.startswith("Total Time"))
    name_key = "Name"
    totals = {g: 0.0 for g, _ in GROUPS}
    other = {}
    for r in rows:
        t = float(r[total_key])
        for g, pat in GROUPS:
            if re.search(pat, r[name_key], re.I):
                totals[g] += t
                break
        else:
            other[r[name_key][:60]] = other.get(r[name_key][:60], 0.0) + t
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
