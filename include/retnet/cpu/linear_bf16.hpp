#pragma once
// Linear layers with bf16 weights and float (or double) activations, for inference only.
//
// Decoding streams every weight once per token, so halving the weight bytes nearly halves its time. Weights
// are stored as the upper 16 bits of a float (bf16, rounded to nearest even); a bf16 value widens to a float
// exactly by a 16-bit left shift, and all products and sums are done in T.
//
//   std::vector<uint16_t> w16(out * in);  to_bf16(w16.data(), w, out * in);
//   linear_forward_bf16(cpu, y, x, w16.data(), n, in, out);      // y [n, out] (=, +=) x [n, in] · W16ᵀ
//
// Few rows (n <= 64: decoding) use a packing-free kernel split over threads by output rows (as linear.hpp's
// small-row kernel); more rows (prefill) widen W to T once and run Eigen's GEMM.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "retnet/core/backend.hpp"
#include "retnet/cpu/linear.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define RETNET_BF16_AVX512 1
#endif

namespace retnet {

// Which copy of the weights Model's inference calls (forward, prefill, step) multiply with.

// float -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN, infinities stay infinite.
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// dst[i] = bf16(src[i]); double is rounded to float first.
template <class T>
void to_bf16(uint16_t* dst, const T* src, int64_t n) {
#pragma omp parallel for schedule(static) if (n > (int64_t(1) << 20))
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16_bits(static_cast<float>(src[i]));
}

namespace cpu_detail {

// dst[0..k) = widened src[0..k)
template <class T>
inline void widen_bf16(T* dst, const uint16_t* src, int64_t k) {
#pragma omp simd
  for (int64_t i = 0; i < k; ++i) dst[i] = static_cast<T>(bf16_bits_to_float(src[i]));
}

#ifdef RETNET_BF16_AVX512
// R rows of x (stride in) against four bf16 weight rows w[0..4) (stride in): each 16-wide slice of a weight row
// is widened in registers (zero-extend, shift) once and used for all R rows, so weights are read once from
// memory and never round-trip through a buffer. pf: where to prefetch from, two 4-row groups ahead; short rows
// (1 KB) switch streams too often for the hardware prefetcher to run ahead on its own.
template <int R>
inline void tile_bf16_avx512(const float* x, const uint16_t* w, int64_t in, float* y, int64_t out, bool accumulate,
                             uintptr_t pf) {
  __m512 s[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) s[r][j] = _mm512_setzero_ps();
  auto wide = [](__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); };
  int64_t i = 0;
  for (; i + 16 <= in; i += 16) {
    // two cache lines per step cover the 8·in bytes of the group two ahead while this one runs
    _mm_prefetch(reinterpret_cast<const char*>(pf + static_cast<uintptr_t>(i) * 8), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(pf + static_cast<uintptr_t>(i) * 8 + 64), _MM_HINT_T0);
    __m512 wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = wide(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * in + i)));
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_loadu_ps(x + r * in + i);
      for (int j = 0; j < 4; ++j) s[r][j] = _mm512_fmadd_ps(xv, wv[j], s[r][j]);
    }
  }
  if (i < in) {  // masked tail: nothing past the rows' ends is read
    const __mmask16 m = static_cast<__mmask16>((1u << (in - i)) - 1u);
    __m512 wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = wide(_mm256_maskz_loadu_epi16(m, w + j * in + i));
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + r * in + i);
      for (int j = 0; j < 4; ++j) s[r][j] = _mm512_fmadd_ps(xv, wv[j], s[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) {
      const float a = _mm512_reduce_add_ps(s[r][j]);
      float& yv = y[r * out + j];
      yv = accumulate ? yv + a : a;
    }
}
#endif

// y[:, lo:hi] (=, +=) x · W16[lo:hi]ᵀ for n <= 64 rows of x. Portable form: four weight rows are widened a
// slice of K columns at a time into an L1 buffer (once, whatever n is), then used for every row of x.
template <class T>
void small_rows_block_bf16(T* y, const T* x, const uint16_t* w, int64_t n, int64_t in, int64_t out, int64_t lo,
                           int64_t hi, bool accumulate) {
  constexpr int64_t K = 512, max_rows = 64;
  alignas(64) T wf[4 * K];
  T acc[4 * max_rows];
  for (int64_t o = lo; o < hi; o += 4) {
    const int64_t m = std::min<int64_t>(4, hi - o);
#ifdef RETNET_BF16_AVX512
    if constexpr (std::is_same_v<T, float>) {
      if (m == 4) {
        const uint16_t* wg = w + o * in;
        const uintptr_t pf = reinterpret_cast<uintptr_t>(wg) + static_cast<uintptr_t>(16 * in);  // 8·in elements on
        int64_t r = 0;
        for (; r + 4 <= n; r += 4) tile_bf16_avx512<4>(x + r * in, wg, in, y + r * out + o, out, accumulate, pf);
        const float* xr = x + r * in;
        float* yr = y + r * out + o;
        switch (n - r) {
          case 3:
            tile_bf16_avx512<3>(xr, wg, in, yr, out, accumulate, pf);
            break;
          case 2:
            tile_bf16_avx512<2>(xr, wg, in, yr, out, accumulate, pf);
            break;
          case 1:
            tile_bf16_avx512<1>(xr, wg, in, yr, out, accumulate, pf);
            break;
          default:
            break;
        }
        continue;
      }
    }
#endif
    std::fill_n(acc, 4 * n, T(0));
    for (int64_t i0 = 0; i0 < in; i0 += K) {
      const int64_t k = std::min(K, in - i0);
      for (int64_t j = 0; j < 4; ++j) {
        if (j < m)
          widen_bf16(wf + j * K, w + (o + j) * in + i0, k);
        else
          std::fill_n(wf + j * K, k, T(0));  // rows past the range: sums discarded, reads kept defined
      }
      const T *w0 = wf, *w1 = wf + K, *w2 = wf + 2 * K, *w3 = wf + 3 * K;
      for (int64_t r = 0; r < n; ++r) {
        T a[4];
        dot4(x + r * in + i0, w0, w1, w2, w3, k, a);
        T* ar = acc + 4 * r;
        for (int j = 0; j < 4; ++j) ar[j] += a[j];
      }
    }
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < m; ++j) {
        T& yv = y[r * out + o + j];
        yv = accumulate ? yv + acc[4 * r + j] : acc[4 * r + j];
      }
  }
}

}  // namespace cpu_detail

// y [n, out] = x [n, in] · W16ᵀ with W16 [out, in] in bf16 bits; accumulate = true adds into y.
template <class T>
void linear_forward_bf16(Cpu, T* y, const T* x, const uint16_t* w, int64_t n, int64_t in, int64_t out,
                         bool accumulate = false) {
  using namespace cpu_detail;
  if (n <= 64) {
    const int64_t parts = (max_threads() > 1 && out * in >= 65536) ? max_threads() : 1;
#pragma omp parallel for schedule(static) if (parts > 1)
    for (int64_t p = 0; p < parts; ++p) {
      // split on multiples of 4 output rows so every thread but the last runs whole groups
      const int64_t groups = (out + 3) / 4;
      const int64_t lo = std::min(out, groups * p / parts * 4), hi = std::min(out, groups * (p + 1) / parts * 4);
      small_rows_block_bf16(y, x, w, n, in, out, lo, hi, accumulate);
    }
    return;
  }
  // Many rows (prefill): widen W once; the GEMM's cost dwarfs the conversion. The OpenMP threads write through a
  // pointer to this thread's buffer: named inside the loop, a thread_local would be each thread's own (empty) one.
  thread_local std::vector<T> wide;
  wide.resize(static_cast<size_t>(out * in));
  T* const wd = wide.data();
#pragma omp parallel for schedule(static) if (out * in >= 65536)
  for (int64_t o = 0; o < out; ++o) widen_bf16(wd + o * in, w + o * in, in);
  linear_forward(cpu, y, x, wd, n, in, out, accumulate);
}

// Forward through the bf16 copy when there is one (w16 non-null), else through the float weights.
template <class T>
void linear_forward_mixed(Cpu, T* y, const T* x, const T* w, const uint16_t* w16, int64_t n, int64_t in, int64_t out,
                          bool accumulate = false) {
  if (w16)
    linear_forward_bf16(cpu, y, x, w16, n, in, out, accumulate);
  else
    linear_forward(cpu, y, x, w, n, in, out, accumulate);
}

}  // namespace retnet
