#pragma once
// RetentionSaved: what a GPU retention forward keeps for its backward (the states entering its segments, and in
// torchscale mode the row multipliers), so that the backward does not compute them again. Also the segment split
// of one run (Geometry), which the saved states are laid out by.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "retnet/core/config.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/retention_args.hpp"
#include "retnet/cuda/context.cuh"

namespace retnet {
namespace cuda_detail {

// The segment split of one run, chosen by geometry() (retention_chunkwise.cuh).
struct Geometry {
  int L, seg, NS;
  int sub = 1;                 // summary segments per segment: the summary pass cuts segments into sub parts
  int summaries = 0;           // summary segments per (batch, head); 0: no summary pass
  bool outputs_final = false;  // the last segment's outputs blocks write the final state (it needs no summary)
  bool narrow = false;         // 64 value columns per block where 128 would fit
  double cost = 0;             // the split model's cost of the chosen split (0 where the split was given)
  // No prefix pass: the outputs pass of a single-segment run reads the initial state in place of the states buffer
  // (its layout is that of one slot, or of a transposed slot), or zero_floats() where there is none. Only where
  // the initial state enters unscaled, so that the kernels stay as they are: scaling it in the engine kernels
  // would move their register allocation and cost up to 3 % on the H200.
  bool init_direct = false;
  const float* direct_state = nullptr;  // what the outputs pass reads then
  int slots() const { return NS * sub; }
  int summary_seg() const { return seg / sub; }
};

// What a backward must share with the forward whose saved states it reads.
struct SavedKey {
  int device = -1;
  const char* type = "";
  Form form = Form::chunkwise;
  Normalization normalization = Normalization::raw;
  int64_t chunk = 0;
  bool tf32 = false;
  int64_t batch = 0, length = 0, heads = 0, key_dim = 0, value_dim = 0;
  std::vector<double> log_gammas;
  const void *q = nullptr, *k = nullptr, *v = nullptr, *state_kv = nullptr, *state_scale = nullptr;
};

// Throws unless `got` (the backward's problem) is the one `saved` was made for, naming the first difference.
inline void expect_same_problem(const char* op, const SavedKey& saved, const SavedKey& got) {
  const auto same = [&](const char* what, auto a, auto b) {
    require(a == b, op, ": `saved` holds the forward of another problem (", what, " ", a, " there, ", b, " here)");
  };
  same("device", saved.device, got.device);
  same("storage", std::string(saved.type), std::string(got.type));
  same("form", std::string(to_string(saved.form)), std::string(to_string(got.form)));
  same("normalization", std::string(to_string(saved.normalization)), std::string(to_string(got.normalization)));
  same("chunk_size", saved.chunk, got.chunk);
  same("allow_tf32", saved.tf32, got.tf32);
  same("batch", saved.batch, got.batch);
  same("length", saved.length, got.length);
  same("heads", saved.heads, got.heads);
  same("key_dim", saved.key_dim, got.key_dim);
  same("value_dim", saved.value_dim, got.value_dim);
  require(saved.log_gammas == got.log_gammas, op, ": `saved` holds the forward of another problem (other decays)");
  const auto same_tensor = [&](const char* what, const void* a, const void* b) {
    require(a == b, op, ": `saved` holds the forward of other inputs (", what, " is another tensor)");
  };
  same_tensor("q", saved.q, got.q);
  same_tensor("k", saved.k, got.k);
  same_tensor("v", saved.v, got.v);
  same_tensor("state_kv", saved.state_kv, got.state_kv);
  same_tensor("state_scale", saved.state_scale, got.state_scale);
}

// What the forward recorded; states and mu point into the RetentionSaved's device buffer.
struct SavedRecord {
  SavedKey key;
  Geometry geo{};
  const float* states = nullptr;  // the states entering each segment of geo (slot s * geo.sub), or null
  const float* mu = nullptr;      // [B, T, H] row multipliers (torchscale), or null
};

struct SavedAccess;

}  // namespace cuda_detail

// What a forward on the GPU keeps for its backward. Pass the same object to retention_forward and then to
// retention_backward of the same problem (same config, sizes, allow_tf32, and the same q, k, v and state tensors,
// unchanged in between) on the same stream; the backward then skips recomputing:
//   * the states entering each segment of the forward's split (where the split is its own choice, not torchscale's
//     chunks): the dq run reads them transposed instead of running its own summary and prefix passes;
//   * torchscale's row multipliers: no pass over the chunk-entering states (chunkwise) or the T x T scores
//     (parallel).
// The device memory (about B * H * key_dim * value_dim floats per segment, plus B * T * H) is allocated on first
// use, grows as needed and is kept until destruction or release(). A backward of another problem throws
// retnet::Error naming what differs. Growing it while the stream is being captured into a graph throws: run the op
// once outside capture first, as every op needs.
class RetentionSaved {
 public:
  RetentionSaved() = default;
  ~RetentionSaved() { release(); }
  RetentionSaved(const RetentionSaved&) = delete;
  RetentionSaved& operator=(const RetentionSaved&) = delete;
  RetentionSaved(RetentionSaved&& o) noexcept { swap(o); }
  RetentionSaved& operator=(RetentionSaved&& o) noexcept {
    if (this != &o) {
      release();
      swap(o);
    }
    return *this;
  }

  // Whether a forward has filled it.
  bool empty() const { return !filled_; }
  // Device memory held.
  size_t bytes() const { return capacity_ * sizeof(float); }
  // Frees the device memory (after the work queued on the device has finished).
  void release() {
    if (buffer_) (void)cudaFree(buffer_);
    buffer_ = nullptr;
    capacity_ = 0;
    filled_ = false;
  }

 private:
  friend struct cuda_detail::SavedAccess;
  void swap(RetentionSaved& o) noexcept {
    std::swap(buffer_, o.buffer_);
    std::swap(capacity_, o.capacity_);
    std::swap(device_, o.device_);
    std::swap(filled_, o.filled_);
    std::swap(record_, o.record_);
  }
  float* buffer_ = nullptr;
  size_t capacity_ = 0;  // floats
  int device_ = -1;
  bool filled_ = false;
  cuda_detail::SavedRecord record_;
};

namespace cuda_detail {

struct SavedAccess {
  // Empties s and returns at least `floats` floats of device memory on the current device for the forward to fill.
  static float* begin(RetentionSaved& s, size_t floats, cudaStream_t stream, const char* op) {
    s.filled_ = false;
    int dev = 0;
    RETNET_CUDA_CHECK(cudaGetDevice(&dev));
    if (s.capacity_ < floats || s.device_ != dev) {
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      RETNET_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
      require(capture == cudaStreamCaptureStatusNone, op, ": `saved` must grow to ", floats * sizeof(float),
              " bytes while the stream is being captured; run the op once outside capture first");
      s.release();
      if (floats == 0) return nullptr;
      RETNET_CUDA_CHECK(cudaMalloc(&s.buffer_, floats * sizeof(float)));
      s.capacity_ = floats;
      s.device_ = dev;
    }
    return s.buffer_;
  }
  static void finish(RetentionSaved& s, SavedRecord r) {
    s.record_ = std::move(r);
    s.filled_ = true;
  }
  // The record of a forward of problem `key`; throws where s is empty or holds another problem.
  static const SavedRecord& expect(const RetentionSaved& s, const SavedKey& key, const char* op) {
    require(s.filled_, op, ": `saved` is empty (pass it to the forward first)");
    expect_same_problem(op, s.record_.key, key);
    return s.record_;
  }
};

}  // namespace cuda_detail
}  // namespace retnet
