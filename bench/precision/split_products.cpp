// How accurate are split-operand products on tensor cores? A CPU emulation: C = A B with float accumulation of
// products of operand parts, against a double reference (relative Frobenius error). It mirrors what the kernels do:
//   tf32x1: operands rounded to tf32 (allow_tf32);
//   tf32x3: x = hi + lo, hi = x as the tensor cores read it (low 13 bits dropped), lo = x - hi, three products
//           (lo hi + hi lo + hi hi), the exact float path of the mma.sync engine;
//   bf16x1, bf16x2 (hi hi + hi lo + lo hi) and bf16x3 (x = hi + mid + lo, six products: the terms down to 2^-16;
//   bf16x3-5 without mid mid).
// Not emulated: the tensor cores' internal accumulation order and alignment, so these are lower bounds on the error.
// Usage: split_products [K ...] (default 64 128 256); prints one row per scheme and K.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

namespace {

float from_bits(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof(x));
  return x;
}
uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}
float to_bf16(float x) {  // round to nearest even
  const uint32_t b = bits_of(x);
  return from_bits((b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u);
}
float tf32_read(float x) { return from_bits(bits_of(x) & 0xffffe000u); }          // what the tensor cores read
float tf32_round(float x) { return tf32_read(from_bits(bits_of(x) + 0x1000u)); }  // allow_tf32's rounding

using Parts = std::vector<float>;  // an operand split into parts, largest first
using Split = Parts (*)(float);
using Products = std::vector<std::pair<int, int>>;  // which (a part, b part) products are summed

Parts tf32x1(float x) { return {tf32_round(x)}; }
Parts tf32x3(float x) { return {tf32_read(x), tf32_read(x - tf32_read(x))}; }
Parts bf16_parts(float x, int n) {
  Parts p;
  float rest = x;
  for (int i = 0; i < n; ++i) {
    p.push_back(to_bf16(rest));
    rest -= p.back();
  }
  return p;
}
Parts bf16x1(float x) { return bf16_parts(x, 1); }
Parts bf16x2(float x) { return bf16_parts(x, 2); }
Parts bf16x3(float x) { return bf16_parts(x, 3); }

double relative_error(int M, int N, int K, Split split, const Products& products, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  std::vector<float> A(static_cast<size_t>(M) * K), B(static_cast<size_t>(K) * N);
  for (float& x : A) x = u(rng);
  for (float& x : B) x = u(rng);
  std::vector<Parts> a(A.size()), b(B.size());
  for (size_t i = 0; i < A.size(); ++i) a[i] = split(A[i]);
  for (size_t i = 0; i < B.size(); ++i) b[i] = split(B[i]);
  double err = 0, ref = 0;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double exact = 0;
      float acc = 0;
      for (const auto& [pa, pb] : products)
        for (int k = 0; k < K; ++k) acc += a[m * K + k][pa] * b[k * N + n][pb];  // products of parts are exact
      for (int k = 0; k < K; ++k) exact += static_cast<double>(A[m * K + k]) * B[k * N + n];
      err += (acc - exact) * (acc - exact);
      ref += exact * exact;
    }
  return std::sqrt(err / ref);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> ks;
  for (int i = 1; i < argc; ++i) ks.push_back(std::atoi(argv[i]));
  if (ks.empty()) ks = {64, 128, 256};
  struct Scheme {
    const char* name;
    Split split;
    Products products;
  };
  const Scheme schemes[] = {
      {"float", [](float x) { return Parts{x}; }, {{0, 0}}},
      {"tf32x1", tf32x1, {{0, 0}}},
      {"tf32x3", tf32x3, {{1, 0}, {0, 1}, {0, 0}}},
      {"bf16x1", bf16x1, {{0, 0}}},
      {"bf16x2", bf16x2, {{1, 0}, {0, 1}, {0, 0}}},
      {"bf16x3", bf16x3, {{1, 1}, {2, 0}, {0, 2}, {1, 0}, {0, 1}, {0, 0}}},
      {"bf16x3-5", bf16x3, {{2, 0}, {0, 2}, {1, 0}, {0, 1}, {0, 0}}},  // without mid mid
  };
  std::printf("%-8s %6s %12s\n", "scheme", "K", "rel. error");
  for (const Scheme& s : schemes)
    for (int K : ks) {
      std::mt19937 rng(1234);
      std::printf("%-8s %6d %12.3e\n", s.name, K, relative_error(64, 64, K, s.split, s.products, rng));
    }
  return 0;
}
