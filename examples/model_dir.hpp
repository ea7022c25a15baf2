#pragma once
// A model directory as the programs take it (--model DIR): fla's format (config.json with fla's RetNetConfig fields,
// model.safetensors or a sharded index; io/fla_format.hpp) or this library's and torchscale's (config.json with
// torchscale's fields and model.safetensors or checkpoint.safetensors), told apart by config.json. tokenizer.json
// beside them, when present, gives text in and out.
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include "retnet/core/error.hpp"
#include "retnet/io/config_json.hpp"
#include "retnet/io/fla_format.hpp"
#include "retnet/io/model_io.hpp"
#include "retnet/io/tokenizer.hpp"
#include "retnet/nn/model.hpp"

namespace retnet_examples {

struct ModelDir {
  std::string dir;
  bool fla = false;
  retnet::io::FlaConfig fla_info;  // fla only
  retnet::ModelConfig config;
  std::string weights;  // torchscale / ours: the safetensors file
};

inline ModelDir inspect_model_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  ModelDir m;
  m.dir = dir;
  retnet::require(fs::is_directory(dir), dir, ": --model expects a directory (config.json, model.safetensors)");
  retnet::require(fs::exists(fs::path(dir) / "config.json"), dir, ": no config.json in the model directory");
  m.fla = retnet::io::is_fla_model_dir(dir);
  if (m.fla) {
    m.fla_info = retnet::io::load_fla_config((fs::path(dir) / "config.json").string());
    m.config = m.fla_info.config;
    for (const auto& f : m.fla_info.report.unknown)
      std::cerr << "note: " << dir << "/config.json: field '" << f << "' is not known to this library (ignored)\n";
    return m;
  }
  m.config = retnet::io::load_config((fs::path(dir) / "config.json").string());
  for (const char* name : {"model.safetensors", "checkpoint.safetensors"})
    if (fs::exists(fs::path(dir) / name)) {
      m.weights = (fs::path(dir) / name).string();
      break;
    }
  retnet::require(!m.weights.empty(), dir, ": neither model.safetensors nor checkpoint.safetensors is there");
  return m;
}

template <class T>
void load_model_weights(const ModelDir& m, retnet::Model<T>& model) {
  if (m.fla)
    retnet::io::load_fla_weights(model, m.dir, m.fla_info);
  else
    retnet::io::load_weights(model, m.weights);
}

// The directory's tokenizer.json, if any.
inline std::optional<retnet::io::Tokenizer> model_dir_tokenizer(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::exists(fs::path(dir) / "tokenizer.json")) return std::nullopt;
  return retnet::io::Tokenizer::from_directory(dir);
}

}  // namespace retnet_examples
