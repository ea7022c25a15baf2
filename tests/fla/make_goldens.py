#!/usr/bin/env python3
"""Golden logits from fla itself for tests/io/test_fla_golden.cpp.

    python tests/fla/make_goldens.py --fla /path/to/fla-src --out tests/data/fla

Needs a CUDA GPU (fla's Triton kernels), torch, transformers, einops, triton and safetensors. For each small random
fla RetNet configuration below it writes OUT/<name>/ with config.json and model.safetensors (laid out as fla's
RetNetForCausalLM.save_pretrained writes them, float32 or bf16 storage) and golden.safetensors holding input_ids
[B, T] (I64) and logits [B, T, V] (F32), computed by fla in float32 (the bf16 variants run the bf16-rounded weights in float32).
Products run in full float32 (no TF32 anywhere), and T <= 64 so fla takes its fused recurrent kernel. OUT/manifest.json
lists the fixtures. The whole set stays a few hundred KB.
"""
import argparse
import json
import os
import sys

# Before triton is imported: float32 dots in IEEE float32, not TF32.
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

# name -> RetNetConfig fields; together they cover grouped heads (num_kv_heads), key widths other than hidden_size
# (expand_k), odd value head sizes, tied and untied embeddings, fuse_norm false (attn.g_norm), a derived
# intermediate_size (hidden_ratio) and a given one, and fla's attn modes.
CONFIGS = {
    "plain": dict(hidden_size=24, num_hidden_layers=2, num_heads=2, expand_k=1, expand_v=2, intermediate_size=40,
                  vocab_size=50, tie_word_embeddings=False),
    "grouped": dict(hidden_size=32, num_hidden_layers=2, num_heads=4, num_kv_heads=2, expand_k=0.75, expand_v=1.25,
                    intermediate_size=37, vocab_size=47, tie_word_embeddings=False),
    "mqa_tied": dict(hidden_size=24, num_hidden_layers=2, num_heads=4, num_kv_heads=1, expand_k=2, expand_v=1.5,
                     hidden_ratio=2, vocab_size=41, tie_word_embeddings=True),
    "odd_unfused": dict(hidden_size=20, num_hidden_layers=2, num_heads=2, expand_k=0.6, expand_v=1.3,
                        intermediate_size=33, vocab_size=37, tie_word_embeddings=False, fuse_norm=False,
                        norm_eps=1e-5, attn_mode="fused_recurrent"),
}
BATCH, LENGTH = 2, 40


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fla", required=True, help="directory that contains the fla package (fla-src)")
    ap.add_argument("--out", required=True, help="output directory, e.g. tests/data/fla")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.fla))

    import torch
    from safetensors.torch import save_file

    from fla.models.retnet import RetNetConfig, RetNetForCausalLM

    assert torch.cuda.is_available(), "fla's kernels need a CUDA GPU"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    dev = torch.device("cuda")
    os.makedirs(args.out, exist_ok=True)
    manifest = []
    for i, (name, fields) in enumerate(CONFIGS.items()):
        torch.manual_seed(args.seed + i)
        cfg = RetNetConfig(fuse_cross_entropy=False, **fields)
        model = RetNetForCausalLM(cfg).to(dev, torch.float32).eval()
        # Generic weights: matrices ~ N(0, 1/fan_in) so activations stay O(1), norm weights around 1.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 1.5 / p.shape[1] ** 0.5)
                else:
                    p.uniform_(0.7, 1.3)
            if cfg.tie_word_embeddings:
                assert model.lm_head.weight.data_ptr() == model.model.embeddings.weight.data_ptr()
        ids = torch.randint(0, cfg.vocab_size, (BATCH, LENGTH), device=dev)
        for storage in ("f32", "bf16"):
            fixture = name if storage == "f32" else name + "_bf16"
            out = os.path.join(args.out, fixture)
            if storage == "bf16":
                with torch.no_grad():
                    for p in model.parameters():
                        p.copy_(p.to(torch.bfloat16).to(torch.float32))
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits.float()
            os.makedirs(out, exist_ok=True)
            # config.json through transformers, the weights as save_pretrained writes them (a tied lm_head left out),
            # without save_pretrained itself, whose handling of fla's tied-weight declaration varies by version
            cfg.save_pretrained(out)
            dtype = torch.bfloat16 if storage == "bf16" else torch.float32
            tensors = {k: v.detach().to(dtype).cpu().contiguous() for k, v in model.state_dict().items()
                       if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
            save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
            save_file({"input_ids": ids.cpu().to(torch.int64).contiguous(),
                       "logits": logits.cpu().contiguous()}, os.path.join(out, "golden.safetensors"))
            manifest.append(fixture)
            print(f"{fixture}: logits {tuple(logits.shape)}, max |logit| {logits.abs().max().item():.3f}")
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump({"fixtures": manifest, "batch": BATCH, "length": LENGTH}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
