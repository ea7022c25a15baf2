#pragma once
// Parallel form on the GPU. Its multipliers mu_n (torchscale's decay-mask and |score|-sum normalisers) come
// from a tiled pass over the causal T x T scores that keeps only per-row sums; the retention itself runs on
// the chunk engine, so the T x T matrix is never stored and the cost of the retention stays linear in T
// (the normaliser pass is quadratic, as the form is).
#include "retnet/cuda/retention_chunkwise.cuh"

namespace retnet {

template <class E>
void retention_parallel_forward(const Cuda& ctx, const RetentionConfig& cfg,
                                const RetentionInputs<E, Device, float>& in,
                                const RetentionOutputs<E, Device, float>& out, RetentionSaved* saved = nullptr) {
  cuda_detail::forward_impl<E>("retention_parallel_forward (CUDA)", ctx, Form::parallel, cfg, in, out, saved);
}

template <class E>
void retention_parallel_backward(const Cuda& ctx, const RetentionConfig& cfg,
                                 const RetentionInputs<E, Device, float>& in,
                                 const RetentionOutputGrads<E, Device, float>& gout,
                                 const RetentionInputGrads<E, Device, float>& gin,
                                 const RetentionSaved* saved = nullptr) {
  cuda_detail::backward_impl<E>("retention_parallel_backward (CUDA)", ctx, Form::parallel, cfg, in, gout, gin, saved);
}

}  // namespace retnet
