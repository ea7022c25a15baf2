#pragma once
// Model weights <-> safetensors, compatible with torchscale's RetNetDecoder.state_dict() in both directions.
//
//   io::load_weights(model, "model.safetensors");   // ours or torchscale's
//   io::save_weights(model, "model.safetensors");   // loads in torchscale with load_state_dict(strict=True)
//
// torchscale's state_dict has entries that are not parameters of our model:
//   * retnet_rel_pos.angle [dk] and retnet_rel_pos.decay [H]: buffers (rotation angles, interleaved, and the
//     log decays). On load they are checked against the configuration (a checkpoint made with other decays or
//     head sizes is rejected); on save they are written from the configuration, so torchscale uses our decays.
//   * output_projection.weight when the embedding is tied (share_decoder_input_output_embed): the same tensor
//     as embed_tokens.weight. On load it must equal embed_tokens.weight; on save it is written as a copy.
// Works with any model type M that has config() (a ModelConfig), param_table() and params() (retnet::Model<T>).
#include <cmath>
#include <string>
#include <vector>

#include "retnet/core/error.hpp"
#include "retnet/core/rotation.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/nn/config.hpp"

namespace retnet::io {

// torchscale's RetNetRelPos buffers for a configuration: angle [dk] (each theta twice) and decay [H] (log gamma).
inline std::vector<float> torchscale_angle_buffer(const ModelConfig& c) {
  std::vector<float> a;
  for (double t : rotation_angles(c.key_dim())) {
    a.push_back(static_cast<float>(t));
    a.push_back(static_cast<float>(t));
  }
  return a;
}
inline std::vector<float> torchscale_decay_buffer(const ModelConfig& c) {
  std::vector<float> d;
  const RetentionConfig rc = c.retention_config();
  for (double g : rc.log_gammas()) d.push_back(static_cast<float>(g));
  return d;
}

template <class M>
void load_weights(M& model, const SafetensorsFile& file) {
  const ModelConfig& c = model.config();
  const ParamTable& table = model.param_table();
  std::vector<std::string> extra;
  auto check_buffer = [&](const std::string& name, const std::vector<float>& want, const char* what) {
    if (!file.contains(name)) return;
    extra.push_back(name);
    const Shape s = file.shape(name);
    require(s == Shape{static_cast<int64_t>(want.size())}, file.path(), ": '", name, "' has shape ", s.to_string(),
            ", but the configuration implies [", want.size(), "] (", what, ")");
    std::vector<double> got(want.size());
    file.read(name, got.data(), s);
    for (size_t i = 0; i < want.size(); ++i)
      require(std::fabs(got[i] - want[i]) <= 1e-5 * std::max(1.0, std::fabs(static_cast<double>(want[i]))), file.path(),
              ": '", name, "'[", i, "] = ", got[i], " differs from the configuration's ", want[i], " (", what,
              "); the checkpoint was made with another configuration");
  };
  check_buffer("retnet_rel_pos.angle", torchscale_angle_buffer(c), "rotation angles");
  check_buffer("retnet_rel_pos.decay", torchscale_decay_buffer(c), "log decays per head");
  const bool tied_copy = table.find("output_projection.weight") == nullptr && file.contains("output_projection.weight");
  if (tied_copy) extra.push_back("output_projection.weight");
  load_params(file, table, model.params(), "", extra);
  if (tied_copy) {
    const ParamInfo& e = table.at("embed_tokens.weight");
    require(file.shape("output_projection.weight") == e.shape, file.path(), ": 'output_projection.weight' has shape ",
            file.shape("output_projection.weight").to_string(), ", expected the tied embedding's ",
            e.shape.to_string());
    std::vector<double> head(static_cast<size_t>(e.numel())), emb(static_cast<size_t>(e.numel()));
    file.read("output_projection.weight", head.data(), e.shape);
    file.read("embed_tokens.weight", emb.data(), e.shape);
    require(head == emb, file.path(),
            ": the configuration ties the output projection to the embedding "
            "(share_decoder_input_output_embed), but 'output_projection.weight' differs from 'embed_tokens.weight'");
  }
}

template <class M>
void load_weights(M& model, const std::string& path) {
  load_weights(model, SafetensorsFile::open(path));
}

// Adds the model's tensors (and torchscale's extra entries, unless torchscale_extras is false) to a writer;
// dtype "" keeps the model's scalar type, or "F32", "F64", "F16", "BF16".
template <class M>
void add_weights(SafetensorsWriter& w, const M& model, const std::string& dtype = "", bool torchscale_extras = true) {
  const ModelConfig& c = model.config();
  const ParamTable& table = model.param_table();
  save_params(w, table, model.params(), "", dtype);
  if (!torchscale_extras) return;
  if (table.find("output_projection.weight") == nullptr) {
    const ParamInfo& e = table.at("embed_tokens.weight");
    if (dtype.empty())
      w.add("output_projection.weight", e.shape, model.params() + e.offset);
    else
      w.add("output_projection.weight", e.shape, model.params() + e.offset, dtype);
  }
  const auto angle = torchscale_angle_buffer(c);
  const auto decay = torchscale_decay_buffer(c);
  w.add("retnet_rel_pos.angle", {static_cast<int64_t>(angle.size())}, angle.data());
  w.add("retnet_rel_pos.decay", {static_cast<int64_t>(decay.size())}, decay.data());
}

template <class M>
void save_weights(const M& model, const std::string& path, const std::string& dtype = "",
                  bool torchscale_extras = true) {
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  add_weights(w, model, dtype, torchscale_extras);
  w.write(path);
}

}  // namespace retnet::io
