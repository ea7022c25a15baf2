#pragma once
// Umbrella header for CPU users. Never includes CUDA headers (see retnet/cuda.cuh for the GPU).
#include "retnet/core/backend.hpp"
#include "retnet/core/checked.hpp"
#include "retnet/core/config.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/params.hpp"
#include "retnet/core/retention_args.hpp"
#include "retnet/core/rotation.hpp"
#include "retnet/core/tensor.hpp"
#include "retnet/nn/config.hpp"
// Areas add their headers below, one line each.
#include "retnet/io/safetensors.hpp"
