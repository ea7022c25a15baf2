#!/usr/bin/env python3
"""Times torchscale's RetNetDecoder on this CPU (the peer of bench_model_cpu): one training step (forward,
cross-entropy, backward, AdamW) of the PERFORMANCE.md model and recurrent decoding at batch 1, so the two
can be compared in one sitting on the same machine. torchscale is not part of this repository:
    /usr/bin/python3 bench/torchscale_cpu_bench.py <torchscale checkout> [threads]
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from make_torchscale_golden import import_torchscale  # noqa: E402

import torch  # noqa: E402


def model(RetNetConfig, RetNetDecoder, heads, chunk, chunkwise):
    cfg = RetNetConfig(decoder_embed_dim=512, decoder_value_embed_dim=1024, decoder_retention_heads=heads,
                       decoder_ffn_embed_dim=1024, decoder_layers=4, vocab_size=256,
                       chunkwise_recurrent=chunkwise, recurrent_chunk_size=chunk)
    embed = torch.nn.Embedding(256, 512)
    return RetNetDecoder(cfg, embed_tokens=embed)


def train_step_tokens_per_s(RetNetConfig, RetNetDecoder, B, T, heads, chunk, chunkwise, reps=3):
    torch.manual_seed(0)
    m = model(RetNetConfig, RetNetDecoder, heads, chunk, chunkwise)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (B, T))
    y = torch.randint(0, 256, (B, T))
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        logits, _ = m(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    best = min(times[1:])
    return B * T / best


def decode_tokens_per_s(RetNetConfig, RetNetDecoder, heads, steps=64):
    torch.manual_seed(0)
    m = model(RetNetConfig, RetNetDecoder, heads, 512, False).eval()
    state = {}
    tokens = torch.randint(0, 256, (1, steps + 8))
    with torch.no_grad():
        for n in range(8):
            m(tokens[:, : n + 1], incremental_state=state)
        t0 = time.perf_counter()
        for n in range(8, steps + 8):
            m(tokens[:, : n + 1], incremental_state=state)
        return steps / (time.perf_counter() - t0)


def main():
    RetNetConfig, RetNetDecoder = import_torchscale(sys.argv[1])
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} threads, sgemm 2048^3:", end=" ")
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    print(f"{5 * 2 * 2048 ** 3 / (time.perf_counter() - t0) / 1e9:.1f} GFLOP/s")
    for B, T, H, C in ((1, 2048, 2, 256), (4, 1024, 4, 128)):
        for chunkwise in (False, True):
            tps = train_step_tokens_per_s(RetNetConfig, RetNetDecoder, B, T, H, C, chunkwise)
            print(f"train B{B} T{T} H{H} {'chunkwise C' + str(C) if chunkwise else 'parallel'}: {tps:.0f} tokens/s")
    print(f"decode batch 1 (2 heads): {decode_tokens_per_s(RetNetConfig, RetNetDecoder, 2):.1f} tokens/s")


if __name__ == "__main__":
    main()
