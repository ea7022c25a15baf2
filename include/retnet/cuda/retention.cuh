#pragma once
// retention_forward / retention_backward for the CUDA backend: one entry point per direction, the form picked
// at run time (the same signatures as the CPU backend with retnet::cpu, plus an optional RetentionSaved through
// which the forward hands the backward what it would otherwise recompute: retention_saved.cuh).
#include "retnet/cuda/retention_chunkwise.cuh"
#include "retnet/cuda/retention_parallel.cuh"
#include "retnet/cuda/retention_recurrent.cuh"

namespace retnet {

template <class E>
void retention_forward(const Cuda& ctx, Form form, const RetentionConfig& cfg,
                       const RetentionInputs<E, Device, float>& in, const RetentionOutputs<E, Device, float>& out,
                       RetentionSaved* saved = nullptr) {
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
                        const RetentionInputGrads<E, Device, float>& gin, const RetentionSaved* saved = nullptr) {
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
