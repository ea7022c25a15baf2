#pragma once
// ModelConfig <-> JSON with torchscale's RetNetConfig field names.
//
// Needs nlohmann_json: link nlohmann_json::nlohmann_json into every program that includes this header. The
// retnet target itself does not depend on it, so retnet/retnet.hpp does not include this header; include it
// explicitly.
//
// Reading accepts torchscale's own dictionaries (RetNetConfig.__dict__ dumped as JSON, as
// scripts/make_torchscale_golden.py writes them):
//   * fields of ModelConfig are read with type checks (a wrong type or value is a retnet::Error naming the field);
//     null means "use the default" (as RetNetConfig.override treats None);
//   * the dropout rates (dropout, activation_dropout, drop_path_rate) are read (training only; absent means 0);
//   * torchscale fields that do not change the model or that this library does not need (fsdp,
//     chunkwise_recurrent, max_target_positions, ...) are accepted and reported in ConfigReport::ignored;
//   * torchscale features that change the model and are not supported (deepnorm, multiway, MoE layers,
//     no_output_layer) are errors when switched on;
//   * any other field is reported in ConfigReport::unknown.
// Sizes are bounded (ConfigLimits) before anything is allocated: a configuration claiming dim 2^40 or an
// estimated parameter count past 2^36 is an error, not an attempt to allocate it.
// Writing produces every RetNetConfig field (so RetNetConfig(**json) rebuilds the model in Python) plus this
// library's extensions (ffn_type, norm_type, decay_schedule, decays, retention_normalization) when they are
// not the defaults.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "retnet/core/error.hpp"
#include "retnet/core/tensor.hpp"
#include "retnet/io/safetensors.hpp"  // open_regular_file, pread_all
#include "retnet/nn/config.hpp"

namespace retnet::io {

struct ConfigReport {
  std::vector<std::string> ignored;  // known torchscale fields without effect here
  std::vector<std::string> unknown;  // fields this library does not know
};

namespace detail {

inline const std::set<std::string>& torchscale_ignored_fields() {
  static const std::set<std::string> s{
      "chunkwise_recurrent",
      "subln",
      "max_target_positions",
      "checkpoint_activations",
      "fsdp",
      "ddp_rank",
      "xpos_rel_pos",
      "xpos_scale_base",
      "encoder_normalize_before",
      "rel_pos_buckets",
      "max_rel_pos",
      "moe_top1_expert",
      "moe_expert_count",
      "moe_gating_use_fp32",
      "moe_eval_capacity_token_fraction",
      "moe_second_expert_policy",
      "moe_normalize_gate_prob_before_dropping",
      "use_xmoe",
  };
  return s;
}

inline std::string type_name(const nlohmann::json& v) { return v.type_name(); }

// Checked, typed reads of a JSON object's fields (absent and null read as nothing), remembering which were asked
// for: the others are reported as ignored (when `ignored` names them) or unknown.
class JsonFields {
 public:
  JsonFields(const nlohmann::json& j, std::string where) : j_(j), where_(std::move(where)) {}
  void mark(const char* name) { handled_.insert(name); }
  const nlohmann::json* find(const char* name) {
    mark(name);
    const auto it = j_.find(name);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  std::optional<int64_t> integer(const char* name) {
    const auto* v = find(name);
    if (!v) return std::nullopt;
    require(v->is_number_integer(), where_, ": field '", name, "' must be an integer, got ", type_name(*v), " ",
            v->dump());
    return v->get<int64_t>();
  }
  std::optional<double> number(const char* name) {
    const auto* v = find(name);
    if (!v) return std::nullopt;
    require(v->is_number(), where_, ": field '", name, "' must be a number, got ", type_name(*v), " ", v->dump());
    return v->get<double>();
  }
  std::optional<bool> boolean(const char* name) {
    const auto* v = find(name);
    if (!v) return std::nullopt;
    require(v->is_boolean(), where_, ": field '", name, "' must be true or false, got ", type_name(*v), " ", v->dump());
    return v->get<bool>();
  }
  std::optional<std::string> string(const char* name) {
    const auto* v = find(name);
    if (!v) return std::nullopt;
    require(v->is_string(), where_, ": field '", name, "' must be a string, got ", type_name(*v), " ", v->dump());
    return v->get<std::string>();
  }
  ConfigReport report(const std::set<std::string>& ignored) const {
    ConfigReport r;
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (handled_.count(it.key())) continue;
      (ignored.count(it.key()) ? r.ignored : r.unknown).push_back(it.key());
    }
    return r;
  }

 private:
  const nlohmann::json& j_;
  std::string where_;
  std::set<std::string> handled_;
};

}  // namespace detail

// Upper bounds on a model configuration's sizes: far above any model this library is meant for, low enough
// that the products below stay in int64 and a hostile file cannot make it allocate terabytes.
struct ConfigLimits {
  static constexpr int64_t max_embed_dim = int64_t{1} << 16;
  static constexpr int64_t max_value_embed_dim = int64_t{1} << 17;
  static constexpr int64_t max_ffn_embed_dim = int64_t{1} << 18;
  static constexpr int64_t max_heads = int64_t{1} << 12;
  static constexpr int64_t max_layers = int64_t{1} << 12;
  static constexpr int64_t max_vocab_size = int64_t{1} << 24;
  static constexpr int64_t max_chunk_size = int64_t{1} << 20;
  static constexpr int64_t max_parameters = int64_t{1} << 36;
  static constexpr int64_t max_file_bytes = int64_t{16} << 20;  // a configuration file
};

// An upper estimate of the parameter count (embedding, output projection, per layer the retention and FFN
// matrices and the norms), in checked arithmetic.
inline int64_t estimated_parameter_count(const ModelConfig& c) {
  const char* what = "estimated_parameter_count";
  const int64_t d = c.decoder_embed_dim, vd = c.decoder_value_embed_dim, f = c.decoder_ffn_embed_dim;
  const int64_t kd = std::max(d, c.decoder_key_embed_dim);
  int64_t layer = checked_mul(2, checked_mul(d, kd, what), what);                    // q, k
  layer = checked_add(layer, checked_mul(3, checked_mul(d, vd, what), what), what);  // v, g, out
  layer = checked_add(layer, checked_mul(3, checked_mul(d, f, what), what), what);   // FFN (GLU: 3 matrices)
  layer = checked_add(layer, checked_add(checked_mul(8, d, what), checked_add(f, vd, what), what), what);
  int64_t n = checked_mul(layer, c.decoder_layers, what);
  n = checked_add(n, checked_mul(2, checked_mul(c.vocab_size, d, what), what), what);
  return checked_add(n, checked_mul(4, d, what), what);
}

// Throws a retnet::Error (prefixed by `where`) when a size is past ConfigLimits. Negative or zero sizes are
// left to ModelConfig::validate.
inline void check_config_limits(const ModelConfig& c, const std::string& where = "config") {
  auto at_most = [&](const char* field, int64_t v, int64_t limit) {
    require(v <= limit, where, ": field '", field, "' = ", v, " exceeds the supported maximum ", limit);
  };
  at_most("decoder_embed_dim", c.decoder_embed_dim, ConfigLimits::max_embed_dim);
  at_most("decoder_key_embed_dim", c.decoder_key_embed_dim, ConfigLimits::max_value_embed_dim);
  at_most("decoder_kv_heads", c.decoder_kv_heads, ConfigLimits::max_heads);
  at_most("decoder_value_embed_dim", c.decoder_value_embed_dim, ConfigLimits::max_value_embed_dim);
  at_most("decoder_ffn_embed_dim", c.decoder_ffn_embed_dim, ConfigLimits::max_ffn_embed_dim);
  at_most("decoder_retention_heads", c.decoder_retention_heads, ConfigLimits::max_heads);
  at_most("decoder_layers", c.decoder_layers, ConfigLimits::max_layers);
  at_most("vocab_size", c.vocab_size, ConfigLimits::max_vocab_size);
  at_most("recurrent_chunk_size", c.recurrent_chunk_size, ConfigLimits::max_chunk_size);
  at_most("decays (count)", static_cast<int64_t>(c.decays.size()), ConfigLimits::max_heads);
  if (c.decoder_embed_dim > 0 && c.decoder_value_embed_dim > 0 && c.decoder_ffn_embed_dim > 0 && c.decoder_layers > 0 &&
      c.vocab_size > 0) {
    const int64_t n = estimated_parameter_count(c);
    require(n <= ConfigLimits::max_parameters, where, ": the model would have about ", n,
            " parameters, more than the supported maximum ", ConfigLimits::max_parameters);
  }
}

// The limits, then validate() (which allocates per head), with errors prefixed by `where`.
inline void checked_config(const ModelConfig& c, const std::string& where) {
  check_config_limits(c, where);
  try {
    c.validate();
  } catch (const Error& e) {
    fail(where, ": ", e.what());
  }
}

// Parses a JSON object into a validated ModelConfig. `report` (optional) receives the ignored/unknown fields.
inline ModelConfig config_from_json(const nlohmann::json& j, ConfigReport* report = nullptr,
                                    const std::string& where = "config") {
  require(j.is_object(), where, ": a model configuration must be a JSON object, got ", detail::type_name(j));
  ModelConfig c;
  detail::JsonFields f(j, where);
  auto field = [&](const char* name) { return f.find(name); };
  auto get_int = [&](const char* name, int64_t& out) { out = f.integer(name).value_or(out); };
  auto get_bool = [&](const char* name, bool& out) { out = f.boolean(name).value_or(out); };
  auto get_double = [&](const char* name, double& out) { out = f.number(name).value_or(out); };
  auto get_string = [&](const char* name, std::string& out) { out = f.string(name).value_or(out); };
  // A torchscale feature we do not implement: allowed only when off.
  auto unsupported_flag = [&](const char* name) {
    bool on = false;
    get_bool(name, on);
    require(!on, where, ": field '", name, "' = true is not supported by this library");
  };

  get_int("decoder_embed_dim", c.decoder_embed_dim);
  get_int("decoder_value_embed_dim", c.decoder_value_embed_dim);
  get_int("decoder_retention_heads", c.decoder_retention_heads);
  get_int("decoder_ffn_embed_dim", c.decoder_ffn_embed_dim);
  get_int("decoder_layers", c.decoder_layers);
  get_int("vocab_size", c.vocab_size);
  get_string("activation_fn", c.activation_fn);
  get_double("layernorm_eps", c.layernorm_eps);
  get_bool("no_scale_embedding", c.no_scale_embedding);
  get_bool("layernorm_embedding", c.layernorm_embedding);
  get_bool("share_decoder_input_output_embed", c.share_decoder_input_output_embed);
  get_int("recurrent_chunk_size", c.recurrent_chunk_size);
  get_bool("decoder_normalize_before", c.decoder_normalize_before);
  get_double("dropout", c.dropout);
  get_double("activation_dropout", c.activation_dropout);
  get_double("drop_path_rate", c.drop_path_rate);
  unsupported_flag("deepnorm");
  unsupported_flag("multiway");
  unsupported_flag("no_output_layer");
  {
    int64_t moe_freq = 0;
    get_int("moe_freq", moe_freq);
    require(moe_freq == 0, where, ": field 'moe_freq' = ", moe_freq, " (mixture-of-experts layers) is not supported");
  }
  // Extensions.
  get_string("ffn_type", c.ffn_type);
  get_string("norm_type", c.norm_type);
  if (const auto* v = field("decay_schedule")) {
    require(v->is_string(), where, ": field 'decay_schedule' must be a string, got ", detail::type_name(*v));
    const std::string s = v->get<std::string>();
    if (s == "torchscale")
      c.decay_schedule = DecaySchedule::torchscale;
    else if (s == "paper")
      c.decay_schedule = DecaySchedule::paper;
    else if (s == "custom")
      c.decay_schedule = DecaySchedule::custom;
    else
      fail(where, ": field 'decay_schedule' = '", s, "' is invalid; expected 'torchscale', 'paper' or 'custom'");
  }
  if (const auto* v = field("decays")) {
    require(v->is_array(), where, ": field 'decays' must be an array of numbers, got ", detail::type_name(*v));
    c.decays.clear();
    for (const auto& x : *v) {
      require(x.is_number(), where, ": field 'decays' must hold numbers, got ", detail::type_name(x), " ", x.dump());
      c.decays.push_back(x.get<double>());
    }
  }
  get_int("decoder_key_embed_dim", c.decoder_key_embed_dim);
  get_int("decoder_kv_heads", c.decoder_kv_heads);
  get_string("rotation", c.rotation);
  get_bool("group_norm_weight", c.group_norm_weight);
  if (const auto* v = field("retention_normalization")) {
    require(v->is_string(), where, ": field 'retention_normalization' must be a string, got ", detail::type_name(*v));
    const std::string s = v->get<std::string>();
    if (s == "torchscale")
      c.retention_normalization = Normalization::torchscale;
    else if (s == "raw")
      c.retention_normalization = Normalization::raw;
    else
      fail(where, ": field 'retention_normalization' = '", s, "' is invalid; expected 'torchscale' or 'raw'");
  }

  checked_config(c, where);
  if (report) *report = f.report(detail::torchscale_ignored_fields());
  return c;
}

inline ModelConfig config_from_json_string(const std::string& text, ConfigReport* report = nullptr,
                                           const std::string& where = "config") {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": invalid JSON: ", e.what());
  }
  return config_from_json(j, report, where);
}

// Reads a configuration file: a regular file of at most ConfigLimits::max_file_bytes.
inline ModelConfig load_config(const std::string& path, ConfigReport* report = nullptr) {
  int64_t size = 0;
  const int fd = detail::open_regular_file(path, "a configuration file (JSON)", size);
  std::string text;
  bool ok = size <= ConfigLimits::max_file_bytes;
  if (ok) {
    text.resize(static_cast<size_t>(size));
    ok = detail::pread_all(fd, text.data(), text.size(), 0);
  }
  ::close(fd);
  require(size <= ConfigLimits::max_file_bytes, path, ": ", size,
          " bytes is too large for a configuration file (at most ", ConfigLimits::max_file_bytes, ")");
  require(ok, path, ": cannot read the configuration file: ", detail::errno_text());
  return config_from_json_string(text, report, path);
}

// Every torchscale RetNetConfig field (unsupported ones at torchscale's defaults) plus non-default extensions.
inline nlohmann::json config_to_json(const ModelConfig& c) {
  c.validate();
  nlohmann::json j = nlohmann::json::object();
  j["decoder_embed_dim"] = c.decoder_embed_dim;
  j["decoder_value_embed_dim"] = c.decoder_value_embed_dim;
  j["decoder_retention_heads"] = c.decoder_retention_heads;
  j["decoder_ffn_embed_dim"] = c.decoder_ffn_embed_dim;
  j["decoder_layers"] = c.decoder_layers;
  j["decoder_normalize_before"] = c.decoder_normalize_before;
  j["activation_fn"] = c.activation_fn;
  j["dropout"] = c.dropout;
  j["drop_path_rate"] = c.drop_path_rate;
  j["activation_dropout"] = c.activation_dropout;
  j["no_scale_embedding"] = c.no_scale_embedding;
  j["layernorm_embedding"] = c.layernorm_embedding;
  j["moe_freq"] = 0;
  j["deepnorm"] = false;
  j["subln"] = true;
  j["multiway"] = false;
  j["share_decoder_input_output_embed"] = c.share_decoder_input_output_embed;
  j["no_output_layer"] = false;
  j["layernorm_eps"] = c.layernorm_eps;
  j["chunkwise_recurrent"] = false;
  j["recurrent_chunk_size"] = c.recurrent_chunk_size;
  j["vocab_size"] = c.vocab_size;
  const ModelConfig d;
  if (c.ffn_type != d.ffn_type) j["ffn_type"] = c.ffn_type;
  if (c.norm_type != d.norm_type) j["norm_type"] = c.norm_type;
  if (c.decay_schedule != DecaySchedule::torchscale) j["decay_schedule"] = to_string(c.decay_schedule);
  if (!c.decays.empty()) j["decays"] = c.decays;
  if (c.retention_normalization != Normalization::torchscale)
    j["retention_normalization"] = to_string(c.retention_normalization);
  if (c.decoder_key_embed_dim != d.decoder_key_embed_dim) j["decoder_key_embed_dim"] = c.decoder_key_embed_dim;
  if (c.decoder_kv_heads != d.decoder_kv_heads) j["decoder_kv_heads"] = c.decoder_kv_heads;
  if (c.rotation != d.rotation) j["rotation"] = c.rotation;
  if (c.group_norm_weight != d.group_norm_weight) j["group_norm_weight"] = c.group_norm_weight;
  return j;
}

// Writes the configuration as indented JSON, atomically (temporary file in the same directory, then rename).
inline void save_config(const ModelConfig& c, const std::string& path) {
  const std::string text = config_to_json(c).dump(1) + "\n";
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    require(out.good(), tmp, ": cannot create the configuration file");
    out << text;
    out.flush();
    require(out.good(), tmp, ": write failed");
  }
  const int fd = ::open(tmp.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail(path, ": cannot rename the temporary configuration file into place");
  }
}

}  // namespace retnet::io
