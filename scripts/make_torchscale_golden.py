#!/usr/bin/env python3
"""Golden files from microsoft/torchscale's RetNetDecoder, and the reverse check.

Needs PyTorch (Debian's python3-torch 1.13 works) and numpy; torchscale is used from a checkout, not installed.
The imports that torchscale's RetNet code does not need (fairscale, timm, einops, ...) get stand-ins here.

  make_torchscale_golden.py golden TORCHSCALE_DIR OUT_DIR
      Builds small RetNetDecoders with fixed-seed random weights and writes, per variant V:
        V.config.json        RetNetConfig.__dict__ (torchscale field names)
        V.safetensors        RetNetDecoder.state_dict() (F32, as torchscale checkpoints are)
        V.state.safetensors  the incremental state after all tokens: layers.{i}.prev_key_value [B,H,dv,dk],
                             layers.{i}.scale [H]
        V.logits_{parallel,chunkwise,recurrent}.npy   float64 logits [B,T,V], torchscale run in double
      and tokens.npy (int64 [B,T]).

  make_torchscale_golden.py check TORCHSCALE_DIR --config C.json --weights M.safetensors --tokens T.npy
                                  --logits L.npy --mode parallel|chunkwise|recurrent
      Loads a checkpoint written elsewhere (by the C++ library) into torchscale (load_state_dict, strict) and
      prints the largest absolute and relative difference between torchscale's logits and L.npy.
"""
import argparse
import json
import math
import struct
import sys
import types

import numpy as np


# ---- stand-ins for modules torchscale imports but RetNet does not use -------------------------------------
def install_stand_ins():
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    def unused(*args, **kwargs):
        raise RuntimeError("stand-in module: not available in this environment")

    if "fairscale" not in sys.modules:
        module("fairscale")
        module("fairscale.nn", checkpoint_wrapper=unused, wrap=unused)
    if "timm" not in sys.modules:
        module("timm")
        module("timm.models")
        module("timm.models.layers", drop_path=unused)
    if "einops" not in sys.modules:
        module("einops", rearrange=unused, repeat=unused)


def import_torchscale(path):
    install_stand_ins()
    sys.path.insert(0, path)
    from torchscale.architecture.config import RetNetConfig
    from torchscale.architecture.retnet import RetNetDecoder

    return RetNetConfig, RetNetDecoder


def compute_in_input_precision():
    """torchscale's RMSNorm and GLU activation cast to float32 (x.float()) even in a double model. For goldens
    precise to double rounding, run the same formulas in the input's precision."""
    import torch
    from torchscale.component import gate_linear_unit, rms_norm

    def rms_forward(self, x):
        out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return out * self.weight if self.weight is not None else out

    def glu_forward(self, x):
        shape = x.shape
        x = x.reshape(-1, x.size(-1))
        g = self.gate(x)
        x = self.activation_fn(self.fc1(x)) * g
        return self.fc2(x).view(shape)

    rms_norm.RMSNorm.forward = rms_forward
    gate_linear_unit.GLU.forward = glu_forward


# ---- a tiny safetensors reader and writer ---------------------------------------------------------------
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def write_safetensors(path, tensors, metadata=None):
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    blobs, offset = [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dtype = {np.dtype(v): k for k, v in DTYPES.items()}[arr.dtype]
        data = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        if info["dtype"] == "BF16":
            u = np.frombuffer(data[b:e], dtype=np.uint16).astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(data[b:e], dtype=DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).copy()
    return out


# ---- torchscale model construction and the three ways of running it --------------------------------------
VARIANTS = {
    # GeGLU FFN, untied output projection, unscaled embeddings: torchscale's RetNetConfig defaults.
    "gelu": dict(
        decoder_embed_dim=16,
        decoder_value_embed_dim=24,
        decoder_retention_heads=2,
        decoder_ffn_embed_dim=32,
        decoder_layers=2,
        vocab_size=40,
        recurrent_chunk_size=4,
        activation_fn="gelu",
    ),
    # SwiGLU, tied embeddings, sqrt(d)-scaled embeddings and an embedding RMSNorm, 4 heads (4 decays).
    "swish": dict(
        decoder_embed_dim=16,
        decoder_value_embed_dim=32,
        decoder_retention_heads=4,
        decoder_ffn_embed_dim=24,
        decoder_layers=2,
        vocab_size=40,
        recurrent_chunk_size=4,
        activation_fn="swish",
        share_decoder_input_output_embed=True,
        no_scale_embedding=False,
        layernorm_embedding=True,
    ),
}


def exact_buffers(torch, dec, args):
    """After .double(): recompute RetNetRelPos' float32-computed buffers in double, so the goldens are exact."""
    n = args.decoder_embed_dim // args.decoder_retention_heads // 2
    angle = 1.0 / (10000 ** torch.linspace(0, 1, n, dtype=torch.float64))
    dec.retnet_rel_pos.angle = angle.unsqueeze(-1).repeat(1, 2).flatten()
    heads = torch.arange(args.decoder_retention_heads, dtype=torch.float64)
    dec.retnet_rel_pos.decay = torch.log(1 - 2 ** (-5 - heads))


def build(torch, RetNetConfig, RetNetDecoder, cfg_dict):
    args = RetNetConfig(**cfg_dict)
    embed = torch.nn.Embedding(args.vocab_size, args.decoder_embed_dim)
    dec = RetNetDecoder(args, embed_tokens=embed)
    return args, dec


def config_json(args):
    return {k: v for k, v in sorted(args.__dict__.items()) if isinstance(v, (int, float, str, bool, type(None)))}


def run_parallel(torch, dec, tokens):
    dec.chunkwise_recurrent = False
    with torch.no_grad():
        return dec(tokens)[0]


def run_chunkwise(torch, dec, tokens):
    dec.chunkwise_recurrent = True
    try:
        with torch.no_grad():
            return dec(tokens)[0]
    finally:
        dec.chunkwise_recurrent = False


def run_recurrent(torch, dec, tokens):
    """torchscale's incremental decoding: the whole prefix is passed, the decoder embeds only the last token."""
    dec.chunkwise_recurrent = False
    state = {}
    outs = []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            out = dec(tokens[:, : t + 1], incremental_state=state)[0]
            outs.append(out[:, -1])
    return torch.stack(outs, dim=1), state


def golden(ts_path, out_dir):
    import os

    import torch

    RetNetConfig, RetNetDecoder = import_torchscale(ts_path)
    compute_in_input_precision()
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(20240611)
    B, T = 2, 11  # T is not a multiple of the chunk size 4
    tokens = rng.integers(0, 40, size=(B, T)).astype(np.int64)
    np.save(os.path.join(out_dir, "tokens.npy"), tokens)
    tok = torch.from_numpy(tokens)

    for vi, (name, cfg) in enumerate(VARIANTS.items()):
        torch.manual_seed(1000 + vi)
        args, dec = build(torch, RetNetConfig, RetNetDecoder, cfg)
        with torch.no_grad():
            for pname, p in dec.named_parameters():
                if pname.endswith("layer_norm.weight") or "layernorm_embedding" in pname:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))  # exercise the norm weights
                elif ".retention.q_proj." in pname or ".retention.k_proj." in pname:
                    p.mul_(4.0)  # bigger scores so that the score normalisers (|R| sums > 1) take effect
            # the stored weights are float32; torchscale runs in double from those rounded values
            for p in dec.parameters():
                p.copy_(p.float().double())
        sd = {k: v.detach().float().numpy() for k, v in dec.state_dict().items()}
        write_safetensors(os.path.join(out_dir, f"{name}.safetensors"), sd, {"format": "pt"})
        with open(os.path.join(out_dir, f"{name}.config.json"), "w") as f:
            json.dump(config_json(args), f, indent=1, sort_keys=True)
            f.write("\n")

        dec = dec.double().eval()
        exact_buffers(torch, dec, args)
        par = run_parallel(torch, dec, tok)
        chk = run_chunkwise(torch, dec, tok)
        rec, state = run_recurrent(torch, dec, tok)
        for mode, logits in (("parallel", par), ("chunkwise", chk), ("recurrent", rec)):
            np.save(os.path.join(out_dir, f"{name}.logits_{mode}.npy"), logits.numpy().astype(np.float64))
        st = {}
        for i in range(args.decoder_layers):
            st[f"layers.{i}.prev_key_value"] = state[i]["prev_key_value"].numpy()
            st[f"layers.{i}.scale"] = state[i]["scale"].numpy()
        write_safetensors(os.path.join(out_dir, f"{name}.state.safetensors"), st)
        d_pc = (par - chk).abs().max().item()
        d_pr = (par - rec).abs().max().item()
        print(f"{name}: logits {tuple(par.shape)}, |parallel|max {par.abs().max().item():.3f}, "
              f"parallel-chunkwise {d_pc:.3e}, parallel-recurrent {d_pr:.3e}")


def check(ts_path, a):
    import torch

    RetNetConfig, RetNetDecoder = import_torchscale(ts_path)
    compute_in_input_precision()
    with open(a.config) as f:
        cfg = json.load(f)
    known = set(RetNetConfig().__dict__.keys())
    cfg = {k: v for k, v in cfg.items() if k in known}
    args, dec = build(torch, RetNetConfig, RetNetDecoder, cfg)
    # names with '/' are other groups of a training checkpoint (e.g. AdamW moments "adam.m/...")
    sd = {k: torch.from_numpy(v) for k, v in read_safetensors(a.weights).items() if "/" not in k}
    if args.share_decoder_input_output_embed and "output_projection.weight" not in sd:
        sd["output_projection.weight"] = sd["embed_tokens.weight"]
    for buf in ("retnet_rel_pos.angle", "retnet_rel_pos.decay"):
        if buf not in sd:  # files written by io::save_params alone lack torchscale's buffers
            print(f"note: {buf} not in the checkpoint; using torchscale's own")
            sd[buf] = dec.state_dict()[buf]
    missing, unexpected = dec.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    assert not missing and not unexpected
    dec = dec.double().eval()
    # the loaded buffers hold our decays in float32; recompute torchscale's in double when they are the default
    default_decay = torch.log(1 - 2 ** (-5 - torch.arange(args.decoder_retention_heads, dtype=torch.float64)))
    if torch.allclose(dec.retnet_rel_pos.decay, default_decay, rtol=1e-6, atol=1e-7):
        exact_buffers(torch, dec, args)
    tok = torch.from_numpy(np.load(a.tokens))
    if a.mode == "parallel":
        ref = run_parallel(torch, dec, tok)
    elif a.mode == "chunkwise":
        ref = run_chunkwise(torch, dec, tok)
    else:
        ref = run_recurrent(torch, dec, tok)[0]
    ours = torch.from_numpy(np.load(a.logits).astype(np.float64))
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = (ours - ref).abs().max().item()
    rel = diff / max(ref.abs().max().item(), 1e-30)
    print(f"{a.mode}: max |torchscale - ours| = {diff:.3e} (relative to max |logit| {rel:.3e}), "
          f"logits {tuple(ref.shape)}")
    return diff, rel


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("golden")
    g.add_argument("torchscale")
    g.add_argument("out_dir")
    c = sub.add_parser("check")
    c.add_argument("torchscale")
    c.add_argument("--config", required=True)
    c.add_argument("--weights", required=True)
    c.add_argument("--tokens", required=True)
    c.add_argument("--logits", required=True)
    c.add_argument("--mode", choices=["parallel", "chunkwise", "recurrent"], required=True)
    c.add_argument("--tolerance", type=float, default=None, help="fail when the relative difference is larger")
    a = p.parse_args()
    if a.cmd == "golden":
        golden(a.torchscale, a.out_dir)
    else:
        _, rel = check(a.torchscale, a)
        if a.tolerance is not None and not rel <= a.tolerance:
            sys.exit(f"difference {rel:.3e} exceeds the tolerance {a.tolerance:.1e}")


if __name__ == "__main__":
    main()
