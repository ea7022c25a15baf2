#pragma once
// retention_forward / retention_backward for the CUDA backend: one entry point per direction, the form picked
// at run time (the same signatures as the CPU backend with retnet::cpu).
#include "retnet/cuda/retention_chunkwise.cuh"
#include "retnet/cuda/retention_parallel.cuh"
#include "retnet/cuda/retention_recurrent.cuh"

namespace retnet {

template <class E>
void retention_forward(const Cuda& ctx, Form form, const RetentionConfig& cfg,
                       const RetentionInputs<E, Device, float>& in, const RetentionOutputs<E, Device, float>& out) {
  switch (form) {
    case Form::parallel:
      return retention_parallel_forward(ctx, cfg, in, out);
    case Form::recurrent:
      return retention_recurrent_forward(ctx, cfg, in, out);
    case Form::chunkwise:
      return retention_chunkwise_forward(ctx, cfg, in, out);
  }
  fail("retention_forward (CUDA): unknown form ", static_cast<int>(form));
}

template <class E>
void retention_backward(const Cuda& ctx, Form form, const RetentionConfig& cfg,
                        const RetentionInputs<E, Device, float>& in, const RetentionOutputGrads<E, Device, float>& gout,
                        const RetentionInputGrads<E, Device, float>& gin) {
  switch (form) {
    case Form::parallel:
      return retention_parallel_backward(ctx, cfg, in, gout, gin);
    case Form::recurrent:
      return retention_recurrent_backward(ctx, cfg, in, gout, gin);
    case Form::chunkwise:
      return retention_chunkwise_backward(ctx, cfg, in, gout, gin);
  }
  fail("retention_backward (CUDA): unknown form ", static_cast<int>(form));
}

}  // namespace retnet
