#pragma once
// Umbrella header for GPU users: the core (configs, views, errors) and the CUDA backend. Compiles only under
// nvcc; CPU-only code includes retnet/retnet.hpp instead.
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
