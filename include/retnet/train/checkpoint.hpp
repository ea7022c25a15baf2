#pragma once
// Training checkpoints: parameters (torchscale names, so the file also loads as a plain model file),
// AdamW moments ("adam.m/<name>", "adam.v/<name>"), the step, the model configuration (JSON) and the data
// position, in one safetensors file written atomically.
//
// Needs nlohmann_json (through retnet/io/config_json.hpp): link nlohmann_json::nlohmann_json.
// Loading is all-or-nothing: everything is read and checked into scratch buffers before the model and
// the optimizer are touched; a different configuration, a missing or extra tensor or a wrong shape is a
// retnet::Error. Header and tensors come from one open file, so a checkpoint replaced while it is being loaded
// is read whole from either the old or the new file. Each tensor carries a checksum (SafetensorsWriter::
// set_checksums), so flipped bytes in the data are an error too.
//
// Any backend: on device backends the parameters and moments are staged through host vectors, and the file is
// the same, so a run saved on the GPU resumes on the CPU and the other way round. A model stored in bf16 saves its
// float master weights as the parameters (a float checkpoint) and restores them from the file.
#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "retnet/core/backend.hpp"
#include "retnet/io/config_json.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/train/trainer.hpp"

namespace retnet {

inline constexpr const char* kTrainingCheckpointFormat = "retnet-training-checkpoint/1";

struct TrainingCheckpointInfo {
  int64_t step = 0;
  int64_t data_position = 0;
  ModelConfig config;
  std::map<std::string, std::string> metadata;  // everything in the header, including caller extras
};

template <class T, Backend BackendT>
void save_training_checkpoint(const std::string& path, const Trainer<T, BackendT>& tr, int64_t data_position,
                              const std::map<std::string, std::string>& extra = {}) {
  const Model<T, BackendT>& m = tr.model();
  const auto& opt = tr.optimizer();
  io::SafetensorsWriter w;  // add() copies the data: the staged host vectors may go at once
  if constexpr (host_backend<BackendT>) {
    io::save_params(w, m.param_table(), m.params());
    io::save_params(w, m.param_table(), opt.exp_avg(), "adam.m/");
    io::save_params(w, m.param_table(), opt.exp_avg_sq(), "adam.v/");
  } else {
    if constexpr (AdamW<T, BackendT>::has_master)
      io::save_params(w, m.param_table(), opt.master_buffer().to_host().data());
    else
      io::save_params(w, m.param_table(), m.params_to_host().data());
    io::save_params(w, m.param_table(), opt.exp_avg_buffer().to_host().data(), "adam.m/");
    io::save_params(w, m.param_table(), opt.exp_avg_sq_buffer().to_host().data(), "adam.v/");
  }
  w.set_checksums(true);
  for (const auto& [k, v] : extra) w.set_metadata(k, v);
  w.set_metadata("format", kTrainingCheckpointFormat);
  w.set_metadata("step", std::to_string(tr.step_count()));
  w.set_metadata("adam_steps", std::to_string(opt.steps()));
  w.set_metadata("data_position", std::to_string(data_position));
  w.set_metadata("config", io::config_to_json(m.config()).dump());
  w.write(path);
}

// Reads only the header (configuration, step, data position).
inline TrainingCheckpointInfo read_training_checkpoint_info(const io::SafetensorsFile& f) {
  const std::string& path = f.path();
  TrainingCheckpointInfo info;
  info.metadata = f.metadata();
  auto get = [&](const char* key) -> const std::string& {
    auto it = info.metadata.find(key);
    require(it != info.metadata.end(), path, ": not a training checkpoint (metadata '", key, "' is missing)");
    return it->second;
  };
  require(get("format") == kTrainingCheckpointFormat, path, ": checkpoint format '", get("format"),
          "' is not supported (expected ", kTrainingCheckpointFormat, ")");
  auto to_i64 = [&](const char* key) {
    const std::string& s = get(key);
    try {
      size_t used = 0;
      const long long v = std::stoll(s, &used);
      require(used == s.size() && v >= 0, "");
      return static_cast<int64_t>(v);
    } catch (...) {
      fail(path, ": metadata '", key, "' = '", s, "' is not a non-negative integer");
    }
  };
  info.step = to_i64("step");
  info.data_position = to_i64("data_position");
  info.config = io::config_from_json_string(get("config"), nullptr, path + " (metadata 'config')");
  return info;
}

inline TrainingCheckpointInfo read_training_checkpoint_info(const std::string& path) {
  return read_training_checkpoint_info(io::SafetensorsFile::open(path));
}

// Restores parameters, AdamW moments and the step into tr (whose model must have the same configuration).
template <class T, Backend BackendT>
TrainingCheckpointInfo load_training_checkpoint(const io::SafetensorsFile& f, Trainer<T, BackendT>& tr) {
  TrainingCheckpointInfo info = read_training_checkpoint_info(f);
  const std::string& path = f.path();
  Model<T, BackendT>& m = tr.model();
  const std::string want = io::config_to_json(m.config()).dump(), got = io::config_to_json(info.config).dump();
  require(want == got, path, ": the checkpoint's model configuration ", got, " differs from the model's ", want);
  const ParamTable& table = m.param_table();
  const size_t n = static_cast<size_t>(table.total());
  using M = master_t<T>;
  std::vector<M> p(n), mm(n), vv(n);
  io::load_params(f, table, p.data());
  io::load_params(f, table, mm.data(), "adam.m/");
  io::load_params(f, table, vv.data(), "adam.v/");
  if constexpr (host_backend<BackendT>) {
    std::copy(p.begin(), p.end(), m.params());
    std::copy(mm.begin(), mm.end(), tr.optimizer().exp_avg());
    std::copy(vv.begin(), vv.end(), tr.optimizer().exp_avg_sq());
  } else {
    if constexpr (AdamW<T, BackendT>::has_master)
      tr.restore_master(p.data(), static_cast<int64_t>(n));
    else
      m.params_from_host(p.data(), static_cast<int64_t>(n));
    tr.optimizer().exp_avg_buffer().copy_from_host(mm.data(), static_cast<int64_t>(n));
    tr.optimizer().exp_avg_sq_buffer().copy_from_host(vv.data(), static_cast<int64_t>(n));
  }
  tr.set_step_count(info.step);
  return info;
}

template <class T, Backend BackendT>
TrainingCheckpointInfo load_training_checkpoint(const std::string& path, Trainer<T, BackendT>& tr) {
  return load_training_checkpoint(io::SafetensorsFile::open(path), tr);
}

}  // namespace retnet
