#pragma once
// Every op of the CPU backend (Eigen and OpenMP). The layer, model and trainer templates (nn/, train/) call ops by
// their backend tag; nn/backend_ops.hpp includes this header for host compilers, retnet/cuda.cuh brings the CUDA
// ops (cuda/ops.cuh) instead.
#include "retnet/cpu/activation.hpp"
#include "retnet/cpu/adamw.hpp"
#include "retnet/cpu/dropout.hpp"
#include "retnet/cpu/elementwise.hpp"
#include "retnet/cpu/embedding.hpp"
#include "retnet/cpu/group_norm.hpp"
#include "retnet/cpu/heads.hpp"
#include "retnet/cpu/linear.hpp"
#include "retnet/cpu/linear_bf16.hpp"
#include "retnet/cpu/loss.hpp"
#include "retnet/cpu/norm.hpp"
#include "retnet/cpu/retention.hpp"
#include "retnet/cpu/rotation.hpp"
