#pragma once
// retention_forward / retention_backward for the CUDA backend: one entry point per direction, the form picked
// at run time (the same signatures as the CPU backend with retnet::cpu, plus an optional RetentionSaved through
// which the forward hands the backward what it would otherwise recompute: retention_saved.cuh).
#include "retnet/cuda/retention_chunkwise.cuh"
#include "retnet/cuda/retention_parallel.cuh"
#include "retnet/cuda/retention_recurrent.cuh"
#include "retnet/cuda/retention_split.cuh"

namespace retnet {

template <class E>
void retention_forward(const Cuda& ctx, Form form, const RetentionConfig& cfg,
                       const RetentionInputs<E, Device, float>& in, const RetentionOutputs<E, Device, float>& out,
                       RetentionSaved* saved = nullptr);
template <class E>
void retention_backward(const Cuda& ctx, Form form, const RetentionConfig& cfg,
                        const RetentionInputs<E, Device, float>& in, const RetentionOutputGrads<E, Device, float>& gout,
                        const RetentionInputGrads<E, Device, float>& gin, const RetentionSaved* saved = nullptr);

namespace cuda_detail {

// Slot sizes of a split call: q' and k' (slots 0, 1), the split input state and scale (2, 3), then `more`.
template <class E>
std::vector<size_t> split_sizes(const SplitShapes& sh, std::vector<size_t> more) {
  const size_t qk = sizeof(E) * static_cast<size_t>(sh.rows_heads() * sh.r * sh.dk);
  std::vector<size_t> sizes{qk, qk, sizeof(float) * static_cast<size_t>(sh.bh() * sh.dk * sh.r * sh.s),
                            sizeof(float) * static_cast<size_t>(sh.bh() * sh.r)};
  sizes.insert(sizes.end(), more.begin(), more.end());
  return sizes;
}

// The split problem's inputs: q and k repeated into slots 0 and 1, the state (if any) rearranged into 2 and 3.
template <class E>
RetentionInputs<E, Device, float> split_inputs(const Cuda& ctx, const SplitShapes& sh,
                                               const RetentionInputs<E, Device, float>& in, const SplitBuffers& buf) {
  RetentionInputs<E, Device, float> si;
  si.q = DeviceView<const E>(buf.at<E>(0), sh.qk());
  si.k = DeviceView<const E>(buf.at<E>(1), sh.qk());
  si.v = DeviceView<const E>(in.v.data(), sh.vo());
  repeat_heads_forward(ctx, buf.at<E>(0), in.q.data(), sh.rows_heads(), 1, sh.r, sh.dk);
  repeat_heads_forward(ctx, buf.at<E>(1), in.k.data(), sh.rows_heads(), 1, sh.r, sh.dk);
  if (!in.state_kv.empty()) {
    state_split(ctx, buf.at<float>(2), in.state_kv.data(), sh.bh(), sh.dk, sh.r, sh.s, true);
    si.state_kv = DeviceView<const float>(buf.at<float>(2), sh.kv());
  }
  if (!in.state_scale.empty()) {
    scale_split(ctx, buf.at<float>(3), in.state_scale.data(), sh.bh(), sh.r, true);
    si.state_scale = DeviceView<const float>(buf.at<float>(3), sh.sc());
  }
  return si;
}

// torchscale's chunkwise normaliser divides the carried state by its largest column sum over the whole value head,
// which split heads cannot share: that one combination is refused.
inline void require_splittable(const char* op, Form form, const RetentionConfig& cfg) {
  require(form != Form::chunkwise || cfg.normalization() != Normalization::torchscale, op,
          ": value_dim = ", cfg.value_dim(),
          " (wider than 256, run as split heads) with torchscale's normalisers is not supported in "
          "the chunkwise form on the GPU; use Normalization::raw, or the parallel or recurrent form");
}

// Forward over value heads split r ways (retention_split.cuh).
template <class E>
void split_forward(const Cuda& ctx, Form form, const RetentionConfig& cfg, int64_t r,
                   const RetentionInputs<E, Device, float>& in, const RetentionOutputs<E, Device, float>& out) {
  const RetentionDims d = validate_forward("retention_forward (CUDA)", cfg, in, out);
  require_splittable("retention_forward (CUDA)", form, cfg);
  const SplitShapes sh{d.batch, d.length, d.heads, r, d.key_dim, d.value_dim / r};
  const size_t kv = sizeof(float) * static_cast<size_t>(sh.bh() * sh.dk * d.value_dim);
  const SplitBuffers buf(ctx, split_sizes<E>(sh, {kv, sizeof(float) * sh.bh() * r}));
  const RetentionInputs<E, Device, float> si = split_inputs(ctx, sh, in, buf);
  RetentionOutputs<E, Device, float> so;
  so.o = DeviceView<E>(out.o.data(), sh.vo());
  if (!out.state_kv.empty()) so.state_kv = DeviceView<float>(buf.at<float>(4), sh.kv());
  if (!out.state_scale.empty()) so.state_scale = DeviceView<float>(buf.at<float>(5), sh.sc());
  retention_forward(ctx, form, split_config(cfg, r), si, so, nullptr);
  if (!out.state_kv.empty()) state_split(ctx, out.state_kv.data(), buf.at<float>(4), sh.bh(), sh.dk, r, sh.s, false);
  if (!out.state_scale.empty()) scale_split(ctx, out.state_scale.data(), buf.at<float>(5), sh.bh(), r, false);
}

template <class E>
void split_backward(const Cuda& ctx, Form form, const RetentionConfig& cfg, int64_t r,
                    const RetentionInputs<E, Device, float>& in, const RetentionOutputGrads<E, Device, float>& gout,
                    const RetentionInputGrads<E, Device, float>& gin) {
  const RetentionDims d = validate_backward("retention_backward (CUDA)", cfg, in, gout, gin);
  require_splittable("retention_backward (CUDA)", form, cfg);
  const SplitShapes sh{d.batch, d.length, d.heads, r, d.key_dim, d.value_dim / r};
  const size_t kv = sizeof(float) * static_cast<size_t>(sh.bh() * sh.dk * d.value_dim);
  const size_t qk = sizeof(E) * static_cast<size_t>(sh.rows_heads() * r * sh.dk);
  const SplitBuffers buf(ctx, split_sizes<E>(sh, {kv, kv, qk, qk}));
  const RetentionInputs<E, Device, float> si = split_inputs(ctx, sh, in, buf);
  RetentionOutputGrads<E, Device, float> so;
  so.d_o = DeviceView<const E>(gout.d_o.data(), sh.vo());
  if (!gout.d_state_kv.empty()) {
    state_split(ctx, buf.at<float>(4), gout.d_state_kv.data(), sh.bh(), sh.dk, r, sh.s, true);
    so.d_state_kv = DeviceView<const float>(buf.at<float>(4), sh.kv());
  }
  RetentionInputGrads<E, Device, float> sg;
  sg.dq = DeviceView<E>(buf.at<E>(6), sh.qk());
  sg.dk = DeviceView<E>(buf.at<E>(7), sh.qk());
  sg.dv = DeviceView<E>(gin.dv.data(), sh.vo());
  if (!gin.d_state_kv.empty()) sg.d_state_kv = DeviceView<float>(buf.at<float>(5), sh.kv());
  retention_backward(ctx, form, split_config(cfg, r), si, so, sg, nullptr);
  repeat_heads_backward(ctx, gin.dq.data(), buf.at<E>(6), sh.rows_heads(), 1, r, sh.dk);
  repeat_heads_backward(ctx, gin.dk.data(), buf.at<E>(7), sh.rows_heads(), 1, r, sh.dk);
  if (!gin.d_state_kv.empty())
    state_split(ctx, gin.d_state_kv.data(), buf.at<float>(5), sh.bh(), sh.dk, r, sh.s, false);
}

}  // namespace cuda_detail

// Value heads wider than 256 (a multiple of 64, 128 or 256) run as several heads of a kernel size; `saved` is not
// used for them.
template <class E>
void retention_forward(const Cuda& ctx, Form form, const RetentionConfig& cfg,
                       const RetentionInputs<E, Device, float>& in, const RetentionOutputs<E, Device, float>& out,
                       RetentionSaved* saved) {
  if (const int64_t r = cuda_detail::value_split(cfg); r > 1)
    return cuda_detail::split_forward(ctx, form, cfg, r, in, out);
  switch (form) {
    case Form::parallel:
      return retention_parallel_forward(ctx, cfg, in, out, saved);
    case Form::recurrent:
      return retention_recurrent_forward(ctx, cfg, in, out, saved);
    case Form::chunkwise:
      return retention_chunkwise_forward(ctx, cfg, in, out, saved);
  }
  fail("retention_forward (CUDA): unknown form ", static_cast<int>(form));
}

template <class E>
void retention_backward(const Cuda& ctx, Form form, const RetentionConfig& cfg,
                        const RetentionInputs<E, Device, float>& in, const RetentionOutputGrads<E, Device, float>& gout,
                        const RetentionInputGrads<E, Device, float>& gin, const RetentionSaved* saved) {
  if (const int64_t r = cuda_detail::value_split(cfg); r > 1)
    return cuda_detail::split_backward(ctx, form, cfg, r, in, gout, gin);
  switch (form) {
    case Form::parallel:
      return retention_parallel_backward(ctx, cfg, in, gout, gin, saved);
    case Form::recurrent:
      return retention_recurrent_backward(ctx, cfg, in, gout, gin, saved);
    case Form::chunkwise:
      return retention_chunkwise_backward(ctx, cfg, in, gout, gin, saved);
  }
  fail("retention_backward (CUDA): unknown form ", static_cast<int>(form));
}

}  // namespace retnet
