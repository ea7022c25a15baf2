#pragma once
// The bf16 chunk engine: the same passes and contract as scan_kernel (retention_scan.cuh), with each chunk
// computed so that the tensor cores, not shared memory and barriers, set the pace:
//  * 8 warps. For the output, 4 row groups of 16 chunk rows x 2 halves of the value tile; each warp computes its
//    rows of S = Q K^T only up to its diagonal (causal), masks and decays them in registers and feeds them to
//    S V directly as bf16 A fragments (no trip through shared memory, no barrier).
//  * one Q fragment per 16-wide k step feeds both S = Q K^T and Q H.
//  * the state update's decay diag(gamma^(L-1-j)) scales the V fragments in registers (no scaled copy of V).
//  * the stage buffers and the bf16 copy of the state are double-buffered: one barrier per chunk.
// Row groups pair up on the warp schedulers (warps w and w + 4 share one): group w and 3 - w, so that every
// scheduler carries the same causal work.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "retnet/cuda/mma.cuh"
#include "retnet/cuda/retention_scan.cuh"

namespace retnet::cuda_detail {

inline constexpr int kBf16ScanThreads = 256;
inline constexpr int kBf16ScanRows = 64;  // chunk rows

template <int DQK, int VT, bool Summary>
struct Bf16ScanSmem {
  static constexpr int LM = kBf16ScanRows, PAD = 8;
  static constexpr int LDQ = DQK + PAD, LDV = VT + PAD;
  static constexpr int QK_ELEMS = LM * LDQ, V_ELEMS = LM * LDV;
  static constexpr int STAGE = (Summary ? 1 : 2) * QK_ELEMS + V_ELEMS;
  static constexpr int H_ELEMS = Summary ? 0 : DQK * LDV;
  static constexpr int bytes = (2 * STAGE + 2 * H_ELEMS) * 2;
  static_assert(bytes <= 227 * 1024, "bf16 scan: shared memory of one block");
};

// x * w elementwise in bf16x2 (one HMUL2): the decayed V of the state update, as bf16(V * w) with w in bf16.
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

// grid (dv / VT, NS, B * H), block 256. The summary pass keeps only the state tile: two blocks per multiprocessor.
template <int DQK, int VT, bool Summary>
__global__ void __launch_bounds__(kBf16ScanThreads, Summary ? 2 : 1) scan_bf16_kernel(ScanParams p, HeadDecays dec) {
  using P = MmaBf16;
  using E = __nv_bfloat16;
  using SM = Bf16ScanSmem<DQK, VT, Summary>;
  constexpr int LM = SM::LM, LDQ = SM::LDQ, LDV = SM::LDV, STAGE = SM::STAGE;
  constexpr int NT = kBf16ScanThreads;
  static_assert(VT == 64 || VT == 128, "value tile of 64 or 128 columns");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  E* smem = reinterpret_cast<E*>(smem_raw);
  E* Hs_base = smem + 2 * STAGE;

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
  auto stage_q = [&](int st) { return smem + st * STAGE; };
  auto stage_k = [&](int st) { return Summary ? smem + st * STAGE : smem + st * STAGE + SM::QK_ELEMS; };
  auto stage_v = [&](int st) { return stage_k(st) + SM::QK_ELEMS; };

  // Each thread copies 16-byte pieces at a fixed column of rows r0, r0 + RSTEP, ...: the per-thread base
  // pointers are set once, a chunk adds only its time offsets.
  constexpr int EPV = 8;  // bf16 per 16-byte piece
  constexpr int QK_PIECES = DQK / EPV, V_PIECES = VT / EPV;
  constexpr int QK_RSTEP = NT / QK_PIECES, V_RSTEP = NT / V_PIECES;
  static_assert(NT % QK_PIECES == 0 && NT % V_PIECES == 0, "whole rows per pass of the loader");
  const int qk_r0 = tid / QK_PIECES, qk_cc = (tid % QK_PIECES) * EPV;
  const int v_r0 = tid / V_PIECES, v_cc = (tid % V_PIECES) * EPV;
  const int64_t qk_step = static_cast<int64_t>(H) * DQK, v_step = static_cast<int64_t>(H) * dv;  // per time step
  const int64_t qk_base = (static_cast<int64_t>(b) * T * H + h) * DQK + qk_cc;
  const int64_t v_base = (static_cast<int64_t>(b) * T * H + h) * dv + vt * VT + v_cc;
  auto load_chunk = [&](int c, int st) {
    E* Qs = stage_q(st);
    E* Ks = stage_k(st);
    E* Vs = stage_v(st);
    const int64_t c0 = seg_start + static_cast<int64_t>(c) * p.L;
    const int len = min(p.L, seg_len - c * p.L);
#pragma unroll
    for (int r = qk_r0; r < LM; r += QK_RSTEP) {
      const bool ok = r < len;
      const int64_t off = qk_base + (ok ? phys(c0 + r) : 0) * qk_step;
      if constexpr (!Summary) cp_async16(Qs + r * LDQ + qk_cc, qg + off, ok ? 16 : 0);
      cp_async16(Ks + r * LDQ + qk_cc, kg + off, ok ? 16 : 0);
    }
#pragma unroll
    for (int r = v_r0; r < LM; r += V_RSTEP) {
      const bool ok = r < len;
      const int64_t off = v_base + (ok ? phys(c0 + r) : 0) * v_step;
      cp_async16(Vs + r * LDV + v_cc, vg + off, ok ? 16 : 0);
    }
    cp_async_commit();
  };

  // State tile [DQK, VT] in registers: warps 4 (rows) x 2 (columns), each DQK/4 rows x VT/2 columns.
  constexpr int HM = DQK / 64, HN = VT / 16;  // m16 and n8 tiles per warp
  const int hw_m = (warp & 3) * (DQK / 4), hw_n = (warp >> 2) * (VT / 2);
  float hacc[HM][HN][4];
  float* __restrict__ st_g = p.states + (static_cast<int64_t>(bh) * p.NS + s) * DQK * dv + vt * VT;
  // Entering state (row, col) of this block's tile; states_transposed: the buffer holds [dv, DQK] states.
  auto state_at = [&](int row, int col) {
    return p.states_transposed ? p.states[(static_cast<int64_t>(bh) * p.NS + s) * DQK * dv +
                                          static_cast<int64_t>(vt * VT + col) * DQK + row]
                               : st_g[static_cast<int64_t>(row) * dv + col];
  };
  for_each_acc(hacc, hw_m, hw_n, lane, [&](int row, int col, float& x) { x = Summary ? 0.f : state_at(row, col); });
  // The bf16 copy of the state that Q H reads: Hs(c & 1) holds the state entering chunk c.
  auto store_state = [&](E* Hs) {
#pragma unroll
    for (int mt = 0; mt < HM; ++mt)
#pragma unroll
      for (int nt = 0; nt < HN; ++nt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = hw_m + mt * 16 + g + half * 8, col = hw_n + nt * 8 + 2 * tq;
          *reinterpret_cast<uint32_t*>(Hs + row * LDV + col) =
              pack_bf16x2(hacc[mt][nt][2 * half], hacc[mt][nt][2 * half + 1]);
        }
  };
  if constexpr (!Summary) store_state(Hs_base);

  // Decay weights of the state update for this thread's rows of the V fragments, as bf16 pairs: w[kt][i] for
  // chunk rows kt*16 + 2 tq + 8 i + {0, 1}; rows at or past len weigh 0.
  uint32_t w[LM / 16][2];
  int w_len = -1;
  auto set_weights = [&](int len) {
    auto weight = [&](int j) { return j < len ? exp2f(static_cast<float>(len - 1 - j) * l2g) : 0.f; };
#pragma unroll
    for (int kt = 0; kt < LM / 16; ++kt)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int j = kt * 16 + 2 * tq + 8 * i;
        w[kt][i] = pack_bf16x2(weight(j), weight(j + 1));
      }
    w_len = len;
  };

  // Output tile of this warp: chunk rows rg*16 .. +15, value columns ow_n .. ow_n + ON - 1.
  constexpr int ON = VT / 2;
  const int rg = warp < 4 ? warp : 7 - warp;
  const int ow_m = rg * 16, ow_n = (warp >> 2) * ON;

  load_chunk(0, 0);
  for (int c = 0; c < nchunks; ++c) {
    const int st = c & 1;
    const E* Qs = stage_q(st);
    const E* Ks = stage_k(st);
    const E* Vs = stage_v(st);
    const int len = min(p.L, seg_len - c * p.L);
    cp_async_wait<0>();
    __syncthreads();  // chunk c and Hs(c & 1) visible; everyone is past chunk c - 1
    if (c + 1 < nchunks) load_chunk(c + 1, st ^ 1);
    if (len != w_len) set_weights(len);

    if constexpr (!Summary) {
      const E* Hs = Hs_base + st * SM::H_ELEMS;
      // S = Q K^T (columns up to the diagonal block) and O = Q H, one Q fragment per k step.
      float sacc[LM / 8][4] = {};
      float oacc[ON / 8][4] = {};
#pragma unroll
      for (int k0 = 0; k0 < DQK; k0 += 16) {
        typename P::A a;
        P::lda<false>(a, Qs, LDQ, ow_m, k0, lane);
#pragma unroll
        for (int nt = 0; nt < LM / 8; nt += 2) {
          if (nt < 2 * (rg + 1)) {
            typename P::B bb[2];
            P::ldb2<false>(bb, Ks, LDQ, nt * 8, k0, lane);
            P::mma(sacc[nt], a, bb[0]);
            P::mma(sacc[nt + 1], a, bb[1]);
          }
        }
#pragma unroll
        for (int nt = 0; nt < ON / 8; nt += 2) {
          typename P::B bb[2];
          P::ldb2<true>(bb, Hs, LDV, ow_n + nt * 8, k0, lane);
          P::mma(oacc[nt], a, bb[0]);
          P::mma(oacc[nt + 1], a, bb[1]);
        }
      }
      // O rows decay by gamma^(i+1) from the entering state.
      const float al0 = exp2f(static_cast<float>(ow_m + g + 1) * l2g);
      const float al1 = exp2f(static_cast<float>(ow_m + g + 9) * l2g);
#pragma unroll
      for (int nt = 0; nt < ON / 8; ++nt) {
        oacc[nt][0] *= al0;
        oacc[nt][1] *= al0;
        oacc[nt][2] *= al1;
        oacc[nt][3] *= al1;
      }
      // O += (S . Gamma) V, the masked scores as A fragments straight from the accumulators.
#pragma unroll
      for (int kt = 0; kt < LM / 16; ++kt) {
        if (kt <= rg) {
          typename P::A a;
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int nt = 2 * kt + half;
            float m[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int i = ow_m + g + (e >> 1) * 8, j = nt * 8 + 2 * tq + (e & 1);
              m[e] = i >= j ? sacc[nt][e] * exp2f(static_cast<float>(i - j) * l2g) : 0.f;
            }
            a.r[2 * half] = pack_bf16x2(m[0], m[1]);
            a.r[2 * half + 1] = pack_bf16x2(m[2], m[3]);
          }
#pragma unroll
          for (int nt = 0; nt < ON / 8; nt += 2) {
            typename P::B bb[2];
            P::ldb2<true>(bb, Vs, LDV, ow_n + nt * 8, kt * 16, lane);
            P::mma(oacc[nt], a, bb[0]);
            P::mma(oacc[nt + 1], a, bb[1]);
          }
        }
      }
      store_output_tile<E>(p, oacc, b, h, seg_start + static_cast<int64_t>(c) * p.L, len, ow_m, vt * VT + ow_n, lane);
    }

    // H <- gamma^len H + K^T diag(gamma^(len-1-j)) V (after its last chunk, the outputs pass needs the state only
    // when it writes the final state)
    if (Summary || c + 1 < nchunks || p.final_state) {
      const float dl = exp2f(static_cast<float>(len) * l2g);
#pragma unroll
      for (int mt = 0; mt < HM; ++mt)
#pragma unroll
        for (int nt = 0; nt < HN; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) hacc[mt][nt][e] *= dl;
#pragma unroll
      for (int kt = 0; kt < LM / 16; ++kt) {
        typename P::B bb[HN];
#pragma unroll
        for (int nt = 0; nt < HN; nt += 2) {
          P::ldb2<true>(*reinterpret_cast<typename P::B(*)[2]>(&bb[nt]), Vs, LDV, hw_n + nt * 8, kt * 16, lane);
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            bb[nt + x].r[0] = mul_bf16x2(bb[nt + x].r[0], w[kt][0]);
            bb[nt + x].r[1] = mul_bf16x2(bb[nt + x].r[1], w[kt][1]);
          }
        }
#pragma unroll
        for (int mt = 0; mt < HM; ++mt) {
          typename P::A a;
          P::lda<true>(a, Ks, LDQ, hw_m + mt * 16, kt * 16, lane);
#pragma unroll
          for (int nt = 0; nt < HN; ++nt) P::mma(hacc[mt][nt], a, bb[nt]);
        }
      }
    }
    // The next chunk's bf16 state goes to the other buffer: its last readers finished chunk c - 1.
    if constexpr (!Summary) {
      if (c + 1 < nchunks) store_state(Hs_base + (st ^ 1) * SM::H_ELEMS);
    }
  }
  if constexpr (Summary) {
    for_each_acc(hacc, hw_m, hw_n, lane,
                 [&](int row, int col, float& x) { st_g[static_cast<int64_t>(row) * dv + col] = x; });
  } else if (p.final_state) {  // single segment: this walk ends the sequence
    const float fm = final_multiplier(p.final_scale, p.s0 ? static_cast<double>(p.s0[bh]) : 0.0, dec.lng[h], T);
    float* fs = p.final_state + static_cast<int64_t>(bh) * DQK * dv + vt * VT;
    for_each_acc(hacc, hw_m, hw_n, lane,
                 [&](int row, int col, float& x) { fs[static_cast<int64_t>(row) * dv + col] = x * fm; });
  }
}

}  // namespace retnet::cuda_detail
