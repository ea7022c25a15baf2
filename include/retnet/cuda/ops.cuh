#pragma once
// Every element-wise, row-wise and dense op of the CUDA backend (the GPU overloads of the CPU ops in retnet/cpu/ and
// the loss in retnet/cpu/loss.hpp, with const Cuda& as the backend tag).
#include "retnet/cuda/activation.cuh"
#include "retnet/cuda/adamw.cuh"
#include "retnet/cuda/context.cuh"
#include "retnet/cuda/dropout.cuh"
#include "retnet/cuda/elementwise.cuh"
#include "retnet/cuda/embedding.cuh"
#include "retnet/cuda/group_norm.cuh"
#include "retnet/cuda/heads.cuh"
#include "retnet/cuda/linear.cuh"
#include "retnet/cuda/loss.cuh"
#include "retnet/cuda/norm.cuh"
#include "retnet/cuda/precision.cuh"
#include "retnet/cuda/rotation.cuh"
