#pragma once
// The CPU reference of the GPU tests, computed in double by the CPU backend in its own translation unit
// (cpu_reference.cpp), so that no Eigen code reaches nvcc.
#include <cstdint>
#include <vector>

#include "retnet/core/config.hpp"
#include "retnet/core/retention_args.hpp"

namespace retnet_test {

struct RefProblem {
  int64_t B = 1, T = 1, H = 1, dk = 64, dv = 64;
  std::vector<double> q, k, v;     // [B, T, H, dk|dv]
  std::vector<double> kv0, s0;     // initial state (empty: none)
  std::vector<double> d_o, d_kv1;  // gradients in (d_kv1 empty: none)
};

struct RefForward {
  std::vector<double> o, kv1, s1;
};
struct RefBackward {
  std::vector<double> dq, dk, dv, dkv0;
};

RefForward ref_forward(retnet::Form form, const retnet::RetentionConfig& cfg, const RefProblem& p);
RefBackward ref_backward(retnet::Form form, const retnet::RetentionConfig& cfg, const RefProblem& p);
// One decoding step in place: q, k [B, H, dk], v [B, H, dv]; kv [B, H, dk, dv], s [B, H]; returns o [B, H, dv].
std::vector<double> ref_step(const retnet::RetentionConfig& cfg, int64_t B, const std::vector<double>& q,
                             const std::vector<double>& k, const std::vector<double>& v, std::vector<double>& kv,
                             std::vector<double>& s);

}  // namespace retnet_test
