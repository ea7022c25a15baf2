#pragma once
// Part of retention_engine.cuh (included from there, after the engine's parts and before its kernels): the
// outputs walk of chunk_engine_kernel on Hopper's warpgroup MMA, for bf16 with key size 128 and value tile 128,
// where the code is compiled for sm_90a. Same contract as the mma.sync walk; the tensor cores read Q, K, V and the
// state copy straight from shared memory, so the warps issue a few wgmma per chunk instead of loading every fragment
// themselves (the mma.sync walk was latency- and issue-bound at 34 % tensor-pipe use).
//
// Two warpgroups. Warpgroup wg computes output columns 64 wg .. 64 wg + 63 of the value tile for all 64 chunk rows
// and holds state rows 64 wg .. 64 wg + 63 (all 128 columns) in registers. Per chunk, in three commit groups:
//   1. S = Q K^T and O = Q H (H: the bf16 copy of the state entering the chunk), both from shared memory;
//   2. H <- gamma^len H + (K diag(w))^T V, K^T from registers (ldmatrix.trans, scaled by the decay weights w);
//   3. O += (S . Gamma) V, the masked and decayed scores from registers (S's accumulators are the A fragments).
// Group 2 runs while the warps mask the scores; the state copy for the next chunk is written once group 2 is done.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "retnet/cuda/wgmma.cuh"

namespace retnet::cuda_detail {

// A bf16 tile of R rows in the 128-byte-swizzle layout (wgmma.cuh): atoms of 64 columns, R rows of 128 bytes each,
// back to back. A TileLoader policy.
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&x)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
               : "r"(smem_addr(p)));
}

template <int R>
struct SwizzledTile {
  using E = __nv_bfloat16;
  static constexpr int EPV = 8;
  static constexpr bool kStraightLoads = false;
  static constexpr int kAtom = R * 64;  // elements
  template <int W>
  __device__ __forceinline__ static int at(int r, int c) {
    return (c >> 6) * kAtom + r * 64 + ((((c & 63) >> 3) ^ (r & 7)) << 3) + (c & 7);
  }
};

template <int DQK, int VT>
struct WgmmaSmem {
  static constexpr int LM = kEngineRows, QK_ELEMS = LM * DQK, V_ELEMS = LM * VT, STAGE = 2 * QK_ELEMS + V_ELEMS;
  static constexpr int H_ELEMS = DQK * VT;
  // two stages and two state copies, bf16, and room to align them to 1024 bytes
  static constexpr int bytes = (2 * STAGE + 2 * H_ELEMS) * 2 + 1024;
};

// Whether chunk_engine_kernel<Ops, DQK, VT, Summary> takes the wgmma walk (where built for sm_90a).
template <class Ops, int DQK, int VT, bool Summary>
inline constexpr bool kWgmmaWalk = !Summary && std::is_same_v<Ops, EngineOps<__nv_bfloat16>> && DQK == 128 && VT == 128;

template <int DQK, int VT>
__device__ __forceinline__ void wgmma_outputs_walk(const ScanParams& p, const HeadDecays& dec,
                                                   unsigned char* smem_raw) {
  using E = __nv_bfloat16;
  using Tile = SwizzledTile<kEngineRows>;  // the chunk's Q, K, V
  using HTile = SwizzledTile<DQK>;         // the state copy [DQK, VT]
  using SM = WgmmaSmem<DQK, VT>;
  constexpr int LM = kEngineRows, KS = 16;
  static_assert(DQK == 128 && VT == 128, "two warpgroups of 64 output columns and 64 state rows");
  E* smem = reinterpret_cast<E*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  E* Hs_base = smem + 2 * SM::STAGE;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2, wq = warp & 3;
  const int g = lane >> 2, tq = lane & 3;
  const int vt = blockIdx.x, s = blockIdx.y, bh = blockIdx.z;
  const int b = bh / p.H, h = bh % p.H;
  const int64_t T = p.T;
  const float l2g = dec.log2g[h];
  const int64_t seg_start = static_cast<int64_t>(s) * p.seg;
  const int seg_len = static_cast<int>(min(static_cast<int64_t>(p.seg), T - seg_start));
  const int nchunks = (seg_len + p.L - 1) / p.L;
  const int dv = p.dv;

  auto phys = [&](int64_t pos) { return p.reverse ? T - 1 - pos : pos; };
  const int dir = p.reverse ? -1 : 1;
  auto stage_q = [&](int st) { return smem + st * SM::STAGE; };
  auto stage_k = [&](int st) { return stage_q(st) + SM::QK_ELEMS; };
  auto stage_v = [&](int st) { return stage_k(st) + SM::QK_ELEMS; };
  const TileLoader<Tile, DQK> load_q({p.q}, b, h, T, p.H, DQK, 0, tid), load_k({p.k}, b, h, T, p.H, DQK, 0, tid);
  const TileLoader<Tile, VT> load_v({p.v}, b, h, T, p.H, dv, vt * VT, tid);
  auto load_chunk = [&](int c, int st) {
    const int64_t c0 = seg_start + static_cast<int64_t>(c) * p.L;
    const int len = min(p.L, seg_len - c * p.L);
    load_q.load({stage_q(st)}, c0, len, phys, dir);
    load_k.load({stage_k(st)}, c0, len, phys, dir);
    load_v.load({stage_v(st)}, c0, len, phys, dir);
    cp_async_commit();
  };

  // This thread's state elements hacc[j][e]: row hrow + 8 (e / 2), column 8 j + 2 tq + e % 2 (the warpgroup's
  // accumulator layout).
  const int hrow = wg * 64 + wq * 16 + g;
  float hacc[VT / 8][4];
#pragma unroll
  for (int j = 0; j < VT / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      hacc[j][e] = entering_state<DQK>(p, bh, s, vt * VT, hrow + 8 * (e >> 1), 8 * j + 2 * tq + (e & 1));
  auto store_copy = [&](E* Hs) {
#pragma unroll
    for (int j = 0; j < VT / 8; ++j)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        *reinterpret_cast<uint32_t*>(Hs + HTile::template at<VT>(hrow + 8 * half, 8 * j + 2 * tq)) =
            pack_bf16x2(hacc[j][2 * half], hacc[j][2 * half + 1]);
  };
  store_copy(Hs_base);

  float* const final_state = final_state_of(p, s);
  UpdateWeights<EngineOps<E>> wts;
  load_chunk(0, 0);
  for (int c = 0; c < nchunks; ++c) {
    const int st = c & 1;
    const int len = min(p.L, seg_len - c * p.L);
    cp_async_wait<0>();
    fence_proxy_async();  // this thread's copies and state-copy writes, before the tensor cores read them
    __syncthreads();      // chunk c and Hs(c & 1) complete; everyone is past chunk c - 1
    if (c + 1 < nchunks) load_chunk(c + 1, st ^ 1);
    const E* Qs = stage_q(st);
    const E* Ks = stage_k(st);
    const E* Vs = stage_v(st);
    const E* Hs = Hs_base + st * SM::H_ELEMS;
    float sacc[LM / 8][4], oacc[VT / 16][4];
    wgmma_fence();
    // 1. S = Q K^T (all 64 keys; the mask comes later) and O = Q H[:, 64 wg ..]: k steps of 16 key dimensions.
#pragma unroll
    for (int ks = 0; ks < DQK / KS; ++ks) {
      const int atom = ks / 4, k32 = (ks % 4) * KS;  // 64-column atom, 32-byte step inside it
      const uint64_t dq = wgmma_desc(Qs + atom * Tile::kAtom + k32, 0);
      wgmma_m64n64k16_ss<0, 0>(sacc, dq, wgmma_desc(Ks + atom * Tile::kAtom + k32, 0), ks > 0);
      wgmma_m64n64k16_ss<0, 1>(oacc, dq, wgmma_desc(Hs + wg * HTile::kAtom + ks * KS * 64, 2 * HTile::kAtom), ks > 0);
    }
    wgmma_commit();

    // Meanwhile, the update's A fragments: rows hrow.. of K^T (K's columns 64 wg + 16 wq ..) for each k step of
    // 16 chunk rows, times the rows' weights gamma^(len-1-j); and the state's decay over the chunk. (The update
    // also runs after a segment's last chunk, whose state nobody reads: a wgmma under a branch would make ptxas
    // serialize all of them.)
    wts.prepare(len, tq, l2g);
    uint32_t ka[LM / KS][4];
    {
      const int mat = lane >> 3, r = lane & 7;
#pragma unroll
      for (int kt = 0; kt < LM / KS; ++kt) {
        ldsm_x4_trans(ka[kt], Ks + Tile::at<DQK>(kt * KS + r + 8 * (mat >> 1), wg * 64 + wq * 16 + 8 * (mat & 1)));
        ka[kt][0] = mul_bf16x2(ka[kt][0], wts.w.w[kt][0]);
        ka[kt][1] = mul_bf16x2(ka[kt][1], wts.w.w[kt][0]);
        ka[kt][2] = mul_bf16x2(ka[kt][2], wts.w.w[kt][1]);
        ka[kt][3] = mul_bf16x2(ka[kt][3], wts.w.w[kt][1]);
      }
    }
    const float dl = exp2f(static_cast<float>(len) * l2g);
#pragma unroll
    for (int j = 0; j < VT / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) hacc[j][e] *= dl;
    wgmma_wait<0>();

    // O = diag(gamma^(i+1)) O, and the scores masked (i >= j) and decayed, as A fragments.
    const int row0 = wq * 16;
    decay_output_rows(oacc, row0, g, l2g);
    uint32_t sa[LM / KS][4];
#pragma unroll
    for (int kt = 0; kt < LM / KS; ++kt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int nt = 2 * kt + half;
        float m[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = row0 + g + 8 * (e >> 1), j = nt * 8 + 2 * tq + (e & 1);
          m[e] = i >= j ? sacc[nt][e] * exp2f(static_cast<float>(i - j) * l2g) : 0.f;
        }
        sa[kt][2 * half] = pack_bf16x2(m[0], m[1]);
        sa[kt][2 * half + 1] = pack_bf16x2(m[2], m[3]);
      }
    wgmma_fence();
    // 3. O += (S . Gamma) V[:, 64 wg ..].
#pragma unroll
    for (int kt = 0; kt < LM / KS; ++kt)
      wgmma_m64n64k16_rs<1>(oacc, sa[kt], wgmma_desc(Vs + wg * Tile::kAtom + kt * KS * 64, 2 * Tile::kAtom));
    wgmma_commit();
    // 2. H <- gamma^len H + (K diag(w))^T V over all 128 state columns (V's two atoms).
#pragma unroll
    for (int kt = 0; kt < LM / KS; ++kt)
      wgmma_m64n128k16_rs<1>(hacc, ka[kt], wgmma_desc(Vs + kt * KS * 64, 2 * Tile::kAtom));
    wgmma_commit();

    wgmma_wait<1>();  // group 3 done; the update may still run
    store_output_tile<E>(p.o, dv, p, oacc, b, h, seg_start + static_cast<int64_t>(c) * p.L, len, row0,
                         vt * VT + wg * 64, lane);
    wgmma_wait<0>();
    // The next chunk's state copy goes to the other buffer: its readers, chunk c - 1's group 1, finished before
    // this chunk's barrier.
    if (c + 1 < nchunks) store_copy(Hs_base + (st ^ 1) * SM::H_ELEMS);
  }
  if (final_state) {  // the last segment: this walk ends the sequence
    const float m = final_state_factor(p, dec, bh, h);
    float* dst = final_state + static_cast<int64_t>(bh) * DQK * dv + vt * VT;
#pragma unroll
    for (int j = 0; j < VT / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        dst[static_cast<int64_t>(hrow + 8 * (e >> 1)) * dv + 8 * j + 2 * tq + (e & 1)] = hacc[j][e] * m;
  }
}

}  // namespace retnet::cuda_detail
