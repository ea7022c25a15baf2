#pragma once
// Backend tags. Every op takes its backend as the first argument and has one overload per backend.
// retnet::Cuda (a stream and a cuBLAS handle) lives in retnet/cuda/context.cuh.
namespace retnet {

struct Cpu {};
inline constexpr Cpu cpu{};

}  // namespace retnet
