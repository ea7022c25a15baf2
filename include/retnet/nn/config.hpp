#pragma once
// ModelConfig: a RetNet language model, with torchscale's RetNetConfig field names.
// JSON reading and writing lives in retnet/io/config_json.hpp.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "retnet/core/config.hpp"
#include "retnet/core/error.hpp"

namespace retnet {

struct ModelConfig {
  // torchscale RetNetConfig fields (same names, same meaning).
  int64_t decoder_embed_dim = 768;         // d
  int64_t decoder_value_embed_dim = 1280;  // total value width H * dv
  int64_t decoder_retention_heads = 4;     // H (torchscale's default 3 does not divide 1280)
  int64_t decoder_ffn_embed_dim = 1280;
  int64_t decoder_layers = 12;
  int64_t vocab_size = -1;             // must be set
  std::string activation_fn = "gelu";  // "gelu" (exact, erf) or "swish"
  double layernorm_eps = 1e-6;         // every RMSNorm, including the per-head group norm
  bool no_scale_embedding = true;      // false: embeddings scaled by sqrt(d)
  bool layernorm_embedding = false;    // RMSNorm after the embedding
  bool share_decoder_input_output_embed = false;
  int64_t recurrent_chunk_size = 512;
  bool decoder_normalize_before = true;  // pre-norm; post-norm is not supported
  // Training only (Model::forward_train with a DropoutKey); evaluation and inference ignore them.
  double dropout = 0.0;             // after the embedding, the retention output and fc2
  double activation_dropout = 0.0;  // after the FFN activation (GLU: after the product)
  double drop_path_rate = 0.0;      // stochastic depth of the last layer; layer l: linspace(0, rate, layers)[l]

  // Extensions beyond torchscale (defaults reproduce torchscale).
  std::string ffn_type = "glu";       // "glu" (torchscale) or "mlp" (the paper's fc1 -> gelu -> fc2)
  std::string norm_type = "rmsnorm";  // "rmsnorm" (torchscale) or "layernorm" for the block norms
  DecaySchedule decay_schedule = DecaySchedule::torchscale;
  std::vector<double> decays;  // custom schedule only
  Normalization retention_normalization = Normalization::torchscale;
  // Extensions for fla's RetNet (io/fla_format.hpp); the defaults reproduce torchscale.
  int64_t decoder_key_embed_dim = 0;    // total key width H * dk; 0: decoder_embed_dim (torchscale)
  int64_t decoder_kv_heads = 0;         // heads of k and v, each shared by H / kv consecutive heads; 0: H
  std::string rotation = "torchscale";  // angles: "torchscale" 10000^(-k/(dk/2-1)); "rope" 10000^(-2k/dk) in float32
  bool group_norm_weight = false;       // a learnable weight [dv], shared by the heads, on the retention output norm

  int64_t key_embed_dim() const { return decoder_key_embed_dim > 0 ? decoder_key_embed_dim : decoder_embed_dim; }
  int64_t kv_heads() const { return decoder_kv_heads > 0 ? decoder_kv_heads : decoder_retention_heads; }
  int64_t key_dim() const { return key_embed_dim() / decoder_retention_heads; }
  int64_t value_dim() const { return decoder_value_embed_dim / decoder_retention_heads; }
  bool has_dropout() const { return dropout > 0 || activation_dropout > 0 || drop_path_rate > 0; }

  // Throws retnet::Error naming the first invalid field.
  void validate() const {
    auto positive = [](const char* field, int64_t v) {
      require(v > 0, "ModelConfig: ", field, " = ", v, " is invalid; it must be a positive integer");
    };
    positive("decoder_embed_dim", decoder_embed_dim);
    positive("decoder_value_embed_dim", decoder_value_embed_dim);
    positive("decoder_retention_heads", decoder_retention_heads);
    positive("decoder_ffn_embed_dim", decoder_ffn_embed_dim);
    positive("decoder_layers", decoder_layers);
    positive("vocab_size", vocab_size);
    positive("recurrent_chunk_size", recurrent_chunk_size);
    require(decoder_key_embed_dim >= 0, "ModelConfig: decoder_key_embed_dim = ", decoder_key_embed_dim,
            " is invalid; it must be >= 0 (0: decoder_embed_dim)");
    require(decoder_kv_heads >= 0, "ModelConfig: decoder_kv_heads = ", decoder_kv_heads,
            " is invalid; it must be >= 0 (0: decoder_retention_heads)");
    require(key_embed_dim() % decoder_retention_heads == 0, "ModelConfig: the key width ", key_embed_dim(),
            " (decoder_key_embed_dim, or decoder_embed_dim when 0) is not divisible by decoder_retention_heads = ",
            decoder_retention_heads);
    require(decoder_retention_heads % kv_heads() == 0, "ModelConfig: decoder_kv_heads = ", decoder_kv_heads,
            " does not divide decoder_retention_heads = ", decoder_retention_heads);
    require(rotation == "torchscale" || rotation == "rope", "ModelConfig: rotation = '", rotation,
            "' is invalid; expected 'torchscale' or 'rope'");
    require(decoder_value_embed_dim % decoder_retention_heads == 0,
            "ModelConfig: decoder_value_embed_dim = ", decoder_value_embed_dim,
            " is not divisible by decoder_retention_heads = ", decoder_retention_heads);
    require(key_dim() % 2 == 0, "ModelConfig: key head size (key width / decoder_retention_heads) = ", key_dim(),
            " must be even (rotation acts on pairs)");
    require(activation_fn == "gelu" || activation_fn == "swish", "ModelConfig: activation_fn = '", activation_fn,
            "' is invalid; expected 'gelu' or 'swish'");
    require(ffn_type == "glu" || ffn_type == "mlp", "ModelConfig: ffn_type = '", ffn_type,
            "' is invalid; expected 'glu' or 'mlp'");
    require(norm_type == "rmsnorm" || norm_type == "layernorm", "ModelConfig: norm_type = '", norm_type,
            "' is invalid; expected 'rmsnorm' or 'layernorm'");
    require(std::isfinite(layernorm_eps) && layernorm_eps >= 0, "ModelConfig: layernorm_eps = ", layernorm_eps,
            " is invalid; it must be finite and >= 0");
    auto rate = [](const char* field, double p) {
      require(p >= 0 && p < 1, "ModelConfig: ", field, " = ", p, " is invalid; it must be in [0, 1)");
    };
    rate("dropout", dropout);
    rate("activation_dropout", activation_dropout);
    rate("drop_path_rate", drop_path_rate);
    require(decoder_normalize_before, "ModelConfig: decoder_normalize_before = false (post-norm) is not supported");
    retention_config();  // validates decays
  }

  // The retention op configuration of every layer.
  RetentionConfig retention_config() const {
    RetentionOptions o;
    o.heads = decoder_retention_heads;
    o.key_dim = key_dim();
    o.value_dim = value_dim();
    o.chunk_size = recurrent_chunk_size;
    o.decay_schedule = decay_schedule;
    o.decays = decays;
    o.normalization = retention_normalization;
    o.eps = layernorm_eps;
    return RetentionConfig(o);
  }
};

}  // namespace retnet
