#pragma once
// Shared by the NCCL tests: a small model and batches that are a pure function of the step.
#include <cstdint>
#include <random>
#include <vector>

#include "retnet/cuda.cuh"

namespace retnet_test {

inline retnet::ModelConfig nccl_model_config() {
  retnet::ModelConfig c;
  c.vocab_size = 64;
  c.decoder_embed_dim = 128;  // heads of 64, the GPU retention's smallest
  c.decoder_value_embed_dim = 128;
  c.decoder_retention_heads = 2;
  c.decoder_ffn_embed_dim = 128;
  c.decoder_layers = 3;
  c.recurrent_chunk_size = 16;
  c.activation_fn = "swish";
  return c;
}

// Rows [first, first + rows) of step s's global batch of `global_rows` rows of `length` tokens (inputs, targets).
inline void nccl_batch(int64_t step, int64_t global_rows, int64_t length, int64_t first, int64_t rows,
                       std::vector<int64_t>& x, std::vector<int64_t>& y) {
  std::mt19937_64 gen(1000 + static_cast<uint64_t>(step));
  std::uniform_int_distribution<int64_t> tok(0, 15);  // a small alphabet: the model learns quickly
  std::vector<int64_t> all(static_cast<size_t>(global_rows * (length + 1)));
  for (auto& v : all) v = tok(gen);
  x.assign(static_cast<size_t>(rows * length), 0);
  y.assign(x.size(), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < length; ++t) {
      const size_t src = static_cast<size_t>((first + r) * (length + 1) + t), dst = static_cast<size_t>(r * length + t);
      x[dst] = all[src];
      y[dst] = all[src + 1];
    }
}

}  // namespace retnet_test
