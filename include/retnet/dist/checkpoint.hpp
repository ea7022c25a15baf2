#pragma once
// Training checkpoints of a data-parallel run: written by rank 0 only (atomically, through
// save_training_checkpoint) and independent of the world size, so a run saved with P ranks resumes with any
// number. With ZeRO-1 the moment slices are gathered first. Loading reads the file on rank 0 only and
// broadcasts it, so the other hosts need no copy. Errors on rank 0 (a bad file) reach every rank as the same
// retnet::Error. All functions here are collective. Needs nlohmann_json, like train/checkpoint.hpp.
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "retnet/core/backend.hpp"
#include "retnet/dist/communicator.hpp"
#include "retnet/io/config_json.hpp"
#include "retnet/train/checkpoint.hpp"
#include "retnet/train/trainer.hpp"

namespace retnet::dist {

namespace detail {

// Sends a string from root to every rank (as int64 words: the communicators move numbers).
inline std::string broadcast_string(Communicator& comm, const std::string& s, int root = 0) {
  int64_t n = static_cast<int64_t>(s.size());
  comm.broadcast(&n, 1, root);
  std::vector<int64_t> words(static_cast<size_t>((n + 7) / 8), 0);
  if (comm.rank() == root && n > 0) std::memcpy(words.data(), s.data(), static_cast<size_t>(n));
  if (!words.empty()) comm.broadcast(words.data(), static_cast<int64_t>(words.size()), root);
  std::string out(static_cast<size_t>(n), '\0');
  if (n > 0) std::memcpy(out.data(), words.data(), static_cast<size_t>(n));
  return out;
}

// Runs f on root; its retnet::Error (or other exception) is rethrown on every rank as a retnet::Error.
template <class F>
void on_root(Communicator& comm, F&& f, int root = 0) {
  std::string error;
  if (comm.rank() == root) {
    try {
      f();
    } catch (const std::exception& e) {
      error = e.what();
      if (error.empty()) error = "unknown error";
    }
  }
  error = broadcast_string(comm, error, root);
  require(error.empty(), error);
}

}  // namespace detail

// The model configuration stored in a checkpoint, read on rank 0 and sent to all.
inline TrainingCheckpointInfo read_checkpoint_info(Communicator& comm, const std::string& path) {
  TrainingCheckpointInfo info;
  std::string json;
  detail::on_root(comm, [&] {
    info = read_training_checkpoint_info(path);
    json = io::config_to_json(info.config).dump();
  });
  if (!is_root(comm))
    info.config = io::config_from_json_string(detail::broadcast_string(comm, json));
  else
    detail::broadcast_string(comm, json);
  std::vector<int64_t> nums{info.step, info.data_position};
  comm.broadcast(nums.data(), 2);
  info.step = nums[0], info.data_position = nums[1];
  return info;
}

// Writes the trainer's state (the model, the full AdamW moments, the step) with rank 0; every rank returns once
// the file is complete.
template <class T, Backend BackendT>
void save_checkpoint(const std::string& path, Trainer<T, BackendT>& tr, int64_t data_position,
                     const std::map<std::string, std::string>& extra = {}) {
  Communicator& comm = tr.data_parallel().comm();
  if constexpr (host_backend<BackendT>)
    tr.data_parallel().gather_optimizer_state(tr.optimizer());
  else if (auto* d = tr.device_data_parallel())
    d->gather_optimizer_state(tr.optimizer());
  detail::on_root(comm, [&] { save_training_checkpoint(path, tr, data_position, extra); });
}

// Restores parameters, moments and step on every rank from the file rank 0 reads (checked against rank 0's
// model configuration; every rank must build the same model). info.metadata is filled on rank 0 only.
template <class T, Backend BackendT>
TrainingCheckpointInfo load_checkpoint(const std::string& path, Trainer<T, BackendT>& tr) {
  Communicator& comm = tr.data_parallel().comm();
  TrainingCheckpointInfo info;
  detail::on_root(comm, [&] { info = load_training_checkpoint(path, tr); });
  if constexpr (host_backend<BackendT>) {
    const int64_t n = tr.model().param_table().total();
    comm.broadcast(tr.model().params(), n);
    comm.broadcast(tr.optimizer().exp_avg(), n);
    comm.broadcast(tr.optimizer().exp_avg_sq(), n);
    std::vector<int64_t> nums{info.step, info.data_position};
    comm.broadcast(nums.data(), 2);
    info.step = nums[0], info.data_position = nums[1];
    if (!is_root(comm)) info.config = tr.model().config();
    tr.set_step_count(info.step);  // also hands each rank its ZeRO-1 moment slices
  } else if (comm.size() > 1) {    // a device communicator (the Trainer refuses others): rank 0's state to all
    const int64_t n = tr.model().param_table().total();
    auto& opt = tr.optimizer();
    comm.broadcast(static_cast<void*>(opt.exp_avg()), n, dtype_of<master_t<T>>(), 0);
    comm.broadcast(static_cast<void*>(opt.exp_avg_sq()), n, dtype_of<master_t<T>>(), 0);
    if constexpr (AdamW<T, BackendT>::has_master) {  // the master weights, and the parameters from them
      comm.broadcast(static_cast<void*>(opt.master_buffer().data()), n, dtype_of<master_t<T>>(), 0);
      const std::vector<master_t<T>> master = opt.master_buffer().to_host();
      tr.restore_master(master.data(), n);
    } else {
      comm.broadcast(static_cast<void*>(tr.model().params()), n, dtype_of<T>(), 0);
    }
    std::vector<int64_t> nums{info.step, info.data_position};
    comm.broadcast(nums.data(), 2);
    info.step = nums[0], info.data_position = nums[1];
    if (!is_root(comm)) info.config = tr.model().config();
    tr.set_step_count(info.step);
  }
  return info;
}

}  // namespace retnet::dist
