#pragma once
// The ops the layer templates call, found by their backend tag when a template is instantiated. Host compilers
// see the CPU ops here. CUDA translation units keep Eigen and OpenMP out (nvcc would compile Eigen's functions for
// the device and reject the OpenMP pragmas): they include retnet/cuda.cuh, which brings the CUDA ops, and run
// the CPU backend only from separate .cpp translation units.
#include "retnet/core/op_types.hpp"
#include "retnet/core/tokens.hpp"
#if !defined(__CUDACC__)
#include "retnet/cpu/ops.hpp"
#endif

namespace retnet {

// Inference-only bf16 copies of the weights (CPU; cpu/linear_bf16.hpp).
enum class WeightPrecision { float32, bf16 };

}  // namespace retnet
