#pragma once
// Arguments of the retention ops, shared by every backend, and their validation.
//
// Layouts (row-major):  q, k [B, T, H, dk]   v, o [B, T, H, dv]
//                       state kv [B, H, dk, dv]   state scale [B, H]
// docs/SEMANTICS.md gives the exact math of each form and normalisation.
#include <cstdint>

#include "retnet/core/config.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/tensor.hpp"

namespace retnet {

enum class Form { parallel, recurrent, chunkwise };

inline const char* to_string(Form f) {
  switch (f) {
    case Form::parallel:
      return "parallel";
    case Form::recurrent:
      return "recurrent";
    case Form::chunkwise:
      return "chunkwise";
  }
  return "?";
}

// T: storage type of q, k, v, o. S: type of the recurrent state (float on the GPU, T on the CPU).
template <class T, class Space = Host, class S = T>
struct RetentionInputs {
  TensorView<const T, Space> q, k, v;
  // Optional state to continue from; empty views mean "no history".
  // state_scale is torchscale's running decay sum and is used only in Normalization::torchscale.
  TensorView<const S, Space> state_kv, state_scale;
};

template <class T, class Space = Host, class S = T>
struct RetentionOutputs {
  TensorView<T, Space> o;
  // Optional final state; empty views skip it.
  TensorView<S, Space> state_kv, state_scale;
};

// Gradients flowing in (of the outputs) for the backward pass.
template <class T, class Space = Host, class S = T>
struct RetentionOutputGrads {
  TensorView<const T, Space> d_o;
  TensorView<const S, Space> d_state_kv;  // optional: gradient of the final state
};

// Gradients written (overwritten) by the backward pass; an empty d_state_kv skips it.
template <class T, class Space = Host, class S = T>
struct RetentionInputGrads {
  TensorView<T, Space> dq, dk, dv;
  TensorView<S, Space> d_state_kv;
};

namespace detail {

inline void expect_shape(const char* op, const char* name, const Shape& got, const Shape& want) {
  require(got == want, op, ": ", name, " has shape ", got, ", expected ", want);
}

template <class View>
void expect_present(const char* op, const char* name, const View& v) {
  require(!v.empty(), op, ": ", name, " is missing (null data)");
}

}  // namespace detail

// Sizes read off q after validation.
struct RetentionDims {
  int64_t batch, length, heads, key_dim, value_dim;
};

template <class T, class Space, class S>
RetentionDims validate_inputs(const char* op, const RetentionConfig& cfg, const RetentionInputs<T, Space, S>& in) {
  detail::expect_present(op, "q", in.q);
  detail::expect_present(op, "k", in.k);
  detail::expect_present(op, "v", in.v);
  require(in.q.rank() == 4, op, ": q has shape ", in.q.shape(), ", expected rank 4 [batch, length, heads, key_dim]");
  const RetentionDims d{in.q.size(0), in.q.size(1), cfg.heads(), cfg.key_dim(), cfg.value_dim()};
  require(d.batch > 0, op, ": batch = ", d.batch, " (from q ", in.q.shape(), ") must be positive");
  require(d.length > 0, op, ": length = ", d.length, " (from q ", in.q.shape(), ") must be positive");
  detail::expect_shape(op, "q", in.q.shape(), {d.batch, d.length, d.heads, d.key_dim});
  detail::expect_shape(op, "k", in.k.shape(), {d.batch, d.length, d.heads, d.key_dim});
  detail::expect_shape(op, "v", in.v.shape(), {d.batch, d.length, d.heads, d.value_dim});
  if (!in.state_kv.empty())
    detail::expect_shape(op, "state_kv", in.state_kv.shape(), {d.batch, d.heads, d.key_dim, d.value_dim});
  if (!in.state_scale.empty()) {
    detail::expect_shape(op, "state_scale", in.state_scale.shape(), {d.batch, d.heads});
    require(!in.state_kv.empty(), op, ": state_scale is given without state_kv");
  }
  if (cfg.normalization() == Normalization::torchscale && !in.state_kv.empty())
    require(!in.state_scale.empty(), op,
            ": state_kv is given without state_scale; Normalization::torchscale needs both (scale 0 means empty)");
  return d;
}

template <class T, class Space, class S>
RetentionDims validate_forward(const char* op, const RetentionConfig& cfg, const RetentionInputs<T, Space, S>& in,
                               const RetentionOutputs<T, Space, S>& out) {
  const RetentionDims d = validate_inputs(op, cfg, in);
  detail::expect_present(op, "o", out.o);
  detail::expect_shape(op, "o", out.o.shape(), {d.batch, d.length, d.heads, d.value_dim});
  if (!out.state_kv.empty())
    detail::expect_shape(op, "state_kv (out)", out.state_kv.shape(), {d.batch, d.heads, d.key_dim, d.value_dim});
  if (!out.state_scale.empty())
    detail::expect_shape(op, "state_scale (out)", out.state_scale.shape(), {d.batch, d.heads});
  return d;
}

template <class T, class Space, class S>
RetentionDims validate_backward(const char* op, const RetentionConfig& cfg, const RetentionInputs<T, Space, S>& in,
                                const RetentionOutputGrads<T, Space, S>& gout,
                                const RetentionInputGrads<T, Space, S>& gin) {
  const RetentionDims d = validate_inputs(op, cfg, in);
  detail::expect_present(op, "d_o", gout.d_o);
  detail::expect_shape(op, "d_o", gout.d_o.shape(), {d.batch, d.length, d.heads, d.value_dim});
  if (!gout.d_state_kv.empty())
    detail::expect_shape(op, "d_state_kv (of the final state)", gout.d_state_kv.shape(),
                         {d.batch, d.heads, d.key_dim, d.value_dim});
  detail::expect_present(op, "dq", gin.dq);
  detail::expect_present(op, "dk", gin.dk);
  detail::expect_present(op, "dv", gin.dv);
  detail::expect_shape(op, "dq", gin.dq.shape(), {d.batch, d.length, d.heads, d.key_dim});
  detail::expect_shape(op, "dk", gin.dk.shape(), {d.batch, d.length, d.heads, d.key_dim});
  detail::expect_shape(op, "dv", gin.dv.shape(), {d.batch, d.length, d.heads, d.value_dim});
  if (!gin.d_state_kv.empty())
    detail::expect_shape(op, "d_state_kv (of the initial state)", gin.d_state_kv.shape(),
                         {d.batch, d.heads, d.key_dim, d.value_dim});
  return d;
}

}  // namespace retnet
