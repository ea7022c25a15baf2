// The CUDA ops that fla's RetNet adds (grouped heads: repeat_heads_forward / backward) against the CPU definition,
// in float (bit for bit: copies, and sums of at most a few float values in the same order) and bf16, over odd
// sizes and a misaligned start. The model-level fla semantics are checked on the CPU (tests/io/test_fla_format.cpp).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "gpu_test.hpp"
#include "retnet/cuda/ops.cuh"

namespace {

template <class T>
T to_t(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else
    return __float2bfloat16(x);
}
template <class T>
float from_t(T x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else
    return __bfloat162float(x);
}

template <class T>
struct DevBuf {
  T* base = nullptr;
  T* p = nullptr;
  DevBuf(const std::vector<T>& host, size_t offset) {
    RETNET_CUDA_CHECK(cudaMalloc(&base, (host.size() + offset + 1) * sizeof(T)));
    p = base + offset;
    if (!host.empty()) RETNET_CUDA_CHECK(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DevBuf() { cudaFree(base); }
  std::vector<T> get(size_t n) const {
    std::vector<T> h(n);
    if (n) RETNET_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

template <class T>
void check_repeat_heads(int64_t rows, int64_t kv, int64_t group, int64_t width, size_t offset) {
  INFO((std::is_same_v<T, float> ? "float" : "bf16")
       << " rows " << rows << " kv " << kv << " group " << group << " width " << width << " offset " << offset);
  retnet::Cuda ctx;
  std::mt19937 g(static_cast<unsigned>(rows * 131 + kv * 17 + group * 7 + width));
  std::normal_distribution<float> nd;
  const int64_t H = kv * group;
  std::vector<T> x(static_cast<size_t>(rows * kv * width)), dy(static_cast<size_t>(rows * H * width));
  for (auto& v : x) v = to_t<T>(nd(g));
  for (auto& v : dy) v = to_t<T>(nd(g));
  DevBuf<T> dx_in(x, offset), y(std::vector<T>(dy.size()), offset), dyd(dy, offset),
      dxd(std::vector<T>(x.size()), offset);
  retnet::repeat_heads_forward(ctx, y.p, dx_in.p, rows, kv, group, width);
  retnet::repeat_heads_backward(ctx, dxd.p, dyd.p, rows, kv, group, width);
  RETNET_CUDA_CHECK(cudaDeviceSynchronize());
  const auto yh = y.get(dy.size()), dxh = dxd.get(x.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < width; ++j)
        REQUIRE(from_t(yh[static_cast<size_t>((r * H + h) * width + j)]) ==
                from_t(x[static_cast<size_t>((r * kv + h / group) * width + j)]));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < kv; ++h)
      for (int64_t j = 0; j < width; ++j) {
        float s = 0;
        for (int64_t k = 0; k < group; ++k)
          s += from_t(dy[static_cast<size_t>(((r * kv + h) * group + k) * width + j)]);
        REQUIRE(from_t(dxh[static_cast<size_t>((r * kv + h) * width + j)]) == from_t(to_t<T>(s)));
      }
}

}  // namespace

TEST_CASE("CUDA repeat_heads matches the CPU definition (grouped key/value heads)", "[cuda][fla]") {
  if (!retnet_test::have_gpu()) return;
  for (size_t offset : {size_t{0}, size_t{1}}) {
    check_repeat_heads<float>(7, 2, 2, 6, offset);
    check_repeat_heads<float>(33, 1, 4, 5, offset);
    check_repeat_heads<float>(3, 3, 1, 256, offset);
    check_repeat_heads<float>(0, 2, 2, 6, offset);
    check_repeat_heads<__nv_bfloat16>(7, 2, 2, 6, offset);
    check_repeat_heads<__nv_bfloat16>(65, 2, 4, 12, offset);
  }
  retnet::Cuda ctx;
  CHECK_THROWS_AS(retnet::repeat_heads_forward<float>(ctx, nullptr, nullptr, 1, 1, 0, 1), retnet::Error);
}
