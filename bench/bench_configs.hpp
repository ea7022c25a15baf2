#pragma once
// The model shapes the benchmarks share, by number (the "model" argument of bench_cuda_model and bench_cuda_nccl):
//   0  train_lm's default model (4 layers, d_model 256, value 512, 4 heads, FFN 512, byte vocabulary);
//   1  1.35 B parameters with torchscale's semantics and 16 heads of 128/256 (hidden 2048, 24 layers, SwiGLU 2816,
//      vocabulary 32000);
//   2  fla's RetNet 1.3B (fla-hub/retnet-1.3B-100B) exactly: the same sizes with 8 heads of 256/512 (value heads
//      run as split heads on the GPU), RoPE, no retention normalisers, a group-norm weight, RMSNorm, untied
//      embeddings: 1,351,727,104 parameters.
#include <cstdint>

#include "retnet/nn/config.hpp"

namespace retnet_bench {

inline retnet::ModelConfig model_config(int which) {
  retnet::ModelConfig c;
  c.activation_fn = "swish";
  c.recurrent_chunk_size = 64;
  if (which == 0) {
    c.decoder_embed_dim = 256;
    c.decoder_value_embed_dim = 512;
    c.decoder_retention_heads = 4;
    c.decoder_ffn_embed_dim = 512;
    c.decoder_layers = 4;
    c.vocab_size = 256;
    return c;
  }
  c.decoder_embed_dim = 2048;
  c.decoder_value_embed_dim = 4096;
  c.decoder_ffn_embed_dim = 2816;
  c.decoder_layers = 24;
  c.vocab_size = 32000;
  c.decoder_retention_heads = 16;
  if (which == 2) {  // as io/fla_format.hpp reads fla's config.json
    c.decoder_retention_heads = 8;
    c.decoder_key_embed_dim = 2048;
    c.layernorm_eps = 1e-6;
    c.no_scale_embedding = true;
    c.layernorm_embedding = false;
    c.share_decoder_input_output_embed = false;
    c.ffn_type = "glu";
    c.norm_type = "rmsnorm";
    c.retention_normalization = retnet::Normalization::raw;
    c.rotation = "rope";
    c.group_norm_weight = true;
  }
  return c;
}

}  // namespace retnet_bench
