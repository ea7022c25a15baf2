#pragma once
// The engine shared by every retention form on the GPU: raw retention by chunks, in three kernels.
//
//   r_n = q_n U_n,   U_n = gamma U_{n-1} + k_n^T v_n,   U_{-1} = U0 (scaled), optionally o_n = mu_n r_n
//
// The sequence of every (batch, head) is cut into segments of `seg` rows, each into chunks of L <= LM rows.
//   1. scan_kernel<Summary=true>: per (summary segment, value tile), the summary segment's own state contribution
//      Delta_f = sum_m gamma^(end - m) k_m^T v_m (tensor cores, chunk by chunk). A segment may be summed by `sub`
//      blocks of seg / sub rows each, and the last needs none where the outputs pass writes the final state.
//   2. prefix_kernel: per (batch, head), elementwise across summaries: H_{f+1} = gamma^len H_f + Delta_f, with
//      H_0 = U0; the states entering segments are written over the summaries (slot s * sub for segment s); the
//      final state; and, for torchscale's chunkwise normaliser, the column sums of |H_s|.
//   3. scan_kernel<Summary=false>: per (segment, value tile), walks its chunks with the state tile in registers:
//      O = diag(gamma^(i+1)) Q H + (Q K^T . Gamma) V, then H <- gamma^L H + K^T diag(gamma^(L-1-j)) V.
// A `reverse` flag walks time backwards, which turns the same kernels into the backward pass (see
// retention_chunkwise.cuh). Only the state at segment boundaries touches device memory. Passes 1 and 3 run on
// chunk_engine_kernel (retention_engine.cuh); scan_kernel serves float with head size 256 where the wgmma walks are
// not built (builds without sm_90a, or devices other than compute capability 9.0).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "retnet/cuda/context.cuh"
#include "retnet/cuda/mma.cuh"
#include "retnet/cuda/tma.cuh"

namespace retnet::cuda_detail {

inline constexpr int kMaxHeads = 256;
inline constexpr int kThreads = 256;  // 8 warps per scan_kernel block of kVTile value columns
inline constexpr int kVTile = 64;     // value columns per scan_kernel block

struct HeadDecays {
  float log2g[kMaxHeads];  // log2(gamma_h)
  double lng[kMaxHeads];   // ln(gamma_h)
};

// How the initial state enters and the final state leaves a run.
enum class InitScale { one, sqrt_s0, rsqrt_final_over_gamma, inv_gamma };
enum class FinalScale { one, rsqrt_final, gamma_sqrt_s0, gamma };

__device__ __forceinline__ double final_scale_of(double s0, double lng, int64_t T) {
  return s0 * exp(static_cast<double>(T) * lng) + expm1(static_cast<double>(T) * lng) / expm1(lng);
}

// The factor of the final state leaving a run of length T (s0: the entering scale, lng: ln gamma).
__device__ __forceinline__ float final_multiplier(FinalScale fs, double s0, double lng, int64_t T) {
  switch (fs) {
    case FinalScale::rsqrt_final:
      return static_cast<float>(1.0 / sqrt(final_scale_of(s0, lng, T)));
    case FinalScale::gamma_sqrt_s0:
      return static_cast<float>(exp(lng) * sqrt(s0));
    case FinalScale::gamma:
      return static_cast<float>(exp(lng));
    default:
      return 1.f;
  }
}

struct ScanParams {
  const void* q;    // [B, T, H, dqk]
  const void* k;    // [B, T, H, dqk]
  const void* v;    // [B, T, H, dv]
  const void* x;    // the fused backward's fourth input v [B, T, H, dv] (q, k, v hold k, q, g there)
  void* o;          // [B, T, H, dv] (not used by the summary pass)
  void* o2;         // the fused backward's second output dk [B, T, H, dqk]
  const float* mu;  // [B, T, H] row multipliers of o, or null
  float* states;    // [B*H, slots, dqk, dv]: Delta_f after pass 1, H_s at slot s * sub after pass 2 (or, for
                    // a single-segment run, the initial state or zeros: Geometry::init_direct)
  int64_t T;
  int H, dv;
  int L, seg, NS;  // this pass's segments: NS of seg rows (the summary pass's may be shorter than the outputs pass's)
  int slots, sub;  // state slots per (batch, head); slots per segment of this pass (the summary pass: 1)
  int reverse;
  int states_transposed;  // outputs pass: states holds [B*H, slots, dv, dqk] (another run's states, transposed)
  // Chunk-engine outputs passes: the blocks of the last segment write the final state [B, H, dqk, dv] (times
  // final_multiplier), so that segment needs no summary. Null otherwise (the prefix pass writes it).
  float* final_state;
  const float* s0;  // [B, H] entering scales, or null (0)
  FinalScale final_scale;
  // Where a wgmma walk loads its chunks through TMA (tma = 1: kWgmmaTmaWalk, kWgmmaDkdv; 0: cp.async): the tensor
  // maps of q, k, v and x. A kernel reads them in place, so its ScanParams parameter is __grid_constant__.
  int tma;
  CUtensorMap tma_q, tma_k, tma_v, tma_x;
};

// Offset of the state slot of this pass's segment s of (batch, head) bh in p.states.
template <int DQK>
__device__ __forceinline__ int64_t state_offset(const ScanParams& p, int bh, int s) {
  return (static_cast<int64_t>(bh) * p.slots + static_cast<int64_t>(s) * p.sub) * DQK * p.dv;
}

// Entering state (row, col) of the value tile at column v0, segment s, (batch, head) bh; with
// p.states_transposed the buffer holds [dv, DQK] states (another run's, or a transposed initial state).
template <int DQK>
__device__ __forceinline__ float entering_state(const ScanParams& p, int bh, int s, int v0, int row, int col) {
  const int64_t base = state_offset<DQK>(p, bh, s);
  return p.states_transposed ? p.states[base + static_cast<int64_t>(v0 + col) * DQK + row]
                             : p.states[base + static_cast<int64_t>(row) * p.dv + v0 + col];
}

// f(row, col, value) for every element of a warp's m16n8 accumulator tiles acc[M][N] whose origin is (m0, n0).
template <int M, int N, class F>
__device__ __forceinline__ void for_each_acc(float (&acc)[M][N][4], int m0, int n0, int lane, F&& f) {
  const int g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int mt = 0; mt < M; ++mt)
#pragma unroll
    for (int nt = 0; nt < N; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) f(m0 + mt * 16 + g + (e >> 1) * 8, n0 + nt * 8 + 2 * tq + (e & 1), acc[mt][nt][e]);
}

// Rows i = row0 + g and row0 + g + 8 of a warp's 16-row output tile acc times gamma^(i+1): Q H's decay from the
// state entering the chunk.
template <int N>
__device__ __forceinline__ void decay_output_rows(float (&acc)[N][4], int row0, int g, float l2g) {
  const float al0 = exp2f(static_cast<float>(row0 + g + 1) * l2g);
  const float al1 = exp2f(static_cast<float>(row0 + g + 9) * l2g);
#pragma unroll
  for (int nt = 0; nt < N; ++nt) {
    acc[nt][0] *= al0;
    acc[nt][1] *= al0;
    acc[nt][2] *= al1;
    acc[nt][3] *= al1;
  }
}

// Writes a warp's 16-row output tile acc (columns col0 + 8 nt + 2 tq + {0, 1} of the rows of o, [B, T, H, width])
// for chunk rows row0 + g and row0 + g + 8 of the chunk at sequence position c0, each row times its multiplier
// mu; rows at or past len are padding.
template <class E, int N>
__device__ __forceinline__ void store_output_tile(void* o, int width, const ScanParams& p, const float (&acc)[N][4],
                                                  int b, int h, int64_t c0, int len, int row0, int col0, int lane) {
  E* __restrict__ og = static_cast<E*>(o);
  const int g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = row0 + g + half * 8;
    if (i < len) {
      const int64_t t = p.reverse ? p.T - 1 - (c0 + i) : c0 + i;
      const int64_t row = (static_cast<int64_t>(b) * p.T + t) * p.H + h;
      const float m = p.mu ? p.mu[row] : 1.f;
      E* orow = og + row * width + col0;
#pragma unroll
      for (int nt = 0; nt < N; ++nt) {
        const float x = acc[nt][2 * half] * m, y = acc[nt][2 * half + 1] * m;
        if constexpr (sizeof(E) == 2) {
          *reinterpret_cast<__nv_bfloat162*>(orow + nt * 8 + 2 * tq) = __floats2bfloat162_rn(x, y);
        } else {
          *reinterpret_cast<float2*>(orow + nt * 8 + 2 * tq) = make_float2(x, y);
        }
      }
    }
  }
}

template <class P, int DQK, int LM, bool Summary>
struct ScanSmem {
  using E = typename P::T;
  static constexpr int VT = kVTile;
  static constexpr int PAD = 16 / sizeof(E);
  static constexpr int LDQ = DQK + PAD, LDV = VT + PAD, LDA = LM + PAD;
  static constexpr int QK_ELEMS = LM * LDQ, V_ELEMS = LM * LDV;
  static constexpr int STAGE = (Summary ? 1 : 2) * QK_ELEMS + V_ELEMS;
  static constexpr int H_ELEMS = Summary ? 0 : DQK * LDV;
  static constexpr int A_ELEMS = Summary ? 0 : LM * LDA;
  static constexpr int VB_ELEMS = V_ELEMS;
  static constexpr int fixed_bytes = (H_ELEMS + A_ELEMS + VB_ELEMS) * static_cast<int>(sizeof(E));
  static constexpr int stage_bytes = STAGE * static_cast<int>(sizeof(E));
  // Two blocks per multiprocessor beat double buffering inside one block: double-buffer only where two
  // double-buffered blocks still fit, else single-buffer where that gives two blocks, else whatever fits.
  static constexpr int kSmemPerSm = 227 * 1024;
  static constexpr int STAGES = 2 * (2 * stage_bytes + fixed_bytes + 1024) <= kSmemPerSm ? 2
                                : 2 * (stage_bytes + fixed_bytes + 1024) <= kSmemPerSm   ? 1
                                : 2 * stage_bytes + fixed_bytes <= kSmemPerSm            ? 2
                                                                                         : 1;
  static constexpr int min_blocks = 2 * (STAGES * stage_bytes + fixed_bytes + 1024) <= kSmemPerSm ? 2 : 1;
  static constexpr int bytes = (STAGES * STAGE + H_ELEMS + A_ELEMS + VB_ELEMS) * static_cast<int>(sizeof(E));
};

// grid (dv / kVTile, NS, B * H), block kThreads.
template <class P, int DQK, int LM, bool Summary>
__global__ void __launch_bounds__(kThreads, (ScanSmem<P, DQK, LM, Summary>::min_blocks))
    scan_kernel(ScanParams p, HeadDecays dec) {
  using E = typename P::T;
  using SM = ScanSmem<P, DQK, LM, Summary>;
  constexpr int LDQ = SM::LDQ, LDV = SM::LDV, LDA = SM::LDA, STAGE = SM::STAGE, NST = SM::STAGES;
  constexpr int KS = P::KS, VT = kVTile;
  constexpr int NT = kThreads, NW = NT / 32;  // threads, warps
  static_assert(NW / 4 * 32 == VT, "state tile: 4 row groups x 32-column groups of warps cover the value tile");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  E* smem = reinterpret_cast<E*>(smem_raw);
  E* Hs = smem + NST * STAGE;
  E* As = Hs + SM::H_ELEMS;
  E* Vb = As + SM::A_ELEMS;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tq = lane & 3;
  const int vt = blockIdx.x, s = blockIdx.y, bh = blockIdx.z;
  const int b = bh / p.H, h = bh % p.H;
  const int64_t T = p.T;
  const float l2g = dec.log2g[h];
  const int64_t seg_start = static_cast<int64_t>(s) * p.seg;
  const int seg_len = static_cast<int>(min(static_cast<int64_t>(p.seg), T - seg_start));
  const int nchunks = (seg_len + p.L - 1) / p.L;
  const int H = p.H, dv = p.dv;
  const E* __restrict__ qg = static_cast<const E*>(p.q);
  const E* __restrict__ kg = static_cast<const E*>(p.k);
  const E* __restrict__ vg = static_cast<const E*>(p.v);

  auto phys = [&](int64_t pos) { return p.reverse ? T - 1 - pos : pos; };

  // Issue the copies of chunk c into stage buffer st.
  auto load_chunk = [&](int c, int st) {
    E* Qs = smem + st * STAGE;
    E* Ks = Summary ? Qs : Qs + SM::QK_ELEMS;
    E* Vs = Ks + SM::QK_ELEMS;
    const int64_t c0 = seg_start + static_cast<int64_t>(c) * p.L;
    const int len = min(p.L, seg_len - c * p.L);
    constexpr int EPV = 16 / sizeof(E);  // elements per 16-byte piece
    constexpr int QK_PIECES = DQK / EPV, V_PIECES = VT / EPV;
    for (int i = tid; i < LM * QK_PIECES; i += NT) {
      const int r = i / QK_PIECES, cc = (i % QK_PIECES) * EPV;
      const bool ok = r < len;
      const int64_t t = ok ? phys(c0 + r) : 0;
      const int64_t off = ((static_cast<int64_t>(b) * T + t) * H + h) * DQK + cc;
      if constexpr (!Summary) cp_async16(Qs + r * LDQ + cc, qg + off, ok ? 16 : 0);
      cp_async16(Ks + r * LDQ + cc, kg + off, ok ? 16 : 0);
    }
    for (int i = tid; i < LM * V_PIECES; i += NT) {
      const int r = i / V_PIECES, cc = (i % V_PIECES) * EPV;
      const bool ok = r < len;
      const int64_t t = ok ? phys(c0 + r) : 0;
      const int64_t off = ((static_cast<int64_t>(b) * T + t) * H + h) * dv + vt * VT + cc;
      cp_async16(Vs + r * LDV + cc, vg + off, ok ? 16 : 0);
    }
    cp_async_commit();
  };

  // State tile [DQK, VT] in registers: warps 4 (rows) x NW/4 (cols), each DQK/4 rows x 32 columns.
  constexpr int HM = DQK / 64;  // m16 tiles per warp
  const int hw_m = (warp & 3) * (DQK / 4), hw_n = (warp >> 2) * 32;
  float hacc[HM][4][4];
  float* __restrict__ st_g = p.states + state_offset<DQK>(p, bh, s) + vt * VT;
  for_each_acc(hacc, hw_m, hw_n, lane, [&](int row, int col, float& x) {
    x = Summary ? 0.f : entering_state<DQK>(p, bh, s, vt * VT, row, col);
  });
  if constexpr (!Summary) {
    for_each_acc(hacc, hw_m, hw_n, lane, [&](int row, int col, float& x) { Hs[row * LDV + col] = P::from_float(x); });
  }

  // Output / score tiles: warps WMO (rows) x WNO (cols).
  constexpr int WMO = LM / 16, WNO = NW / WMO;
  constexpr int ON = VT / WNO, SN = LM / WNO;  // columns per warp of O and of S
  static_assert(WMO * WNO == NW && ON % 16 == 0 && SN % 8 == 0, "warp layout of the O and S tiles");
  const int ow_m = (warp % WMO) * 16, ow_n = (warp / WMO) * ON, sw_n = (warp / WMO) * SN;

  load_chunk(0, 0);
  for (int c = 0; c < nchunks; ++c) {
    const int st = NST == 2 ? (c & 1) : 0;
    E* Qs = smem + st * STAGE;
    E* Ks = Summary ? Qs : Qs + SM::QK_ELEMS;
    E* Vs = Ks + SM::QK_ELEMS;
    const int len = min(p.L, seg_len - c * p.L);
    cp_async_wait<0>();
    __syncthreads();  // (A) chunk c visible; everyone is past chunk c-1
    if (NST == 2 && c + 1 < nchunks) load_chunk(c + 1, st ^ 1);

    // Vb = diag(gamma^(len-1-j)) V
    for (int i = tid; i < LM * VT; i += NT) {
      const int r = i / VT, cc = i % VT;
      const float w = r < len ? exp2f(static_cast<float>(len - 1 - r) * l2g) : 0.f;
      Vb[r * LDV + cc] = P::from_float(P::to_float(Vs[r * LDV + cc]) * w);
    }
    if constexpr (!Summary) {
      // S = Q K^T, masked and decayed, into As.
      float sacc[SN / 8][4] = {};
#pragma unroll
      for (int k0 = 0; k0 < DQK; k0 += KS) {
        typename P::A a;
        P::template lda<false>(a, Qs, LDQ, ow_m, k0, lane);
        if constexpr (SN % 16 == 0) {
#pragma unroll
          for (int nt = 0; nt < SN / 8; nt += 2) {
            typename P::B bb[2];
            P::template ldb2<false>(bb, Ks, LDQ, sw_n + nt * 8, k0, lane);
            P::mma(sacc[nt], a, bb[0]);
            P::mma(sacc[nt + 1], a, bb[1]);
          }
        } else {
#pragma unroll
          for (int nt = 0; nt < SN / 8; ++nt) {
            typename P::B bb;
            P::template ldb1<false>(bb, Ks, LDQ, sw_n + nt * 8, k0, lane);
            P::mma(sacc[nt], a, bb);
          }
        }
      }
#pragma unroll
      for (int nt = 0; nt < SN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = ow_m + g + (e >> 1) * 8, j = sw_n + nt * 8 + 2 * tq + (e & 1);
          const float val = i >= j ? sacc[nt][e] * exp2f(static_cast<float>(i - j) * l2g) : 0.f;
          As[i * LDA + j] = P::from_float(val);
        }
    }
    __syncthreads();  // (B) As, Vb ready

    if constexpr (!Summary) {
      // O = diag(gamma^(i+1)) Q H + As V
      float oacc[ON / 8][4] = {};
#pragma unroll
      for (int k0 = 0; k0 < DQK; k0 += KS) {
        typename P::A a;
        P::template lda<false>(a, Qs, LDQ, ow_m, k0, lane);
#pragma unroll
        for (int nt = 0; nt < ON / 8; nt += 2) {
          typename P::B bb[2];
          P::template ldb2<true>(bb, Hs, LDV, ow_n + nt * 8, k0, lane);
          P::mma(oacc[nt], a, bb[0]);
          P::mma(oacc[nt + 1], a, bb[1]);
        }
      }
      decay_output_rows(oacc, ow_m, g, l2g);
#pragma unroll
      for (int k0 = 0; k0 < LM; k0 += KS) {
        typename P::A a;
        P::template lda<false>(a, As, LDA, ow_m, k0, lane);
#pragma unroll
        for (int nt = 0; nt < ON / 8; nt += 2) {
          typename P::B bb[2];
          P::template ldb2<true>(bb, Vs, LDV, ow_n + nt * 8, k0, lane);
          P::mma(oacc[nt], a, bb[0]);
          P::mma(oacc[nt + 1], a, bb[1]);
        }
      }
      store_output_tile<E>(p.o, p.dv, p, oacc, b, h, seg_start + static_cast<int64_t>(c) * p.L, len, ow_m,
                           vt * VT + ow_n, lane);
    }

    // H <- gamma^len H + K^T Vb
    {
      const float dl = exp2f(static_cast<float>(len) * l2g);
#pragma unroll
      for (int mt = 0; mt < HM; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) hacc[mt][nt][e] *= dl;
#pragma unroll
      for (int k0 = 0; k0 < LM; k0 += KS) {
        typename P::B bb[4];
        P::template ldb2<true>(*reinterpret_cast<typename P::B(*)[2]>(&bb[0]), Vb, LDV, hw_n, k0, lane);
        P::template ldb2<true>(*reinterpret_cast<typename P::B(*)[2]>(&bb[2]), Vb, LDV, hw_n + 16, k0, lane);
#pragma unroll
        for (int mt = 0; mt < HM; ++mt) {
          typename P::A a;
          P::template lda<true>(a, Ks, LDQ, hw_m + mt * 16, k0, lane);
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) P::mma(hacc[mt][nt], a, bb[nt]);
        }
      }
    }
    __syncthreads();  // (C) everyone is done with Hs, Qs/Ks/Vs of this stage, Vb
    if constexpr (!Summary) {
      if (c + 1 < nchunks) {
        for_each_acc(hacc, hw_m, hw_n, lane,
                     [&](int row, int col, float& x) { Hs[row * LDV + col] = P::from_float(x); });
      }
    }
    if (NST == 1 && c + 1 < nchunks) load_chunk(c + 1, 0);
  }
  if constexpr (Summary) {
    for_each_acc(hacc, hw_m, hw_n, lane,
                 [&](int row, int col, float& x) { st_g[static_cast<int64_t>(row) * dv + col] = x; });
  }
}

struct PrefixParams {
  float* states;       // [B*H, slots, dqk, dv]: the summaries Delta_f in, the entering states H_s out (slot s * sub)
  const float* init;   // [B, H, dqk, dv], or [B, H, dv, dqk] when init_transposed; may be null
  const float* s0;     // [B, H] or null (0)
  float* final_state;  // [B, H, dqk, dv] or null (then the summaries need not cover the sequence)
  float* colsum;       // [B*H, NS, dv] of |H_s| column sums, or null
  int64_t T;
  int H, dqk, dv;
  int seg;        // rows per summary segment
  int summaries;  // summary segments per (batch, head) (0: no summary pass ran)
  int NS, sub;    // the outputs pass's segments, each sub summary segments long
  int slots;      // state slots per (batch, head)
  int init_transposed;
  InitScale init_scale;
  FinalScale final_scale;
};

// grid (B*H, dv/32), block 256 = 32 value columns x 8 row slices.
template <int DQK>
__global__ void __launch_bounds__(256) prefix_kernel(PrefixParams p, HeadDecays dec) {
  constexpr int R = DQK / 8;
  __shared__ float red[8][32];
  const int bh = blockIdx.x, h = bh % p.H;
  const int v = blockIdx.y * 32 + (threadIdx.x & 31), ks = threadIdx.x >> 5;
  const int dv = p.dv;
  const double s0 = p.s0 ? static_cast<double>(p.s0[bh]) : 0.0;
  const double lng = dec.lng[h];
  float im = 1.f;
  if (p.init_scale == InitScale::sqrt_s0) im = static_cast<float>(sqrt(s0));
  if (p.init_scale == InitScale::inv_gamma) im = static_cast<float>(exp(-lng));
  if (p.init_scale == InitScale::rsqrt_final_over_gamma)
    im = static_cast<float>(1.0 / (sqrt(final_scale_of(s0, lng, p.T)) * exp(lng)));
  float carry[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int kk = ks + 8 * r;
    float x = 0.f;
    if (p.init)
      x = p.init_transposed ? p.init[(static_cast<int64_t>(bh) * dv + v) * DQK + kk]
                            : p.init[(static_cast<int64_t>(bh) * DQK + kk) * dv + v];
    carry[r] = x * im;
  }
  const float l2g = dec.log2g[h];
  // The summaries are independent loads and only the carry is a chain, so they are loaded G at a time before the
  // slots among them are written (a thread's loads do not wait for its stores, and the compiler cannot tell that
  // they never alias).
  constexpr int G = DQK <= 128 ? 4 : 2;
  auto slot_ptr = [&](int f) { return p.states + (static_cast<int64_t>(bh) * p.slots + f) * DQK * dv + v; };
  for (int f0 = 0;; f0 += G) {
    float d[G][R];
#pragma unroll
    for (int i = 0; i < G; ++i) {
      if (f0 + i < p.summaries) {
        const float* src = slot_ptr(f0 + i);
#pragma unroll
        for (int r = 0; r < R; ++r) d[i][r] = src[static_cast<int64_t>(ks + 8 * r) * dv];
      }
    }
    bool done = false;
#pragma unroll
    for (int i = 0; i < G && !done; ++i) {
      const int f = f0 + i, s = f / p.sub;
      if (f % p.sub == 0 && s < p.NS) {  // carry is H_s, the state entering segment s
        float* st = slot_ptr(f);
        float cs = 0.f;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          st[static_cast<int64_t>(ks + 8 * r) * dv] = carry[r];
          cs += fabsf(carry[r]);
        }
        if (p.colsum) {
          red[ks][threadIdx.x & 31] = cs;
          __syncthreads();
          if (ks == 0) {
            float t = 0.f;
#pragma unroll
            for (int j = 0; j < 8; ++j) t += red[j][threadIdx.x & 31];
            p.colsum[(static_cast<int64_t>(bh) * p.NS + s) * dv + v] = t;
          }
          __syncthreads();
        }
      }
      if (f == p.summaries) {
        done = true;
      } else {
        const int len = static_cast<int>(min(static_cast<int64_t>(p.seg), p.T - static_cast<int64_t>(f) * p.seg));
        const float dl = exp2f(static_cast<float>(len) * l2g);
#pragma unroll
        for (int r = 0; r < R; ++r) carry[r] = carry[r] * dl + d[i][r];
      }
    }
    if (done) break;
  }
  if (p.final_state) {
    const float fm = final_multiplier(p.final_scale, s0, lng, p.T);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int kk = ks + 8 * r;
      p.final_state[(static_cast<int64_t>(bh) * DQK + kk) * dv + v] = carry[r] * fm;
    }
  }
}

// Row multipliers mu [B, T, H] of the torchscale normaliser.
enum class MuKind { recurrent, parallel, chunkwise };
struct MuParams {
  const void* q;  // [B, T, H, dk]
  const void* k;
  const float* s0;      // [B, H] or null
  const float* colsum;  // chunkwise: [B*H, NS, dv] column sums of |H_s| (segments == chunks)
  float* mu;            // [B, T, H]
  int64_t T;
  int H, dk, dv, C, NS;
  MuKind kind;
};

// grid (ceil(T/32), B*H), block 256: 32 rows per block, 8 threads per row.
template <class E>
__global__ void __launch_bounds__(256) mu_kernel(MuParams p, HeadDecays dec) {
  constexpr int RB = 32;
  extern __shared__ __align__(16) float mu_smem[];
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const int64_t T = p.T, n0 = static_cast<int64_t>(blockIdx.x) * RB;
  const int dk = p.dk, H = p.H;
  const int r = threadIdx.x >> 3, sub = threadIdx.x & 7;
  const int64_t n = n0 + r;
  const double lng = dec.lng[h];
  const float l2g = dec.log2g[h];
  const double s0 = p.s0 ? static_cast<double>(p.s0[bh]) : 0.0;
  const E* q = static_cast<const E*>(p.q);
  const E* k = static_cast<const E*>(p.k);
  float* Qs = mu_smem;             // [RB][dk + 1]
  float* Ks = Qs + RB * (dk + 1);  // [RB][dk + 1]
  auto load = [&](float* dst, const E* src, int64_t m0) {
    for (int i = threadIdx.x; i < RB * dk; i += blockDim.x) {
      const int rr = i / dk, cc = i % dk;
      const int64_t m = m0 + rr;
      dst[rr * (dk + 1) + cc] =
          m < T ? static_cast<float>(src[((static_cast<int64_t>(b) * T + m) * H + h) * dk + cc]) : 0.f;
    }
  };
  float sum = 0.f;
  if (p.kind != MuKind::recurrent) {
    load(Qs, q, n0);
    const int64_t w_lo =
        p.kind == MuKind::parallel ? 0 : (n0 / p.C) * p.C;  // RB divides C or C divides RB? handled per row
    const int64_t hi = min(n0 + RB, T);
    for (int64_t m0 = (w_lo / RB) * RB; m0 < hi; m0 += RB) {
      __syncthreads();
      load(Ks, k, m0);
      __syncthreads();
      if (n < T) {
        const int64_t lo = p.kind == MuKind::parallel ? 0 : (n / p.C) * p.C;
        for (int j = sub; j < RB; j += 8) {
          const int64_t m = m0 + j;
          if (m < lo || m > n) continue;
          float d = 0.f;
          for (int c = 0; c < dk; ++c) d += Qs[r * (dk + 1) + c] * Ks[j * (dk + 1) + c];
          sum += fabsf(d) * exp2f(static_cast<float>(n - m) * l2g);
        }
      }
    }
  }
#pragma unroll
  for (int off = 4; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (sub != 0 || n >= T) return;
  double mu;
  if (p.kind == MuKind::recurrent) {
    mu = 1.0 / sqrt(final_scale_of(s0, lng, n + 1));
  } else if (p.kind == MuKind::parallel) {
    const double sc = sqrt(final_scale_of(s0, lng, n + 1));
    const double cn = fmin(fmax(static_cast<double>(sum) / sc, 1.0), 5e4);
    mu = 1.0 / (sc * cn);
  } else {
    const int64_t c = n / p.C, i = n - c * p.C;
    const double Si = expm1(static_cast<double>(i + 1) * lng) / expm1(lng);
    const double SC = expm1(static_cast<double>(p.C) * lng) / expm1(lng);
    double kvs = 1.0;
    if (p.colsum) {
      const float* cs = p.colsum + (static_cast<int64_t>(bh) * p.NS + c) * p.dv;
      float mx = 0.f;
      for (int v = 0; v < p.dv; ++v) mx = fmaxf(mx, cs[v]);
      kvs = fmax(1.0, static_cast<double>(mx) / SC);
    }
    const double inner = fmax(static_cast<double>(sum) / sqrt(Si), 1.0);
    mu = 1.0 / (sqrt(Si) * fmax(inner, kvs));
  }
  p.mu[(static_cast<int64_t>(b) * T + n) * H + h] = static_cast<float>(mu);
}

// g = mu * d_o (rows), written in the storage type.
template <class E>
__global__ void scale_rows_kernel(const E* __restrict__ x, const float* __restrict__ mu, E* __restrict__ y,
                                  int64_t rows, int dv) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * dv) return;
  y[i] = static_cast<E>(static_cast<float>(x[i]) * mu[i / dv]);
}

// Final scale_{T-1} (both modes), written last so that an aliased input scale is read first.
static __global__ void final_scale_kernel(const float* s0, float* out, int64_t BH, int H, int64_t T, HeadDecays dec) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= BH) return;
  out[i] = static_cast<float>(final_scale_of(s0 ? static_cast<double>(s0[i]) : 0.0, dec.lng[i % H], T));
}

}  // namespace retnet::cuda_detail
