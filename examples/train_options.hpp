#pragma once
// train_lm's settings, shared by the CPU and the CUDA translation units (no CLI11 or Eigen here: the CUDA one is
// compiled by nvcc).
#include <cstdint>
#include <string>

namespace retnet_examples::train_lm {

struct Options {
  std::string data, out = "train_lm_out", resume, prompt = "The ", form = "chunkwise", decay = "cosine", device = "cpu";
  bool do_resume = false;
  bool tf32 = false;                // GPU float products in TF32
  std::string precision = "float";  // GPU storage: float, or bf16 (float gradients, master weights and state)
  int64_t steps = 300, batch = 16, seq = 128, layers = 4, dim = 128, heads = 2, value_dim = 256, ffn = 256, chunk = 64,
          warmup = 30, accum = 1, segment = 0, ckpt_every = 200, eval_every = 100, max_new = 400, top_k = 0;
  int64_t zero = 0;         // ZeRO stage of data-parallel training (0 or 1)
  double bucket_mb = 25.0;  // gradient bucket size of data-parallel training, MiB
  double lr = 3e-3, weight_decay = 0.05, clip = 1.0, temperature = 0.7, top_p = 1.0, dropout = 0.0;
  uint64_t seed = 1234;
};

}  // namespace retnet_examples::train_lm
