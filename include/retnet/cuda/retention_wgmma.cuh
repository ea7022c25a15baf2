#pragma once
// Part of retention_engine.cuh (included from there, after the engine's parts and before its kernels): the
// outputs walk of chunk_engine_kernel on Hopper's warpgroup MMA, for bf16 with key size 128 and value tile 128,
// where the code is compiled for sm_90a. Same contract as the mma.sync walk; the tensor cores read Q, K, V and the
// state copy straight from shared memory, so the warps issue a few wgmma per chunk instead of loading every fragment
// themselves (the mma.sync walk was latency- and issue-bound at 34 % tensor-pipe use).
//
// Two warpgroups. Warpgroup wg computes output columns 64 wg .. 64 wg + 63 of the value tile for all 64 chunk rows
// and holds state rows 64 wg .. 64 wg + 63 (all 128 columns) in registers. The decays enter through the operands
// (see wgmma_outputs_walk), so the scores need only the causal mask. Per chunk, in three commit groups:
//   1. S = Q K^T and O = Q H (H: the bf16 copy of the state entering the chunk), both from shared memory, while
//      the warps load the update's K^T fragments;
//   2. O += (S . Gamma) V, the masked scores from registers (S's accumulators are the A fragments);
//   3. H <- gamma^len H + (K diag(w))^T V, K^T from registers, which runs on while the outputs are stored.
// Three stages of cp.async copies keep two chunks in flight.
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

// Barrier Id (1..15; 0 is __syncthreads) over Threads threads.
template <int Id, int Threads>
__device__ __forceinline__ void named_barrier_sync() {
  asm volatile("bar.sync %0, %1;\n" ::"n"(Id), "n"(Threads) : "memory");
}

template <int R>
struct SwizzledTile {
  using E = __nv_bfloat16;
  static constexpr int EPV = 8;
  static constexpr bool kStraightLoads = true;  // one offset product per chunk (TileLoader)
  static constexpr int kAtom = R * 64;          // elements
  template <int W>
  __device__ __forceinline__ static int at(int r, int c) {
    return (c >> 6) * kAtom + r * 64 + ((((c & 63) >> 3) ^ (r & 7)) << 3) + (c & 7);
  }
};

template <int DQK, int VT>
struct WgmmaSmem {
  static constexpr int LM = kEngineRows, QK_ELEMS = LM * DQK, V_ELEMS = LM * VT, STAGE = 2 * QK_ELEMS + V_ELEMS;
  static constexpr int STAGES = 3, H_ELEMS = DQK * VT, O_PITCH = 72, O_ELEMS = LM * O_PITCH;
  // three stages, two state copies and the two warpgroups' output tiles, bf16, and room to align them to 1024 bytes
  static constexpr int bytes = (STAGES * STAGE + 2 * H_ELEMS + 2 * O_ELEMS) * 2 + 1024;
  static_assert(bytes <= 227 * 1024, "shared memory of one block");
};

// Whether chunk_engine_kernel<Ops, DQK, VT, Summary> has the wgmma walk (where built for sm_90a).
template <class Ops, int DQK, int VT, bool Summary>
inline constexpr bool kWgmmaWalk = !Summary && std::is_same_v<Ops, EngineOps<__nv_bfloat16>> && DQK == 128 && VT == 128;

// The walk scales chunk rows by gamma^(i - 32) and gamma^(32 - j) (below). Heads whose decay is below 2^-3 would
// push these factors out of float's normal range (2^-126); they take the mma.sync walk.
inline constexpr float kWgmmaMinLog2Gamma = -3.0f;

// The decays enter through the operands, so that the scores need only the causal mask:
//   Q~_i = gamma^(i - R) q_i and K~_j = gamma^(R - j) k_j (R = 32, scaled in shared memory as they land), so
//   Q~_i . K~_j = gamma^(i - j) q_i . k_j;
//   the state copy holds gamma^(R + 1) H, so Q~_i (gamma^(R + 1) H) = gamma^(i + 1) q_i H;
//   the update weight gamma^(len - 1 - j) = gamma^(len - 1 - R) gamma^(R - j): K~ times one factor per chunk.
template <int DQK, int VT>
__device__ __forceinline__ void wgmma_outputs_walk(const ScanParams& p, const HeadDecays& dec,
                                                   unsigned char* smem_raw) {
  using E = __nv_bfloat16;
  using Tile = SwizzledTile<kEngineRows>;  // the chunk's Q, K, V
  using HTile = SwizzledTile<DQK>;         // the state copy [DQK, VT]
  using SM = WgmmaSmem<DQK, VT>;
  constexpr int LM = kEngineRows, KS = 16, S = SM::STAGES, R = LM / 2;
  static_assert(DQK == 128 && VT == 128, "two warpgroups of 64 output columns and 64 state rows");
  E* smem = reinterpret_cast<E*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  E* Hs_base = smem + S * SM::STAGE;

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
  auto gpow = [&](int n) { return exp2f(static_cast<float>(n) * l2g); };

  auto phys = [&](int64_t pos) { return p.reverse ? T - 1 - pos : pos; };
  const int dir = p.reverse ? -1 : 1;
  auto stage_q = [&](int st) { return smem + st * SM::STAGE; };
  auto stage_k = [&](int st) { return stage_q(st) + SM::QK_ELEMS; };
  auto stage_v = [&](int st) { return stage_k(st) + SM::QK_ELEMS; };
  using QKLoader = TileLoader<Tile, DQK, 2>;
  const QKLoader load_qk({p.q, p.k}, b, h, T, p.H, DQK, 0, tid);
  const TileLoader<Tile, VT> load_v({p.v}, b, h, T, p.H, dv, vt * VT, tid);
  // Every call commits one group (empty past the last chunk): "all but the newest S - 2 groups" is chunk c.
  auto load_chunk = [&](int c) {
    if (c < nchunks) {
      const int st = c % S;
      const int64_t c0 = seg_start + static_cast<int64_t>(c) * p.L;
      const int len = min(p.L, seg_len - c * p.L);
      load_qk.load({stage_q(st), stage_k(st)}, c0, len, phys, dir);
      load_v.load({stage_v(st)}, c0, len, phys, dir);
    }
    cp_async_commit();
  };
  constexpr int kRowsPerThread = LM / QKLoader::RSTEP;

  // This thread's state elements hacc[j][e]: row hrow + 8 (e / 2), column 8 j + 2 tq + e % 2 (the warpgroup's
  // accumulator layout).
  const int hrow = wg * 64 + wq * 16 + g;
  float hacc[VT / 8][4];
#pragma unroll
  for (int j = 0; j < VT / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      hacc[j][e] = entering_state<DQK>(p, bh, s, vt * VT, hrow + 8 * (e >> 1), 8 * j + 2 * tq + (e & 1));
  const float copy_factor = gpow(R + 1);
  auto store_copy = [&](E* Hs) {
#pragma unroll
    for (int j = 0; j < VT / 8; ++j)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        *reinterpret_cast<uint32_t*>(Hs + HTile::template at<VT>(hrow + 8 * half, 8 * j + 2 * tq)) =
            pack_bf16x2(hacc[j][2 * half] * copy_factor, hacc[j][2 * half + 1] * copy_factor);
  };
  store_copy(Hs_base);

  // The Q and K pieces this thread copied into stage st, times their rows' factors (once they have landed).
  auto prescale = [&](int st) {
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int r = load_qk.r0 + i * QKLoader::RSTEP, at = Tile::at<DQK>(r, load_qk.cc);
      const float fq = gpow(r - R), fk = gpow(R - r);
      const uint32_t q_scale = pack_bf16x2(fq, fq), k_scale = pack_bf16x2(fk, fk);
      uint4* pq = reinterpret_cast<uint4*>(stage_q(st) + at);
      uint4* pk = reinterpret_cast<uint4*>(stage_k(st) + at);
      uint4 x = *pq, y = *pk;
      x.x = mul_bf16x2(x.x, q_scale), x.y = mul_bf16x2(x.y, q_scale);
      x.z = mul_bf16x2(x.z, q_scale), x.w = mul_bf16x2(x.w, q_scale);
      y.x = mul_bf16x2(y.x, k_scale), y.y = mul_bf16x2(y.y, k_scale);
      y.z = mul_bf16x2(y.z, k_scale), y.w = mul_bf16x2(y.w, k_scale);
      *pq = x;
      *pk = y;
    }
  };
  // The warpgroup's output tile [64 rows, 64 columns] goes out through shared memory (rows padded to 72 elements, so
  // that both the fragment writes and the row reads are free of bank conflicts), in 16-byte row pieces.
  auto store_outputs = [&](const float(&oacc)[VT / 16][4], int64_t c0, int len, int row0) {
    E* const Os = Hs_base + 2 * SM::H_ELEMS + wg * SM::O_ELEMS;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = row0 + g + 8 * half;
      const float m = p.mu && i < len ? p.mu[(static_cast<int64_t>(b) * T + phys(c0 + i)) * p.H + h] : 1.f;
#pragma unroll
      for (int nt = 0; nt < VT / 16; ++nt)
        *reinterpret_cast<uint32_t*>(Os + i * SM::O_PITCH + nt * 8 + 2 * tq) =
            pack_bf16x2(oacc[nt][2 * half] * m, oacc[nt][2 * half + 1] * m);
    }
    if (wg == 0) {  // the warpgroup's tile is complete
      named_barrier_sync<1, 128>();
    } else {
      named_barrier_sync<2, 128>();
    }
    const int piece = tid & 7;
    const int64_t ld = static_cast<int64_t>(p.H) * dv;
    E* const og = static_cast<E*>(p.o) + (static_cast<int64_t>(b) * T * p.H + h) * dv + vt * VT + wg * 64 + piece * 8;
#pragma unroll
    for (int it = 0; it < LM / 16; ++it) {
      const int r = it * 16 + ((tid & 127) >> 3);
      if (r < len)
        *reinterpret_cast<uint4*>(og + phys(c0 + r) * ld) =
            *reinterpret_cast<const uint4*>(Os + r * SM::O_PITCH + piece * 8);
    }
  };

  float* const final_state = final_state_of(p, s);
#pragma unroll
  for (int c = 0; c < S - 1; ++c) load_chunk(c);
  cp_async_wait<S - 2>();
  prescale(0);
  for (int c = 0, st = 0; c < nchunks; ++c, st = st + 1 == S ? 0 : st + 1) {
    const int len = min(p.L, seg_len - c * p.L);
    const int64_t c0 = seg_start + static_cast<int64_t>(c) * p.L;
    const E* Qs = stage_q(st);
    const E* Ks = stage_k(st);
    const E* Vs = stage_v(st);
    const E* Hs = Hs_base + (c & 1) * SM::H_ELEMS;
    fence_proxy_async();  // this thread's copies, scalings and state-copy writes, before the tensor cores read them
    __syncthreads();      // chunk c (scaled) and Hs(c & 1) complete; everyone is past chunk c - 1, whose stage refills
    load_chunk(c + S - 1);

    float sacc[LM / 8][4], oacc[VT / 16][4];
    wgmma_fence();
    // 1. S = Q~ K~^T (all 64 keys; the mask comes later), then O = Q~ (gamma^(R+1) H)[:, 64 wg ..]: k steps of 16
    //    key dimensions, two commit groups.
#pragma unroll
    for (int ks = 0; ks < DQK / KS; ++ks) {
      const int at = (ks / 4) * Tile::kAtom + (ks % 4) * KS;  // 64-column atom, 32-byte step inside it
      wgmma_m64n64k16_ss<0, 0>(sacc, wgmma_desc(Qs + at, 0), wgmma_desc(Ks + at, 0), ks > 0);
    }
    wgmma_commit();
#pragma unroll
    for (int ks = 0; ks < DQK / KS; ++ks) {
      const int at = (ks / 4) * Tile::kAtom + (ks % 4) * KS;
      wgmma_m64n64k16_ss<0, 1>(oacc, wgmma_desc(Qs + at, 0),
                               wgmma_desc(Hs + wg * HTile::kAtom + ks * KS * 64, 2 * HTile::kAtom), ks > 0);
    }
    wgmma_commit();

    // Meanwhile, the update's A fragments: rows hrow.. of K~^T (K's columns 64 wg + 16 wq ..) for each k step of
    // 16 chunk rows, times gamma^(len - 1 - R); and the state's decay over the chunk. (The update also runs after a
    // segment's last chunk, whose state nobody reads: a wgmma under a branch makes ptxas serialize all of them.)
    uint32_t ka[LM / KS][4];
    {
      const float fu = gpow(len - 1 - R);
      const uint32_t w = pack_bf16x2(fu, fu);
      const int mat = lane >> 3, r = lane & 7;
#pragma unroll
      for (int kt = 0; kt < LM / KS; ++kt) {
        ldsm_x4_trans(ka[kt], Ks + Tile::at<DQK>(kt * KS + r + 8 * (mat >> 1), wg * 64 + wq * 16 + 8 * (mat & 1)));
#pragma unroll
        for (int x = 0; x < 4; ++x) ka[kt][x] = mul_bf16x2(ka[kt][x], w);
      }
    }
    const float dl = gpow(len);
#pragma unroll
    for (int j = 0; j < VT / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) hacc[j][e] *= dl;

    // The scores under the causal mask (i >= j), as A fragments, while O = Q~ H runs.
    wgmma_wait<1>();
    const int row0 = wq * 16;
    uint32_t sa[LM / KS][4];
#pragma unroll
    for (int kt = 0; kt < LM / KS; ++kt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int nt = 2 * kt + half;
        float m[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) m[e] = row0 + g + 8 * (e >> 1) >= nt * 8 + 2 * tq + (e & 1) ? sacc[nt][e] : 0.f;
        sa[kt][2 * half] = pack_bf16x2(m[0], m[1]);
        sa[kt][2 * half + 1] = pack_bf16x2(m[2], m[3]);
      }
    wgmma_wait<0>();
    wgmma_fence();
    // 2. O += (S . Gamma) V[:, 64 wg ..].
#pragma unroll
    for (int kt = 0; kt < LM / KS; ++kt)
      wgmma_m64n64k16_rs<1>(oacc, sa[kt], wgmma_desc(Vs + wg * Tile::kAtom + kt * KS * 64, 2 * Tile::kAtom));
    wgmma_commit();
    // 3. H <- gamma^len H + (K diag(w))^T V over all 128 state columns (V's two atoms).
#pragma unroll
    for (int kt = 0; kt < LM / KS; ++kt)
      wgmma_m64n128k16_rs<1>(hacc, ka[kt], wgmma_desc(Vs + kt * KS * 64, 2 * Tile::kAtom));
    wgmma_commit();

    // Meanwhile, the next chunk's Q and K rows get their factors.
    wgmma_wait<1>();  // group 2 done; the update may still run
    store_outputs(oacc, c0, len, row0);
    if (c + 1 < nchunks) {
      cp_async_wait<S - 2>();
      prescale(st + 1 == S ? 0 : st + 1);
    }
    wgmma_wait<0>();
    // The next chunk's state copy goes to the other buffer: its readers, chunk c - 1's group 1, finished before
    // this chunk's barrier.
    if (c + 1 < nchunks) store_copy(Hs_base + ((c + 1) & 1) * SM::H_ELEMS);
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
