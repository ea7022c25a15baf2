#pragma once
// The number formats around a model whose parameters and activations are stored in T. Float and double models
// do everything in T. A bf16 model (the CUDA backend's __nv_bfloat16, specialised in cuda/precision.cuh) keeps
// the parameter gradients, AdamW's master weights and moments, the recurrent state and scalar factors in float.
namespace retnet {

template <class T>
struct PrecisionOf {
  using grad = T;    // parameter gradients (accumulated over micro-batches and segments)
  using master = T;  // the optimizer's copy of the parameters and its moments
  using state = T;   // recurrent retention state (inference and segmented training)
  using scalar = T;  // scalar factors and rotation tables
};

template <class T>
using grad_t = typename PrecisionOf<T>::grad;
template <class T>
using master_t = typename PrecisionOf<T>::master;
template <class T>
using state_t = typename PrecisionOf<T>::state;
template <class T>
using scalar_t = typename PrecisionOf<T>::scalar;

}  // namespace retnet
