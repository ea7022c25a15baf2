#pragma once
// bf16 models on the GPU: bf16 parameters and activations; float gradients, master weights, state and scalars.
#include <cuda_bf16.h>

#include "retnet/core/precision.hpp"

namespace retnet {

template <>
struct PrecisionOf<__nv_bfloat16> {
  using grad = float;
  using master = float;
  using state = float;
  using scalar = float;
};

}  // namespace retnet
