#pragma once
// Umbrella header for GPU users: the core (configs, views, errors), the CUDA backend (retention and every other op)
// and the layer, model and trainer templates. Compiles only under nvcc; CPU-only code includes retnet/retnet.hpp.
#if !defined(__CUDACC__)
#error "retnet/cuda.cuh must be compiled by nvcc (CUDA C++); CPU-only code includes retnet/retnet.hpp"
#endif
#include "retnet/core/backend.hpp"
#include "retnet/core/checked.hpp"
#include "retnet/core/config.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/retention_args.hpp"
#include "retnet/core/tensor.hpp"
#include "retnet/cuda/context.cuh"
#include "retnet/cuda/retention.cuh"
#include "retnet/cuda/ops.cuh"
#include "retnet/cuda/decode.cuh"
// The model and its training on the GPU: the same templates as on the CPU, instantiated with retnet::Cuda.
#include "retnet/nn/model.hpp"
#include "retnet/train/trainer.hpp"
