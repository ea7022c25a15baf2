#pragma once
// fla's RetNet (flash-linear-attention's RetNetForCausalLM, the fla-hub checkpoints) <-> Model<T>.
//
//   auto info = io::load_fla_config("DIR/config.json");     // fla's RetNetConfig fields -> ModelConfig
//   Model<float> model(info.config);
//   io::load_fla_weights(model, "DIR", info);                // model.safetensors or a sharded index
//   io::save_fla(model, "OUT");                              // config.json + model.safetensors fla loads
//
// Needs nlohmann_json (as io/config_json.hpp).
//
// What fla computes, and how ModelConfig expresses it (facts of fla/models/retnet and
// fla/layers/multiscale_retention.py):
//   * widths: key H·dk = int(hidden_size · expand_k), value H·dv = int(hidden_size · expand_v)
//     (decoder_key_embed_dim, decoder_value_embed_dim); num_kv_heads grouped k/v heads (decoder_kv_heads), query
//     head h using k/v head h / (H / kv).
//   * rotation: RoPE with theta_k = 10000^(-2k/dk) and float32 angles, pairs (k, k + dk/2) (rotation = "rope");
//     q_proj and k_proj rows are reordered per head on load (and back on save) so that the interleaved pairs of
//     this library rotate the same coordinates: row 2k <- fla row k, row 2k+1 <- fla row k + dk/2. Dot products
//     q·k, hence every output, are unchanged; the recurrent state holds its key rows in this order.
//   * retention: decays 1 - 2^(-5-h) (torchscale's), scores scaled by dk^-½ (fla scales q, this library k: the
//     same product), no normalisers (retention_normalization = raw).
//   * output: RMSNorm of each head's values times a weight [dv] shared by the heads (g_norm_swish_gate, or
//     g_norm when fuse_norm is false), times swish(g_proj x) (group_norm_weight); then o_proj.
//   * FFN: down(swish(gate_proj x) ⊙ up_proj x) = our fc2(act(fc1 x) ⊙ gate x) with fc1 = gate_proj,
//     gate = up_proj, fc2 = down_proj; intermediate_size, when absent, is 256·ceil(int(hidden·hidden_ratio·2/3)/256)
//     with hidden_ratio 2 when absent (RetNetConfig's default) and 4 when null (GatedMLP's).
//   * norms: RMSNorm with weight, eps norm_eps everywhere (layernorm_eps); embeddings unscaled; lm_head tied to the
//     embedding with tie_word_embeddings.
// Refused, with an error naming the field: use_short_conv, feature_map, attn (hybrid attention layers),
// attnres_block_size, use_output_gate = false, elementwise_affine other than true, hidden_act other than "swish"
// (fla's GatedMLP accepts only swish and powlu, and powlu has no gate function), model_type other than "retnet".
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "retnet/core/error.hpp"
#include "retnet/io/config_json.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/nn/config.hpp"

namespace retnet::io {

struct FlaConfig {
  ModelConfig config;
  bool fuse_norm = true;  // names the output norm's weight g_norm_swish_gate (true) or g_norm (false)
  int64_t bos_token_id = 1, eos_token_id = 2;
  ConfigReport report;  // fields without effect here (ignored) and fields this library does not know (unknown)
};

namespace fla_detail {

inline const std::set<std::string>& ignored_fields() {
  static const std::set<std::string> s{"attn_mode",
                                       "max_position_embeddings",
                                       "use_cache",
                                       "initializer_range",
                                       "fuse_swiglu",
                                       "fuse_cross_entropy",
                                       "fuse_linear_cross_entropy",
                                       "use_l2warp",
                                       "conv_size",
                                       "pad_token_id",
                                       "architectures",
                                       "torch_dtype",
                                       "transformers_version",
                                       "_name_or_path",
                                       "auto_map",
                                       "share_conv_kernel",
                                       "output_attentions",
                                       "output_hidden_states",
                                       "return_dict",
                                       "dtype"};
  return s;
}

// fla's int(hidden · ratio · 2 / 3) rounded up to a multiple of 256, in Python's float arithmetic.
inline int64_t derived_intermediate_size(int64_t hidden, double ratio) {
  const double x = static_cast<double>(hidden) * ratio * 2.0 / 3.0;
  require(std::isfinite(x) && x > 0 && x < 9e15, "fla config: hidden_size · hidden_ratio = ", x, " is invalid");
  const int64_t i = static_cast<int64_t>(x);
  return 256 * ((i + 255) / 256);
}

// Python's int(hidden · expand) for a key or value width.
inline int64_t expanded(int64_t hidden, double expand, const char* field, const std::string& where) {
  const double x = static_cast<double>(hidden) * expand;
  require(std::isfinite(expand) && expand > 0 && x >= 1 && x < 9e15, where, ": field '", field, "' = ", expand,
          " is invalid; hidden_size · ", field, " must be a positive width");
  return static_cast<int64_t>(x);
}

// Rows of a [heads·dk, cols] projection between fla's order (pairs k, k + dk/2) and ours (pairs 2k, 2k+1).
template <class T>
void reorder_rotary_rows(T* w, int64_t heads, int64_t dk, int64_t cols, bool to_fla) {
  const int64_t half = dk / 2;
  std::vector<T> block(static_cast<size_t>(dk * cols));
  for (int64_t h = 0; h < heads; ++h) {
    T* base = w + h * dk * cols;
    std::copy(base, base + dk * cols, block.begin());
    for (int64_t k = 0; k < half; ++k)
      for (int64_t two = 0; two < 2; ++two) {
        const int64_t ours = 2 * k + two, theirs = k + two * half;
        const int64_t dst = to_fla ? theirs : ours, src = to_fla ? ours : theirs;
        std::copy_n(block.begin() + src * cols, cols, base + dst * cols);
      }
  }
}

inline nlohmann::json read_json_file(const std::string& path, const char* what) {
  int64_t size = 0;
  const int fd = detail::open_regular_file(path, what, size);
  std::string text;
  bool ok = size <= ConfigLimits::max_file_bytes;
  if (ok) {
    text.resize(static_cast<size_t>(size));
    ok = detail::pread_all(fd, text.data(), text.size(), 0);
  }
  ::close(fd);
  require(size <= ConfigLimits::max_file_bytes, path, ": ", size, " bytes is too large for ", what);
  require(ok, path, ": cannot read ", what, ": ", detail::errno_text());
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
}

}  // namespace fla_detail

// True when a JSON configuration is fla's RetNetConfig (model_type "retnet", or fla's field names without it).
inline bool is_fla_config(const nlohmann::json& j) {
  if (!j.is_object()) return false;
  auto mt = j.find("model_type");
  if (mt != j.end() && mt->is_string()) return mt->get<std::string>() == "retnet";
  return j.contains("hidden_size") && j.contains("num_heads") && !j.contains("decoder_embed_dim");
}

// fla's RetNetConfig (as config.json holds it) -> a validated ModelConfig and what else the file says.
inline FlaConfig fla_config_from_json(const nlohmann::json& j, const std::string& where = "config") {
  require(j.is_object(), where, ": a model configuration must be a JSON object, got ", j.type_name());
  FlaConfig out;
  detail::JsonFields f(j, where);
  auto field = [&](const char* name) { return f.find(name); };
  auto get_int = [&](const char* name, int64_t def) { return f.integer(name).value_or(def); };
  auto get_double = [&](const char* name, double def) { return f.number(name).value_or(def); };
  auto get_bool = [&](const char* name, bool def) { return f.boolean(name).value_or(def); };
  auto get_string = [&](const char* name, std::string def) { return f.string(name).value_or(std::move(def)); };
  // Features that change the model and that this library does not implement: present only when off.
  auto must_be_null = [&](const char* name, const char* what) {
    const auto* v = field(name);
    require(v == nullptr, where, ": field '", name, "' = ", v ? v->dump() : "", " (", what,
            ") is not supported; only null is");
  };

  const std::string model_type = get_string("model_type", "retnet");
  require(model_type == "retnet", where, ": field 'model_type' = '", model_type, "' is not fla's RetNet ('retnet')");
  const std::string mode = get_string("attn_mode", "chunk");
  require(mode == "chunk" || mode == "fused_chunk" || mode == "parallel" || mode == "fused_recurrent", where,
          ": field 'attn_mode' = '", mode, "' is invalid; expected chunk, fused_chunk, parallel or fused_recurrent");
  require(!get_bool("use_short_conv", false), where,
          ": field 'use_short_conv' = true (short convolutions) is not supported");
  must_be_null("feature_map", "a feature map on q and k");
  must_be_null("attn", "hybrid attention layers");
  must_be_null("attnres_block_size", "attention residuals");
  require(get_bool("use_output_gate", true), where,
          ": field 'use_output_gate' = false (no output gate) is not supported");
  {
    // absent means fla's default (true); null, like false, means no weight
    f.mark("elementwise_affine");
    const auto it = j.find("elementwise_affine");
    require(it == j.end() || (it->is_boolean() && it->get<bool>()), where,
            ": field 'elementwise_affine' = ", it == j.end() ? "" : it->dump(),
            " is not supported; only true (a group-norm weight) is");
  }
  const std::string act = get_string("hidden_act", "swish");
  require(act == "swish", where, ": field 'hidden_act' = '", act,
          "' is not supported; only 'swish' (fla's GatedMLP and output gate)");
  out.fuse_norm = get_bool("fuse_norm", true);

  ModelConfig& c = out.config;
  const int64_t hidden = get_int("hidden_size", 2048);
  const int64_t heads = get_int("num_heads", 8);
  const int64_t kv = get_int("num_kv_heads", heads);
  require(hidden > 0, where, ": field 'hidden_size' = ", hidden, " must be positive");
  require(heads > 0, where, ": field 'num_heads' = ", heads, " must be positive");
  require(kv > 0 && heads % kv == 0, where, ": field 'num_kv_heads' = ", kv, " must divide num_heads = ", heads);
  const int64_t key = fla_detail::expanded(hidden, get_double("expand_k", 1.0), "expand_k", where);
  const int64_t value = fla_detail::expanded(hidden, get_double("expand_v", 2.0), "expand_v", where);
  require(key % heads == 0, where, ": the key width int(hidden_size · expand_k) = ", key,
          " is not divisible by num_heads = ", heads);
  require(value % heads == 0, where, ": the value width int(hidden_size · expand_v) = ", value,
          " is not divisible by num_heads = ", heads);
  require((key / heads) % 2 == 0 && key / heads <= 256, where, ": the key head size ", key / heads,
          " (hidden_size · expand_k / num_heads) must be even and at most 256, as fla's rotary embedding needs");
  int64_t ffn = get_int("intermediate_size", 0);
  {
    // absent: RetNetConfig's default 2; null: GatedMLP's 4
    const auto* r = field("hidden_ratio");
    double ratio = j.contains("hidden_ratio") ? 4.0 : 2.0;
    if (r) {
      require(r->is_number(), where, ": field 'hidden_ratio' must be a number, got ", r->type_name());
      ratio = r->get<double>();
    }
    if (ffn == 0) ffn = fla_detail::derived_intermediate_size(hidden, ratio);
  }
  require(ffn > 0, where, ": field 'intermediate_size' = ", ffn, " must be positive");

  c.decoder_embed_dim = hidden;
  c.decoder_key_embed_dim = key;
  c.decoder_value_embed_dim = value;
  c.decoder_retention_heads = heads;
  c.decoder_kv_heads = kv;
  c.decoder_ffn_embed_dim = ffn;
  c.decoder_layers = get_int("num_hidden_layers", 24);
  c.vocab_size = get_int("vocab_size", 32000);
  c.activation_fn = "swish";
  c.layernorm_eps = get_double("norm_eps", 1e-6);
  c.no_scale_embedding = true;
  c.layernorm_embedding = false;
  c.share_decoder_input_output_embed = get_bool("tie_word_embeddings", false);
  c.recurrent_chunk_size = 64;  // fla's chunk size; any size gives the same outputs
  c.ffn_type = "glu";
  c.norm_type = "rmsnorm";
  c.decay_schedule = DecaySchedule::torchscale;
  c.retention_normalization = Normalization::raw;
  c.rotation = "rope";
  c.group_norm_weight = true;
  out.bos_token_id = get_int("bos_token_id", 1);
  out.eos_token_id = get_int("eos_token_id", 2);

  out.report = f.report(fla_detail::ignored_fields());
  checked_config(c, where);
  return out;
}

inline FlaConfig load_fla_config(const std::string& path) {
  return fla_config_from_json(fla_detail::read_json_file(path, "a configuration file (JSON)"), path);
}

// True when `dir` is a directory whose config.json is fla's RetNetConfig.
inline bool is_fla_model_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || !fs::is_regular_file(fs::path(dir) / "config.json", ec)) return false;
  try {
    return is_fla_config(fla_detail::read_json_file((fs::path(dir) / "config.json").string(), "config.json"));
  } catch (const Error&) {
    return false;
  }
}

// A ModelConfig as fla's config.json; throws naming the first field fla cannot express.
inline nlohmann::json fla_config_to_json(const ModelConfig& c, int64_t bos = 1, int64_t eos = 2) {
  c.validate();
  auto need = [](bool ok, const char* field, const std::string& got, const char* want) {
    require(ok, "fla format: ModelConfig::", field, " = ", got, " cannot be expressed; fla needs ", want);
  };
  need(c.rotation == "rope", "rotation", c.rotation, "rope");
  need(c.group_norm_weight, "group_norm_weight", "false", "true");
  need(c.retention_normalization == Normalization::raw, "retention_normalization", to_string(c.retention_normalization),
       "raw");
  need(c.decay_schedule == DecaySchedule::torchscale, "decay_schedule", to_string(c.decay_schedule), "torchscale");
  need(c.activation_fn == "swish", "activation_fn", c.activation_fn, "swish");
  need(c.ffn_type == "glu", "ffn_type", c.ffn_type, "glu");
  need(c.norm_type == "rmsnorm", "norm_type", c.norm_type, "rmsnorm");
  need(!c.layernorm_embedding, "layernorm_embedding", "true", "false");
  need(c.no_scale_embedding, "no_scale_embedding", "false", "true");
  need(c.key_dim() <= 256, "key head size", std::to_string(c.key_dim()), "at most 256");
  const int64_t d = c.decoder_embed_dim;
  const double ek = static_cast<double>(c.key_embed_dim()) / static_cast<double>(d);
  const double ev = static_cast<double>(c.decoder_value_embed_dim) / static_cast<double>(d);
  need(fla_detail::expanded(d, ek, "expand_k", "fla format") == c.key_embed_dim(), "decoder_key_embed_dim",
       std::to_string(c.key_embed_dim()), "int(hidden_size · expand_k) for a float expand_k");
  need(fla_detail::expanded(d, ev, "expand_v", "fla format") == c.decoder_value_embed_dim, "decoder_value_embed_dim",
       std::to_string(c.decoder_value_embed_dim), "int(hidden_size · expand_v) for a float expand_v");
  nlohmann::json j = nlohmann::json::object();
  j["model_type"] = "retnet";
  j["architectures"] = nlohmann::json::array({"RetNetForCausalLM"});
  j["attn_mode"] = "chunk";
  j["hidden_size"] = d;
  j["expand_k"] = ek;
  j["expand_v"] = ev;
  j["hidden_ratio"] = 4;
  j["intermediate_size"] = c.decoder_ffn_embed_dim;
  j["num_hidden_layers"] = c.decoder_layers;
  j["num_heads"] = c.decoder_retention_heads;
  j["num_kv_heads"] = c.kv_heads();
  j["feature_map"] = nullptr;
  j["hidden_act"] = "swish";
  j["use_short_conv"] = false;
  j["use_output_gate"] = true;
  j["elementwise_affine"] = true;
  j["norm_eps"] = c.layernorm_eps;
  j["attn"] = nullptr;
  j["fuse_norm"] = true;
  j["tie_word_embeddings"] = c.share_decoder_input_output_embed;
  j["vocab_size"] = c.vocab_size;
  j["bos_token_id"] = bos;
  j["eos_token_id"] = eos;
  return j;
}

// Pairs (our parameter name, fla's state_dict name) of a configuration, in our table's order.
inline std::vector<std::pair<std::string, std::string>> fla_tensor_names(const ModelConfig& c, bool fuse_norm = true) {
  std::vector<std::pair<std::string, std::string>> n;
  n.emplace_back("embed_tokens.weight", "model.embeddings.weight");
  if (!c.share_decoder_input_output_embed) n.emplace_back("output_projection.weight", "lm_head.weight");
  for (int64_t l = 0; l < c.decoder_layers; ++l) {
    const std::string o = "layers." + std::to_string(l) + ".", f = "model.layers." + std::to_string(l) + ".";
    n.emplace_back(o + "retention.q_proj.weight", f + "attn.q_proj.weight");
    n.emplace_back(o + "retention.k_proj.weight", f + "attn.k_proj.weight");
    n.emplace_back(o + "retention.v_proj.weight", f + "attn.v_proj.weight");
    n.emplace_back(o + "retention.g_proj.weight", f + "attn.g_proj.weight");
    n.emplace_back(o + "retention.out_proj.weight", f + "attn.o_proj.weight");
    n.emplace_back(o + "retention.group_norm.weight",
                   f + (fuse_norm ? "attn.g_norm_swish_gate.weight" : "attn.g_norm.weight"));
    n.emplace_back(o + "retention_layer_norm.weight", f + "attn_norm.weight");
    n.emplace_back(o + "ffn.fc1.weight", f + "mlp.gate_proj.weight");
    n.emplace_back(o + "ffn.fc2.weight", f + "mlp.down_proj.weight");
    n.emplace_back(o + "ffn.gate.weight", f + "mlp.up_proj.weight");
    n.emplace_back(o + "final_layer_norm.weight", f + "mlp_norm.weight");
  }
  n.emplace_back("layer_norm.weight", "model.norm.weight");
  return n;
}

// The safetensors files of a model directory: model.safetensors, or the shards that
// model.safetensors.index.json names (each tensor in exactly the shard the index says).
class FlaTensors {
 public:
  explicit FlaTensors(const std::string& dir) {
    namespace fs = std::filesystem;
    const fs::path single = fs::path(dir) / "model.safetensors", index = fs::path(dir) / "model.safetensors.index.json";
    std::error_code ec;
    if (fs::exists(single, ec)) {
      files_.push_back(std::make_shared<SafetensorsFile>(SafetensorsFile::open(single.string())));
      for (const auto& name : files_[0]->names()) where_[name] = 0;
      return;
    }
    require(fs::exists(index, ec), dir, ": neither model.safetensors nor model.safetensors.index.json is there");
    const nlohmann::json j = fla_detail::read_json_file(index.string(), "a safetensors index (JSON)");
    require(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index.string(),
            ": no 'weight_map' object");
    std::map<std::string, size_t> shard_of;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      require(it->is_string(), index.string(), ": weight_map['", it.key(), "'] must be a file name");
      const std::string shard = it->get<std::string>();
      require(!shard.empty() && shard.find('/') == std::string::npos && shard.find('\\') == std::string::npos &&
                  shard != "." && shard != "..",
              index.string(), ": weight_map['", it.key(), "'] = '", shard, "' is not a file name in the directory");
      auto s = shard_of.find(shard);
      if (s == shard_of.end()) {
        s = shard_of.emplace(shard, files_.size()).first;
        files_.push_back(std::make_shared<SafetensorsFile>(SafetensorsFile::open((fs::path(dir) / shard).string())));
      }
      require(files_[s->second]->contains(it.key()), (fs::path(dir) / shard).string(), ": tensor '", it.key(),
              "', listed in the index, is missing");
      where_[it.key()] = s->second;
    }
    for (const auto& f : files_)
      for (const auto& name : f->names())
        require(where_.count(name) && files_[where_[name]].get() == f.get(), f->path(), ": tensor '", name,
                "' is not listed for this file in ", index.string());
  }
  std::vector<std::string> names() const {
    std::vector<std::string> v;
    for (const auto& [name, i] : where_) v.push_back(name);
    return v;
  }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsFile& file(const std::string& name) const { return *files_[where_.at(name)]; }

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;
};

// Loads fla's weights into `model` (built from info.config). Strict: every tensor present with its shape and a
// floating dtype (F32, F16, BF16, F64), nothing else in the files (lm_head.weight of a tied model must equal the
// embedding). Names and shapes are checked before anything is written into the model. Host (CPU) models: the
// tensors are read straight into the parameters, without a second copy of the model.
template <class M>
void load_fla_weights(M& model, const std::string& dir, const FlaConfig& info) {
  using T = std::remove_cv_t<std::remove_reference_t<decltype(*model.params())>>;
  const ModelConfig& c = model.config();
  const FlaTensors files(dir);
  const auto names = fla_tensor_names(c, info.fuse_norm);
  const ParamTable& table = model.param_table();
  std::set<std::string> expected;
  std::string missing, wrong;
  for (const auto& [ours, theirs] : names) {
    expected.insert(theirs);
    const ParamInfo& p = table.at(ours);
    if (!files.contains(theirs))
      missing += (missing.empty() ? "" : ", ") + theirs;
    else if (files.file(theirs).shape(theirs) != p.shape)
      wrong += (wrong.empty() ? "" : ", ") + theirs + " " + files.file(theirs).shape(theirs).to_string() +
               " (expected " + p.shape.to_string() + ")";
  }
  const bool tied_head = c.share_decoder_input_output_embed && files.contains("lm_head.weight");
  std::string extra;
  for (const auto& n : files.names())
    if (!expected.count(n) && !(tied_head && n == "lm_head.weight")) extra += (extra.empty() ? "" : ", ") + n;
  require(missing.empty() && wrong.empty() && extra.empty(), dir, ": the tensors do not match fla's RetNet of this ",
          "configuration", missing.empty() ? "" : "; missing: " + missing,
          wrong.empty() ? "" : "; wrong shape: " + wrong, extra.empty() ? "" : "; unexpected: " + extra);
  if (tied_head) {
    const ParamInfo& e = table.at("embed_tokens.weight");
    require(files.file("lm_head.weight").shape("lm_head.weight") == e.shape, dir,
            ": lm_head.weight has the wrong shape for the tied embedding");
    std::vector<T> head(static_cast<size_t>(e.numel())), emb(head.size());
    files.file("lm_head.weight").read("lm_head.weight", head.data(), e.shape);
    files.file("model.embeddings.weight").read("model.embeddings.weight", emb.data(), e.shape);
    require(head == emb, dir, ": tie_word_embeddings is true, but lm_head.weight differs from model.embeddings.weight");
  }
  T* P = model.params();
  const int64_t H = c.decoder_retention_heads, kv = c.kv_heads(), dk = c.key_dim(), d = c.decoder_embed_dim;
  for (const auto& [ours, theirs] : names) {
    const ParamInfo& p = table.at(ours);
    files.file(theirs).read(theirs, P + p.offset, p.shape);
    if (ours.find("retention.q_proj.weight") != std::string::npos)
      fla_detail::reorder_rotary_rows(P + p.offset, H, dk, d, false);
    else if (ours.find("retention.k_proj.weight") != std::string::npos)
      fla_detail::reorder_rotary_rows(P + p.offset, kv, dk, d, false);
  }
}

template <class M>
void load_fla_weights(M& model, const std::string& dir) {
  load_fla_weights(model, dir, load_fla_config((std::filesystem::path(dir) / "config.json").string()));
}

// Writes config.json and model.safetensors in fla's format into `dir` (created if needed); dtype "" keeps the
// model's type (F32 for float), or "F32", "BF16", "F16". fla's RetNetForCausalLM.from_pretrained(dir) loads it.
template <class M>
void save_fla(const M& model, const std::string& dir, const std::string& dtype = "", int64_t bos = 1, int64_t eos = 2) {
  using T = std::remove_cv_t<std::remove_reference_t<decltype(*model.params())>>;
  namespace fs = std::filesystem;
  const ModelConfig& c = model.config();
  const nlohmann::json cfg = fla_config_to_json(c, bos, eos);
  std::error_code ec;
  fs::create_directories(dir, ec);
  require(fs::is_directory(dir), dir, ": cannot create the directory");
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  const ParamTable& table = model.param_table();
  const std::vector<T> host = model.params_to_host();
  const int64_t H = c.decoder_retention_heads, kv = c.kv_heads(), dk = c.key_dim(), d = c.decoder_embed_dim;
  for (const auto& [ours, theirs] : fla_tensor_names(c)) {
    const ParamInfo& p = table.at(ours);
    std::vector<T> t(host.begin() + p.offset, host.begin() + p.offset + p.numel());
    if (ours.find("retention.q_proj.weight") != std::string::npos)
      fla_detail::reorder_rotary_rows(t.data(), H, dk, d, true);
    else if (ours.find("retention.k_proj.weight") != std::string::npos)
      fla_detail::reorder_rotary_rows(t.data(), kv, dk, d, true);
    if (dtype.empty())
      w.add(theirs, p.shape, t.data());
    else
      w.add(theirs, p.shape, t.data(), dtype);
  }
  w.write((fs::path(dir) / "model.safetensors").string());
  const std::string path = (fs::path(dir) / "config.json").string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  require(out.good(), path, ": cannot create the configuration file");
  out << cfg.dump(2) << "\n";
  out.flush();
  require(out.good(), path, ": write failed");
}

}  // namespace retnet::io
