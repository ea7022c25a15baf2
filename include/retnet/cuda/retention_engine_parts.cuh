#pragma once
// The parts of the chunk engine (retention_engine.cuh): launch constants, the arithmetic of each storage type
// (EngineOps), shared-memory layouts, TileLoader, EngineState and chunk_outputs. The wgmma walks
// (retention_wgmma.cuh, retention_wgmma_f32.cuh) and the engine's kernels are built from them.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "retnet/cuda/mma.cuh"
#include "retnet/cuda/retention_scan.cuh"

namespace retnet::cuda_detail {

inline constexpr int kEngineThreads = 256;
inline constexpr int kEngineRows = 64;  // chunk rows

__device__ __forceinline__ void ldsm_x4(uint32_t (&x)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
               : "r"(smem_addr(p)));
}

// x * w elementwise in bf16x2 (one HMUL2).
__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t x, uint32_t w) {
  __nv_bfloat162 a, b;
  static_assert(sizeof(a) == sizeof(x));
  memcpy(&a, &x, sizeof(x));
  memcpy(&b, &w, sizeof(w));
  const __nv_bfloat162 r = __hmul2(a, b);
  uint32_t out;
  memcpy(&out, &r, sizeof(out));
  return out;
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 r = __floats2bfloat162_rn(lo, hi);
  uint32_t out;
  memcpy(&out, &r, sizeof(out));
  return out;
}

template <class E>
struct EngineOps;

// Fragment access of the engine (g = lane / 4, t = lane % 4), for a shared buffer of W columns:
//   lda_rows : A[m][k] = s(m0 + m, k0 + k)          (Q)
//   lda_cols : A[m][k] = s(k0 + k, m0 + m)          (K^T of the state update)
//   ldb_rows2: B[k][n] = s(n0 + key(n), k0 + k)     (K of S = Q K^T; two n8 blocks)
//   ldb_cols2: B[k][n] = s(k0 + k, n0 + n)          (V; two n8 blocks), optionally times per-row weights
//   store_state, ldb_state2: the copy of the state [DQK, VT] that Q H reads (B[k][n] = H(k0 + k, n0 + n)), in
//              the layout that suits the type
//   key(nt, t, e1): the chunk key of accumulator column 2t + e1 of the n8 block nt of S
//   scores_a : the A fragment of k step kt of S V from S's accumulators, f(nt, e) giving the masked values
//   mma_n    : acc[i] += A B[i] for N n8 blocks
template <>
struct EngineOps<__nv_bfloat16> {
  using E = __nv_bfloat16;
  using P = MmaBf16;
  using A = P::A;
  using B = P::B;
  static constexpr int KS = 16, EPV = 8;
  static constexpr bool kFreshDelta = false;  // the state update accumulates on the tensor cores
  // How TileLoader codes its address arithmetic: it changes only the compiler's register allocation, and the
  // faster coding was measured per policy on the H200 (straight: tf32 fwd+bwd 4.5 % faster, exact float 9 % slower).
  static constexpr bool kStraightLoads = false;
  template <int W>
  static constexpr int pitch = W + 8;
  template <int W>
  __device__ __forceinline__ static int at(int row, int col) {
    return row * pitch<W> + col;
  }
  template <int W>
  __device__ __forceinline__ static void lda_rows(A& a, const E* s, int m0, int k0, int lane) {
    P::lda<false>(a, s, pitch<W>, m0, k0, lane);
  }
  template <int W>
  __device__ __forceinline__ static void lda_cols(A& a, const E* s, int m0, int k0, int lane) {
    P::lda<true>(a, s, pitch<W>, m0, k0, lane);
  }
  template <int W>
  __device__ __forceinline__ static void ldb_rows2(B (&b)[2], const E* s, int n0, int k0, int lane) {
    P::ldb2<false>(b, s, pitch<W>, n0, k0, lane);
  }
  template <int W>
  __device__ __forceinline__ static void ldb_cols2(B (&b)[2], const E* s, int n0, int k0, int lane) {
    P::ldb2<true>(b, s, pitch<W>, n0, k0, lane);
  }
  __device__ __forceinline__ static int key(int nt, int t, int e1) { return nt * 8 + 2 * t + e1; }

  // Decay weights of the V rows this thread loads in k step kt: rows kt*16 + 2t + 8i + {0, 1}, as bf16 pairs.
  template <int LM>
  struct Weights {
    uint32_t w[LM / KS][2];
    template <class F>
    __device__ __forceinline__ void set(int t, F&& weight) {
#pragma unroll
      for (int kt = 0; kt < LM / KS; ++kt)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int j = kt * KS + 2 * t + 8 * i;
          w[kt][i] = pack_bf16x2(weight(j), weight(j + 1));
        }
    }
  };
  template <int W, int LM>
  __device__ __forceinline__ static void ldb_cols2_weighted(B (&b)[2], const E* s, int n0, int kt, int lane,
                                                            const Weights<LM>& w) {
    P::ldb2<true>(b, s, pitch<W>, n0, kt * KS, lane);
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      b[x].r[0] = mul_bf16x2(b[x].r[0], w.w[kt][0]);
      b[x].r[1] = mul_bf16x2(b[x].r[1], w.w[kt][1]);
    }
  }
  template <class F>
  __device__ __forceinline__ static void scores_a(A& a, int kt, F&& f) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int nt = 2 * kt + half;
      a.r[2 * half] = pack_bf16x2(f(nt, 0), f(nt, 1));
      a.r[2 * half + 1] = pack_bf16x2(f(nt, 2), f(nt, 3));
    }
  }
  // The copy of the state [DQK, VT] that Q H reads: stored as it is, read as B[k][n] = H(k0 + k, n0 + n).
  template <int DQK, int VT>
  __device__ __forceinline__ static void store_state(E* s, int row, int col, float x, float y) {
    *reinterpret_cast<uint32_t*>(s + at<VT>(row, col)) = pack_bf16x2(x, y);
  }
  template <int DQK, int VT>
  __device__ __forceinline__ static void ldb_state2(B (&b)[2], const E* s, int n0, int k0, int lane) {
    ldb_cols2<VT>(b, s, n0, k0, lane);
  }
  // The same copy read transposed, B[k][n] = H(n0 + n, k0 + k) (the dk half of the fused backward).
  template <int DQK, int VT>
  __device__ __forceinline__ static void ldb_state2_t(B (&b)[2], const E* s, int n0, int k0, int lane) {
    P::ldb2<false>(b, s, pitch<VT>, n0, k0, lane);
  }
  template <int DQK, int VT>
  static constexpr int state_elems = DQK* pitch<VT>;
  template <int N>
  __device__ __forceinline__ static void mma_n(float (&c)[N][4], const A& a, const B (&b)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) P::mma(c[i], a, b[i]);
  }
};

// Float storage. Exact: three tf32 products per product (float accuracy, about 1e-6). Otherwise one tf32 product
// of operands rounded to tf32 (about 1e-3 relative, as PyTorch's allow_tf32 and fla's float kernels).
template <bool Exact>
struct EngineOpsF32 {
  using E = float;
  struct A {
    uint32_t hi[4], lo[4];
  };
  struct B {
    uint32_t hi[2], lo[2];
  };
  static constexpr int KS = 8, EPV = 4;
  static constexpr bool kFreshDelta = Exact;      // the state update adds each chunk's part in float (accuracy)
  static constexpr bool kStraightLoads = !Exact;  // see EngineOps<__nv_bfloat16>
  template <int W>
  static constexpr int pitch = W;
  // Row r's columns are XOR-ed with 8 (r % 4) + 4 ((r / 4) % 2): eight rows at one column (ldmatrix) and four rows
  // at eight columns (the fragments across rows) both fall on 32 distinct banks. Groups of 4 columns stay together.
  __device__ __forceinline__ static int swz(int row) { return ((row & 3) << 3) | (row & 4); }
  template <int W>
  __device__ __forceinline__ static int at(int row, int col) {
    static_assert(W % 32 == 0, "swizzled rows of a multiple of 32 floats");
    return row * W + (col ^ swz(row));
  }
  // The same offsets written so that the part that moves with a fragment loop's step is a separate term (a
  // constant once the loop is unrolled) and the rest is loop-invariant:
  //   at_rows: row r8 + q with r8 % 8 == 0, q < 8 (the swizzle depends on q only);
  //   at_cols: column c32 + c with c32 % 32 == 0, c < 32 (the swizzle stays within the 32 columns).
  template <int W>
  __device__ __forceinline__ static int at_rows(int r8, int q, int col) {
    return r8 * W + (q * W + (col ^ swz(q)));
  }
  template <int W>
  __device__ __forceinline__ static int at_cols(int row, int c32, int c) {
    return c32 + (row * W + (c ^ swz(row)));
  }
  // x = hi + lo + O(2^-21 x) in tf32. mma.sync reads a tf32 operand from the upper 19 bits of the register and
  // ignores the low 13, so x itself serves as hi (truncated), and lo is what the truncation drops (itself truncated
  // by the mma): two instructions per split.
  // Without Exact, hi is x rounded to tf32 (ties away from zero) and lo is not used.
  __device__ __forceinline__ static void split(float x, uint32_t& hi, uint32_t& lo) {
    if constexpr (Exact) {
      hi = __float_as_uint(x);
      lo = __float_as_uint(x - __uint_as_float(hi & 0xffffe000u));
    } else {
      hi = MmaTf32::round(x);
      lo = 0;
    }
  }
  template <int W>
  __device__ __forceinline__ static void lda_rows(A& a, const E* s, int m0, int k0, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    uint32_t x[4];
    ldsm_x4(x, s + at_cols<W>(m0 + r + 8 * (mat & 1), k0 & ~31, (k0 & 31) + 4 * (mat >> 1)));
#pragma unroll
    for (int i = 0; i < 4; ++i) split(__uint_as_float(x[i]), a.hi[i], a.lo[i]);
  }
  template <int W>
  __device__ __forceinline__ static void lda_cols(A& a, const E* s, int m0, int k0, int lane) {
    const int g = lane >> 2, t = lane & 3;
    split(s[at_rows<W>(k0, t, m0 + g)], a.hi[0], a.lo[0]);
    split(s[at_rows<W>(k0, t, m0 + g + 8)], a.hi[1], a.lo[1]);
    split(s[at_rows<W>(k0, t + 4, m0 + g)], a.hi[2], a.lo[2]);
    split(s[at_rows<W>(k0, t + 4, m0 + g + 8)], a.hi[3], a.lo[3]);
  }
  // Column slot n of an n8 block holds key n / 2 + 4 (n % 2): accumulator columns 2t, 2t + 1 are keys t, t + 4,
  // which are the k positions of the tf32 A fragment.
  template <int W>
  __device__ __forceinline__ static void ldb_rows2(B (&b)[2], const E* s, int n0, int k0, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    uint32_t x[4];
    ldsm_x4(x, s + at_cols<W>(n0 + 8 * (mat >> 1) + (r >> 1) + 4 * (r & 1), k0 & ~31, (k0 & 31) + 4 * (mat & 1)));
    split(__uint_as_float(x[0]), b[0].hi[0], b[0].lo[0]);
    split(__uint_as_float(x[1]), b[0].hi[1], b[0].lo[1]);
    split(__uint_as_float(x[2]), b[1].hi[0], b[1].lo[0]);
    split(__uint_as_float(x[3]), b[1].hi[1], b[1].lo[1]);
  }
  template <int W>
  __device__ __forceinline__ static void ldb_cols2(B (&b)[2], const E* s, int n0, int k0, int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      split(s[at_rows<W>(k0, t, n0 + 8 * x + g)], b[x].hi[0], b[x].lo[0]);
      split(s[at_rows<W>(k0, t + 4, n0 + 8 * x + g)], b[x].hi[1], b[x].lo[1]);
    }
  }
  __device__ __forceinline__ static int key(int nt, int t, int e1) { return nt * 8 + t + 4 * e1; }

  // Decay weights of the V rows this thread loads in k step kt: rows kt*8 + t and kt*8 + t + 4.
  template <int LM>
  struct Weights {
    float w[LM / KS][2];
    template <class F>
    __device__ __forceinline__ void set(int t, F&& weight) {
#pragma unroll
      for (int kt = 0; kt < LM / KS; ++kt) {
        w[kt][0] = weight(kt * KS + t);
        w[kt][1] = weight(kt * KS + t + 4);
      }
    }
  };
  template <int W, int LM>
  __device__ __forceinline__ static void ldb_cols2_weighted(B (&b)[2], const E* s, int n0, int kt, int lane,
                                                            const Weights<LM>& w) {
    const int g = lane >> 2, t = lane & 3, k0 = kt * KS;
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      split(s[at_rows<W>(k0, t, n0 + 8 * x + g)] * w.w[kt][0], b[x].hi[0], b[x].lo[0]);
      split(s[at_rows<W>(k0, t + 4, n0 + 8 * x + g)] * w.w[kt][1], b[x].hi[1], b[x].lo[1]);
    }
  }
  // The accumulators of block kt are (g, key t), (g, key t + 4), (g + 8, key t), (g + 8, key t + 4).
  template <class F>
  __device__ __forceinline__ static void scores_a(A& a, int kt, F&& f) {
    split(f(kt, 0), a.hi[0], a.lo[0]);
    split(f(kt, 2), a.hi[1], a.lo[1]);
    split(f(kt, 1), a.hi[2], a.lo[2]);
    split(f(kt, 3), a.hi[3], a.lo[3]);
  }
  // The copy of the state is stored transposed, [VT, DQK]: Q H then reads its B fragments with ldmatrix.
  template <int DQK, int VT>
  __device__ __forceinline__ static void store_state(E* s, int row, int col, float x, float y) {
    s[at<DQK>(col, row)] = x;
    s[at<DQK>(col + 1, row)] = y;
  }
  template <int DQK, int VT>
  __device__ __forceinline__ static void ldb_state2(B (&b)[2], const E* s, int n0, int k0, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    uint32_t x[4];
    ldsm_x4(x, s + at_cols<DQK>(n0 + 8 * (mat >> 1) + r, k0 & ~31, (k0 & 31) + 4 * (mat & 1)));
    split(__uint_as_float(x[0]), b[0].hi[0], b[0].lo[0]);
    split(__uint_as_float(x[1]), b[0].hi[1], b[0].lo[1]);
    split(__uint_as_float(x[2]), b[1].hi[0], b[1].lo[0]);
    split(__uint_as_float(x[3]), b[1].hi[1], b[1].lo[1]);
  }
  // The same copy read transposed, B[k][n] = H(n0 + n, k0 + k): the stored copy's rows as they are.
  template <int DQK, int VT>
  __device__ __forceinline__ static void ldb_state2_t(B (&b)[2], const E* s, int n0, int k0, int lane) {
    ldb_cols2<DQK>(b, s, n0, k0, lane);
  }
  template <int DQK, int VT>
  static constexpr int state_elems = VT* DQK;
  // The three products of N tiles, product by product: consecutive mma.sync never wait on each other.
  template <int N>
  __device__ __forceinline__ static void mma_n(float (&c)[N][4], const A& a, const B (&b)[N]) {
    if constexpr (Exact) {
#pragma unroll
      for (int i = 0; i < N; ++i) MmaTf32x3::mma1(c[i], a.lo, b[i].hi);
#pragma unroll
      for (int i = 0; i < N; ++i) MmaTf32x3::mma1(c[i], a.hi, b[i].lo);
    }
#pragma unroll
    for (int i = 0; i < N; ++i) MmaTf32x3::mma1(c[i], a.hi, b[i].hi);
  }
};

template <>
struct EngineOps<float> : EngineOpsF32<true> {};

// Float storage with one tf32 product per product (Cuda::allow_tf32).
using EngineOpsTf32 = EngineOpsF32<false>;

// Elements i and i + 1 of an array, as an array of two (fragment loads and mma.sync go by pairs of n8 blocks).
template <class X, int N>
__device__ __forceinline__ X (&pair(X (&x)[N], int i))[2] {
  return *reinterpret_cast<X(*)[2]>(&x[i]);
}

template <class Ops, int DQK, int VT, bool Summary>
struct EngineSmem {
  using E = typename Ops::E;
  static constexpr int LM = kEngineRows;
  static constexpr int QK_ELEMS = LM * Ops::template pitch<DQK>, V_ELEMS = LM * Ops::template pitch<VT>;
  static constexpr int STAGE = (Summary ? 1 : 2) * QK_ELEMS + V_ELEMS;
  static constexpr int H_ELEMS = Summary ? 0 : Ops::template state_elems<DQK, VT>;
  static constexpr int bytes = (2 * STAGE + 2 * H_ELEMS) * static_cast<int>(sizeof(E));
  static constexpr bool fits = bytes <= 227 * 1024;
};

// The fused backward's buffers: four input tiles per stage (two of width DQK, two of width DV).
template <class Ops, int DQK, int DV>
struct DkdvSmem {
  using E = typename Ops::E;
  static constexpr int LM = kEngineRows;
  static constexpr int QK_ELEMS = LM * Ops::template pitch<DQK>, V_ELEMS = LM * Ops::template pitch<DV>;
  static constexpr int STAGE = 2 * QK_ELEMS + 2 * V_ELEMS;
  static constexpr int H_ELEMS = Ops::template state_elems<DQK, DV>;
  static constexpr int bytes = (2 * STAGE + 2 * H_ELEMS) * static_cast<int>(sizeof(E));
  static constexpr bool fits = bytes <= 227 * 1024;
};

// A warp's parts of a chunk: output rows rg*16 .. rg*16 + 15 (row groups w and 3 - w share a scheduler) and one
// half of the output columns (warp / 4).
struct EngineWarp {
  int lane, g, tq, warp, rg;
  __device__ explicit EngineWarp(int tid)
      : lane(tid & 31), g(lane >> 2), tq(lane & 3), warp(tid >> 5), rg(warp < 4 ? warp : 7 - warp) {}
};

// Copies chunks of the (b, h) rows of N tensors [B, T, H, width], columns col0 .. col0 + W - 1, into [LM, W]
// shared tiles in 16-byte cp.async pieces. Each thread's pieces sit at one column of rows r0, r0 + RSTEP, ...:
// the per-thread sources are set once, a chunk adds only its time offsets (shared by the N tensors).
template <class Ops, int W, int N = 1>
struct TileLoader {
  using E = typename Ops::E;
  static constexpr int PIECES = W / Ops::EPV, RSTEP = kEngineThreads / PIECES;
  static_assert(kEngineThreads % PIECES == 0 && kEngineRows % RSTEP == 0, "whole rows per pass of the loader");
  const E* __restrict__ src[N];
  int64_t step;
  int r0, cc;
  __device__ TileLoader(const void* const (&x)[N], int b, int h, int64_t T, int H, int width, int col0, int tid)
      : step(static_cast<int64_t>(H) * width), r0(tid / PIECES), cc((tid % PIECES) * Ops::EPV) {
    const int64_t base = (static_cast<int64_t>(b) * T * H + h) * width + col0 + cc;
#pragma unroll
    for (int i = 0; i < N; ++i) src[i] = static_cast<const E*>(x[i]) + base;
  }
  // Rows r < len of the chunk at position c0 from times phys(c0 + r) = phys(c0) + dir r (dir = +1, or -1 for a
  // reversed walk); the rows past len are zero-filled. Two equivalent codings (see kStraightLoads in the policies): one
  // product per row, or straight-line code with one product per chunk and a constant stride per row.
  template <class Phys>
  __device__ __forceinline__ void load(E* const (&dst)[N], int64_t c0, int len, Phys&& phys, int dir) const {
    if constexpr (Ops::kStraightLoads) {
      const int64_t first = (phys(c0) + dir * r0) * step, stride = dir * RSTEP * step;
#pragma unroll
      for (int i = 0; i < kEngineRows / RSTEP; ++i) {
        const int r = r0 + i * RSTEP;
        const bool ok = r < len;
        const int64_t off = ok ? first + i * stride : 0;
#pragma unroll
        for (int j = 0; j < N; ++j) cp_async16(dst[j] + Ops::template at<W>(r, cc), src[j] + off, ok ? 16 : 0);
      }
    } else {
#pragma unroll
      for (int r = r0; r < kEngineRows; r += RSTEP) {
        const bool ok = r < len;
        const int64_t off = (ok ? phys(c0 + r) : 0) * step;
#pragma unroll
        for (int j = 0; j < N; ++j) cp_async16(dst[j] + Ops::template at<W>(r, cc), src[j] + off, ok ? 16 : 0);
      }
    }
  }
};

// The state update's decay weights gamma^(len-1-j) for the V rows this thread loads (rows at or past len weigh 0),
// recomputed only when the chunk length changes.
template <class Ops>
struct UpdateWeights {
  typename Ops::template Weights<kEngineRows> w;
  int len = -1;
  __device__ __forceinline__ void prepare(int n, int tq, float l2g) {
    if (n == len) return;
    w.set(tq, [&](int j) { return j < n ? exp2f(static_cast<float>(n - 1 - j) * l2g) : 0.f; });
    len = n;
  }
};

// Where an outputs block of segment s writes the final state: the last segment's blocks end the run, if the run
// asks for it (null otherwise).
__device__ __forceinline__ float* final_state_of(const ScanParams& p, int s) {
  return s == p.NS - 1 ? p.final_state : nullptr;
}

// The factor of the final state the last segment's walk writes for (batch, head) bh.
__device__ __forceinline__ float final_state_factor(const ScanParams& p, const HeadDecays& dec, int bh, int h) {
  return final_multiplier(p.final_scale, p.s0 ? static_cast<double>(p.s0[bh]) : 0.0, dec.lng[h], p.T);
}

// The state tile [DQK, VT] in registers: warps 4 (rows) x 2 (columns), each DQK/4 rows x VT/2 columns.
template <class Ops, int DQK, int VT>
struct EngineState {
  using E = typename Ops::E;
  static constexpr int HM = DQK / 64, HN = VT / 16, LM = kEngineRows, KS = Ops::KS;  // m16 and n8 tiles per warp
  float acc[HM][HN][4];
  int m0, n0;
  __device__ explicit EngineState(int warp) : m0((warp & 3) * (DQK / 4)), n0((warp >> 2) * (VT / 2)) {}

  // f(row, col, value) for every element this thread holds.
  template <class F>
  __device__ __forceinline__ void for_each(int lane, F&& f) {
    for_each_acc(acc, m0, n0, lane, f);
  }
  // dst[row * ld + col] = m * H(row, col).
  __device__ __forceinline__ void write(float* __restrict__ dst, int64_t ld, float m, int lane) {
    for_each(lane, [&](int row, int col, float& x) { dst[static_cast<int64_t>(row) * ld + col] = x * m; });
  }
  // The copy of the state that Q H reads.
  __device__ __forceinline__ void store_copy(E* Hs, int lane) const {
    const int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int mt = 0; mt < HM; ++mt)
#pragma unroll
      for (int nt = 0; nt < HN; ++nt)
#pragma unroll
        for (int half = 0; half < 2; ++half)
          Ops::template store_state<DQK, VT>(Hs, m0 + mt * 16 + g + half * 8, n0 + nt * 8 + 2 * tq,
                                             acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]);
  }
  // H <- dl H + K^T diag(w) V, K [LM, DQK] and V [LM, VT] tiles.
  __device__ __forceinline__ void update(const E* Ks, const E* Vs, const UpdateWeights<Ops>& uw, float dl, int lane) {
    const auto& w = uw.w;
    if constexpr (Ops::kFreshDelta) {
      // The chunk's contribution in a fresh accumulator, added in float: tensor-core accumulation into the
      // (large) running state would lose low bits on every product, and the loss grows with the segment.
#pragma unroll
      for (int mt = 0; mt < HM; ++mt) {
        float dacc[HN][4] = {};
#pragma unroll
        for (int kt = 0; kt < LM / KS; ++kt) {
          typename Ops::B bb[HN];
#pragma unroll
          for (int nt = 0; nt < HN; nt += 2)
            Ops::template ldb_cols2_weighted<VT>(pair(bb, nt), Vs, n0 + nt * 8, kt, lane, w);
          typename Ops::A a;
          Ops::template lda_cols<DQK>(a, Ks, m0 + mt * 16, kt * KS, lane);
          Ops::mma_n(dacc, a, bb);
        }
#pragma unroll
        for (int nt = 0; nt < HN; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][nt][e] = fmaf(acc[mt][nt][e], dl, dacc[nt][e]);
      }
    } else {
#pragma unroll
      for (int mt = 0; mt < HM; ++mt)
#pragma unroll
        for (int nt = 0; nt < HN; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][nt][e] *= dl;
#pragma unroll
      for (int kt = 0; kt < LM / KS; ++kt) {
        typename Ops::B bb[HN];
#pragma unroll
        for (int nt = 0; nt < HN; nt += 2)
          Ops::template ldb_cols2_weighted<VT>(pair(bb, nt), Vs, n0 + nt * 8, kt, lane, w);
#pragma unroll
        for (int mt = 0; mt < HM; ++mt) {
          typename Ops::A a;
          Ops::template lda_cols<DQK>(a, Ks, m0 + mt * 16, kt * KS, lane);
          Ops::mma_n(acc[mt], a, bb);
        }
      }
    }
  }
};

// One chunk's outputs for the warp's 16 rows and VW / 2 columns: o = diag(gamma^(i+1)) Q H + (Q K^T . Gamma) V,
// Q and K [LM, QW] tiles, V [LM, VW]. Hs is the state copy [DQK, VT], read as H (QW = DQK, VW = VT) or, with
// Transposed, as H^T (QW = VT, VW = DQK).
template <class Ops, int DQK, int VT, bool Transposed, int VW = Transposed ? DQK : VT>
__device__ __forceinline__ void chunk_outputs(float (&oacc)[VW / 16][4], const EngineWarp& w, const typename Ops::E* Qs,
                                              const typename Ops::E* Ks, const typename Ops::E* Vs,
                                              const typename Ops::E* Hs, float l2g) {
  constexpr int QW = Transposed ? VT : DQK, ON = VW / 2, LM = kEngineRows, KS = Ops::KS;
  const int lane = w.lane, g = w.g, tq = w.tq, rg = w.rg;
  const int ow_m = rg * 16, ow_n = (w.warp >> 2) * ON;
  // S = Q K^T (columns up to the diagonal block) and O = Q H, one Q fragment per k step.
  float sacc[LM / 8][4] = {};
#pragma unroll
  for (int nt = 0; nt < ON / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) oacc[nt][e] = 0.f;
#pragma unroll
  for (int k0 = 0; k0 < QW; k0 += KS) {
    typename Ops::A a;
    Ops::template lda_rows<QW>(a, Qs, ow_m, k0, lane);
#pragma unroll
    for (int nt = 0; nt < LM / 8; nt += 2) {
      if (nt < 2 * (rg + 1)) {
        typename Ops::B bb[2];
        Ops::template ldb_rows2<QW>(bb, Ks, nt * 8, k0, lane);
        Ops::mma_n(pair(sacc, nt), a, bb);
      }
    }
    typename Ops::B hb[ON / 8];
#pragma unroll
    for (int nt = 0; nt < ON / 8; nt += 2) {
      if constexpr (Transposed) {
        Ops::template ldb_state2_t<DQK, VT>(pair(hb, nt), Hs, ow_n + nt * 8, k0, lane);
      } else {
        Ops::template ldb_state2<DQK, VT>(pair(hb, nt), Hs, ow_n + nt * 8, k0, lane);
      }
    }
    Ops::mma_n(oacc, a, hb);
  }
  decay_output_rows(oacc, ow_m, g, l2g);
  // O += (S . Gamma) V, the masked scores as A fragments straight from the accumulators.
  auto masked = [&](int nt, int e) {
    const int i = ow_m + g + (e >> 1) * 8, j = Ops::key(nt, tq, e & 1);
    return i >= j ? sacc[nt][e] * exp2f(static_cast<float>(i - j) * l2g) : 0.f;
  };
#pragma unroll
  for (int kt = 0; kt < LM / KS; ++kt) {
    if (kt * KS < (rg + 1) * 16) {
      typename Ops::A a;
      Ops::scores_a(a, kt, masked);
      typename Ops::B vb[ON / 8];
#pragma unroll
      for (int nt = 0; nt < ON / 8; nt += 2)
        Ops::template ldb_cols2<VW>(pair(vb, nt), Vs, ow_n + nt * 8, kt * KS, lane);
      Ops::mma_n(oacc, a, vb);
    }
  }
}

}  // namespace retnet::cuda_detail
