#pragma once
// Part of retention_engine.cuh (built on retention_engine_parts.cuh, included before the engine's kernels): the walks
// of chunk_engine_kernel (outputs pass) and chunk_engine_dkdv_kernel (fused backward) on Hopper's warpgroup MMA, for
// bf16 with key size 128 (value tile 128, or 64 in the outputs pass) or 256 (outputs pass, value tile 64), where the
// code is compiled for sm_90a. Same contracts as the mma.sync walks; the tensor cores read the chunk tiles and the
// state copy straight from shared memory, so the warps issue a few wgmma per chunk instead of loading every fragment
// themselves (the mma.sync walks are latency- and issue-bound at 34 % tensor-pipe use).
//
// Two warpgroups, each holding state rows 64 wg .. 64 wg + 63 (all the block's value columns) in registers, and with
// key size 256 also rows 128 + 64 wg .. (a second m64 tile; S and Q H reduce over 16 k steps). With 128 value columns,
// warpgroup wg computes output columns 64 wg .. 64 wg + 63 for all 64 chunk rows. With 64 (narrow blocks) it computes
// output columns 32 wg .. 32 wg + 31 and scores only keys 32 wg .. 32 wg + 31: the two swap their masked scores through
// shared memory, so that the block computes S once (WgmmaSplit). The 128-column walks and the fused backward take the
// decays through the operands (rows scaled in shared memory as they land, see wgmma_outputs_walk), so that the scores
// need only the causal mask; the narrow and key-256 walks apply them in registers (WalkDecay, RegisterDecays), which
// spares a pass over the Q and K tiles per chunk. With key size 256, K and the state copy share one tile per stage
// (MergedKeyTile), so that S and Q H are one product per k step. A chunk of the outputs walk, in four commit groups:
//   1. S = Q K^T, then O = Q H (H: the bf16 copy of the state entering the chunk), both from shared memory (then the
//      next chunk's loads are issued), while the warps load the update's K^T fragments and mask S into A fragments
//      (narrow: and swap them);
//   2. O += (S . mask) V, the masked scores from registers;
//   3. H <- gamma^len H + (K diag(w))^T V, K^T from registers, which runs on while the outputs are stored and the
//      next chunk's rows are scaled.
// Three stages of cp.async copies keep two chunks in flight (two stages, one chunk in flight, in the fused backward,
// whose stages hold four tiles, and with key size 256, whose two stages take all 227 KiB: WgmmaSmem). The walks load
// through TMA instead (tma.cuh; one thread issues the chunk's boxes) where the host gives them tensor maps; with key
// size 256 that is a walk of its own, with a role per warpgroup (wgmma_roles_walk: outputs, and the state), and so is
// the fused backward (wgmma_dkdv_roles_walk: dv, dk, and the state). Launches with heads whose decay is out of the
// wgmma range run the walks without roles (wgmma_dkdv_walk, and the outputs walk on its loads) for the heads in range.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "retnet/cuda/retention_engine_parts.cuh"
#include "retnet/cuda/tma.cuh"
#include "retnet/cuda/wgmma.cuh"

namespace retnet::cuda_detail {

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
// Arrives at barrier Id without waiting (the other side syncs).
template <int Id, int Threads>
__device__ __forceinline__ void named_barrier_arrive() {
  asm volatile("bar.arrive %0, %1;\n" ::"n"(Id), "n"(Threads) : "memory");
}

// A bf16 tile of R rows in the 128-byte-swizzle layout (wgmma.cuh): atoms of 64 columns, R rows of 128 bytes each,
// back to back. A TileLoader policy.
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

// The merged stage tile of the key-256 walk: the chunk's 64 keys and the state copy's 64 columns (stored transposed,
// [column][key dim]) as the rows of one 128-row swizzled tile, in blocks of 32: keys 0-31, columns 0-31, keys 32-63,
// columns 32-63. Rows 64 wg .. 64 wg + 63 are then the B operand of warpgroup wg's [S | O] = Q [K_wg ; Hc_wg^T]^T: its
// 32 keys and its 32 output columns in one m64n64 product (Q read once). A TileLoader policy for K.
struct MergedKeyTile {
  using E = __nv_bfloat16;
  static constexpr int EPV = 8;
  static constexpr bool kStraightLoads = true;
  __host__ __device__ static constexpr int key_row(int j) { return (j & 31) + 64 * (j >> 5); }
  __device__ __forceinline__ static int state_row(int col) { return 32 + key_row(col); }
  template <int W>
  __device__ __forceinline__ static int at(int r, int c) {
    return SwizzledTile<128>::at<W>(key_row(r), c);
  }
};

// The warpgroup's staging tile of output rows (store_outputs_staged): Cols columns padded by 8 elements.
template <int Cols>
inline constexpr int kStagedOutputPitch = Cols + 8;

// How the two warpgroups share a chunk where a block computes DV value columns: warpgroup wg computes output columns
// OW wg .. OW wg + OW - 1 for all 64 chunk rows and scores keys KW wg .. KW wg + KW - 1. With 128 columns each
// scores all 64 keys; with 64 each scores 32 and the two swap the masked scores' A fragments (exchange_scores):
// k step kt of a warpgroup's fragments holds keys key0 + 16 kt mod 64, its own first.
template <int DV>
struct WgmmaSplit {
  static_assert(DV == 64 || DV == 128, "value tile of 64 or 128 columns");
  static constexpr int OW = DV / 2, KW = DV / 2;
  static constexpr bool kExchange = KW < kEngineRows;
  // per warpgroup and own k step, one 16-byte A fragment per thread
  static constexpr int kExchangeBytes = kExchange ? 2 * (KW / 16) * 128 * 16 : 0;
  __device__ __forceinline__ static int key0(int wg) { return kExchange ? wg * KW : 0; }
  // The warpgroup's first output column in row 0 of a swizzled tile of R rows (elements): its atom, or 64 bytes
  // into the one atom's rows (N-major operands only: wgmma.cuh).
  template <int R>
  __device__ __forceinline__ static int col0(int wg) {
    if constexpr (OW == 64) {
      return wg * SwizzledTile<R>::kAtom;
    } else {
      return wg * OW;
    }
  }
};

// A walk's shared memory: Stages stages of two tiles of width DQK and VTiles of width DV, two state copies
// [DQK, DV], the two warpgroups' output staging tiles, bf16, the score exchange (WgmmaSplit<DV>) and room to align
// them to 1024 bytes. The walks assert fits.
template <int DQK, int DV, int VTiles, int Stages>
struct WgmmaWalkSmem {
  using Split = WgmmaSplit<DV>;
  static constexpr int LM = kEngineRows, QK_ELEMS = LM * DQK, V_ELEMS = LM * DV,
                       STAGE = 2 * QK_ELEMS + VTiles * V_ELEMS;
  static constexpr int STAGES = Stages, H_ELEMS = DQK * DV, O_ELEMS = LM * kStagedOutputPitch<Split::OW>;
  static constexpr int bytes = (STAGES * STAGE + 2 * H_ELEMS + 2 * O_ELEMS) * 2 + Split::kExchangeBytes + 1024;
  static constexpr bool fits = bytes <= 227 * 1024;
};
// The outputs walk: Q, K and V in three stages, or two where three do not fit (key size 256: two take exactly
// 227 KiB, and one state copy instead of two would still leave no room for a third). The fused backward: k, q, g and
// v in two.
template <int DQK, int VT>
using WgmmaSmem =
    std::conditional_t<WgmmaWalkSmem<DQK, VT, 1, 3>::fits, WgmmaWalkSmem<DQK, VT, 1, 3>, WgmmaWalkSmem<DQK, VT, 1, 2>>;
template <int DQK, int DV>
using WgmmaDkdvSmem = WgmmaWalkSmem<DQK, DV, 2, 2>;

// Whether chunk_engine_dkdv_kernel<Ops, DQK, DV> has the wgmma walk (where built for sm_90a).
template <class Ops, int DQK, int DV>
inline constexpr bool kWgmmaDkdv = std::is_same_v<Ops, EngineOps<__nv_bfloat16>>&& DQK == 128 && DV == 128;

// Whether chunk_engine_kernel<Ops, DQK, VT, Summary> has the wgmma walk (where built for sm_90a).
template <class Ops, int DQK, int VT, bool Summary>
inline constexpr bool kWgmmaWalk = !Summary && std::is_same_v<Ops, EngineOps<__nv_bfloat16>> &&
                                   ((DQK == 128 && (VT == 64 || VT == 128)) || (DQK == 256 && VT == 64));

// Whether chunk_engine_kernel<Ops, DQK, VT, true> (a summary pass) takes wgmma_summary_walk (where built for sm_90a).
template <class Ops, int DQK, int VT, bool Summary>
inline constexpr bool kWgmmaSummaryWalk = Summary&& std::is_same_v<Ops, EngineOps<__nv_bfloat16>>&& DQK == 128 &&
                                          (VT == 64 || VT == 128);

// The walks scale chunk rows by gamma^(i - 32) and gamma^(32 - j) (below). Heads whose decay is below 2^-3 would
// push these factors out of float's normal range (2^-126); they take the mma.sync walks.
inline constexpr float kWgmmaMinLog2Gamma = -3.0f;

// Whether this block's head takes the wgmma walks (its decay is not too small for them).
__device__ __forceinline__ bool wgmma_walk_applies(const ScanParams& p, const HeadDecays& dec) {
  return dec.log2g[blockIdx.z % p.H] >= kWgmmaMinLog2Gamma;
}

// The parts of the walks. Two warpgroups; warpgroup wg holds the state rows 128 mt + 64 wg .. 128 mt + 64 wg + 63,
// mt < DQK / 128 (all the block's NB n8 blocks of value columns) in registers: hacc[NB mt + j][e] at row
// row(mt) + 8 (e / 2), column 8 j + 2 tq + e % 2 (the warpgroup's accumulator layout, one m64 tile after the other).
struct WgmmaThread {
  int tid, lane, wg, wq, g, tq, hrow;
  __device__ explicit WgmmaThread(int t)
      : tid(t), lane(t & 31), wg(t >> 7), wq((t >> 5) & 3), g(lane >> 2), tq(lane & 3), hrow(wg * 64 + wq * 16 + g) {}
  // The first state row of this thread's fragments in m64 tile mt of the warpgroup's state rows.
  __device__ __forceinline__ int row(int mt) const { return hrow + 128 * mt; }
};

// The state's m64 tiles per warpgroup of a walk with key size DQK. Their fragments (hacc, and ka of the update) sit
// in flat arrays, tile after tile: an array of one more dimension would change the code compiled for key size 128.
template <int DQK>
inline constexpr int kStateTiles = DQK / 128;

// Elements i .. i + N - 1 of an array, as an array of N (one m64 tile's fragments of the state, as pair()).
template <int N, class X, int M>
__device__ __forceinline__ X (&subarray(X (&x)[M], int i))[N] {
  return *reinterpret_cast<X(*)[N]>(&x[i]);
}

// The block's (batch, head) pair and segment: blockIdx (value tile, segment, batch * head).
struct WgmmaSegment {
  int s, bh, b, h;
  int64_t T, start;  // sequence length; first position of the segment
  int len, nchunks;  // the segment's rows and chunks
  float l2g;         // log2 of the head's decay
  __device__ WgmmaSegment(const ScanParams& p, const HeadDecays& dec)
      : s(blockIdx.y),
        bh(blockIdx.z),
        b(bh / p.H),
        h(bh % p.H),
        T(p.T),
        start(static_cast<int64_t>(s) * p.seg),
        len(static_cast<int>(min(static_cast<int64_t>(p.seg), T - start))),
        nchunks((len + p.L - 1) / p.L),
        l2g(dec.log2g[h]) {}
  __device__ float gpow(int n) const { return exp2f(static_cast<float>(n) * l2g); }  // gamma^n
};

// The sequence position that row 0 of a chunk's TMA tiles holds: the chunk's first, c0; with mirror (a reversed
// run's tiles, whose row r holds chunk row 63 - r: the copies cannot run backwards) T - c0 - 64, which reads
// positions below 0 as zeros where the chunk is short.
__device__ __forceinline__ int tma_tile_position(int64_t T, int64_t c0, int mirror) {
  return static_cast<int>(mirror ? T - c0 - kEngineRows : c0);
}

// Issues the TMA boxes of one chunk tile: sequence rows y0 .. y0 + 63 (tma_tile_position) and columns
// col0 .. col0 + Cols - 1 of the map, into a 128-byte-swizzled tile at dst whose 64-column atoms lie atom elements
// apart; the box of rows y0 + kTmaBoxRows i .. lands at tile row half_rows i (kTmaBoxRows, or 64 for the keys of a
// MergedKeyTile). Completes on bar. One thread.
template <int Cols>
__device__ __forceinline__ void tma_load_chunk_tile(__nv_bfloat16* dst, int atom, const CUtensorMap* map, uint64_t* bar,
                                                    int col0, int h, int y0, int b, int half_rows = kTmaBoxRows) {
#pragma unroll
  for (int half = 0; half < kEngineRows / kTmaBoxRows; ++half)
#pragma unroll
    for (int a = 0; a < Cols / 64; ++a)
      tma_load_box(dst + a * atom + half * half_rows * 64, map, bar, col0 + 64 * a, h, y0 + half * kTmaBoxRows, b);
}

// The 16-byte piece at x times a bf16 pair.
__device__ __forceinline__ void scale_piece(__nv_bfloat16* x, uint32_t f) {
  uint4* p = reinterpret_cast<uint4*>(x);
  uint4 y = *p;
  y.x = mul_bf16x2(y.x, f), y.y = mul_bf16x2(y.y, f), y.z = mul_bf16x2(y.z, f), y.w = mul_bf16x2(y.w, f);
  *p = y;
}

// hacc times f, as the bf16 state copy (the 128-byte-swizzle tile [DQK, 8 NB]) that the next chunk's products read.
template <int DQK, int N, int NB = N / kStateTiles<DQK>>
__device__ __forceinline__ void store_state_copy(__nv_bfloat16* Hs, const float (&hacc)[N][4], float f,
                                                 const WgmmaThread& t) {
#pragma unroll
  for (int mt = 0; mt < kStateTiles<DQK>; ++mt)
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        *reinterpret_cast<uint32_t*>(Hs +
                                     SwizzledTile<DQK>::template at<8 * NB>(t.row(mt) + 8 * half, 8 * j + 2 * t.tq)) =
            pack_bf16x2(hacc[NB * mt + j][2 * half] * f, hacc[NB * mt + j][2 * half + 1] * f);
}

__device__ __forceinline__ void stsm_x4_trans(void* p, const uint32_t (&x)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(smem_addr(p)), "r"(x[0]),
               "r"(x[1]), "r"(x[2]), "r"(x[3])
               : "memory");
}

// stmatrix .x4 (untransposed) at a shared-memory address.
__device__ __forceinline__ void stsm_x4(uint32_t addr, const uint32_t (&x)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(addr), "r"(x[0]), "r"(x[1]),
               "r"(x[2]), "r"(x[3])
               : "memory");
}

// hacc times f as store_state_copy, stored transposed into the state rows of a MergedKeyTile (row: state column,
// columns: key dims). Each 8 x 8 block of a thread's fragments is an stmatrix fragment; the transposing store puts
// block (key dims d0.., columns v0..) at rows state_row(v0 + k), 16 contiguous bytes each.
template <int DQK, int N, int NB = N / kStateTiles<DQK>>
__device__ __forceinline__ void store_state_copy_transposed(__nv_bfloat16* KH, const float (&hacc)[N][4], float f,
                                                            const WgmmaThread& t) {
  const int i = t.lane >> 3, k = t.lane & 7;  // this lane gives the address of stored row k of matrix i
#pragma unroll
  for (int mt = 0; mt < kStateTiles<DQK>; ++mt)
#pragma unroll
    for (int j0 = 0; j0 < NB; j0 += 2) {
      uint32_t x[4];
#pragma unroll
      for (int m = 0; m < 4; ++m) {  // matrix m: n8 block j0 + m / 2, rows + 8 (m % 2)
        const float(&c)[4] = hacc[NB * mt + j0 + (m >> 1)];
        x[m] = pack_bf16x2(c[2 * (m & 1)] * f, c[2 * (m & 1) + 1] * f);
      }
      const int v = 8 * (j0 + (i >> 1)) + k, d0 = 128 * mt + t.wg * 64 + t.wq * 16 + 8 * (i & 1);
      stsm_x4_trans(KH + SwizzledTile<128>::at<DQK>(MergedKeyTile::state_row(v), d0), x);
    }
}

// The A fragments of X^T (X a chunk tile, 128-byte swizzle): rows m0 .. m0 + 15 of X^T (columns of X) for the four
// k steps of 16 chunk rows, each register times the bf16 pair w(kt, half) of its chunk rows: register x of k step kt
// holds rows 16 kt + 8 half + 2 tq and the next (half = x / 2; ldmatrix's transposed layout).
template <class Tile = SwizzledTile<kEngineRows>, class W>
__device__ __forceinline__ void transposed_a_fragments(uint32_t (&a)[4][4], const __nv_bfloat16* X, int m0, int lane,
                                                       W&& w) {
  const int mat = lane >> 3, r = lane & 7;
#pragma unroll
  for (int kt = 0; kt < 4; ++kt) {
    ldsm_x4_trans(a[kt], X + Tile::template at<128>(kt * 16 + r + 8 * (mat >> 1), m0 + 8 * (mat & 1)));
#pragma unroll
    for (int x = 0; x < 4; ++x) a[kt][x] = mul_bf16x2(a[kt][x], w(kt, x >> 1));
  }
}

// The state update's A fragments for the warpgroup's m64 state tile mt: U^T rows row(mt).. times fu.
__device__ __forceinline__ void update_fragments(uint32_t (&ka)[4][4], const __nv_bfloat16* U, int mt, float fu,
                                                 const WgmmaThread& t) {
  const uint32_t w = pack_bf16x2(fu, fu);
  transposed_a_fragments(ka, U, 128 * mt + t.wg * 64 + t.wq * 16, t.lane, [w](int, int) { return w; });
}

// How a walk's decays reach its products.
//   operands: Q~ and K~ are scaled in shared memory as they land (the walk's prescale), so that the scores need only
//             the causal mask and the update one factor per chunk (the key-128 walks);
//   registers: the tiles stay as loaded and the factors are applied in registers: the scores times gamma^(i - j),
//             the state part of the outputs times gamma^(i - R), the update's K^T fragments times gamma^(len - 1 - j)
//             (the narrow and key-256 walks; with key size 256 the prescale would move 128 KiB of shared memory per
//             chunk and block; the 128-column walk spills registers this way and runs 2-4 % slower on the H200).
enum class WalkDecay { operands, registers };
template <int DQK, int VT>
inline constexpr WalkDecay kWalkDecay = DQK == 256 || VT == 64 ? WalkDecay::registers : WalkDecay::operands;
// Whether the outputs walk <DQK, VT> keeps keys and state copy in one tile (MergedKeyTile): key size 256.
template <int DQK, int VT>
inline constexpr bool kMergedWalk = DQK == 256 && kWalkDecay<DQK, VT> == WalkDecay::registers;
// Whether the outputs walk <DQK, VT> runs as wgmma_roles_walk where it loads through TMA (ScanParams::tma == 1): value
// tiles of 64 with the decays in registers, key size 256 (merged) or 128 (narrow).
template <int DQK, int VT>
inline constexpr bool kRolesWalk = VT == 64 && kWalkDecay<DQK, VT> == WalkDecay::registers &&
                                   (DQK == 128 || kMergedWalk<DQK, VT>);
// Whether chunk_engine_kernel<Ops, DQK, VT, Summary>'s wgmma walk loads its chunks through TMA where the host encoded
// the tensor maps (ScanParams::tma): one thread issues the boxes instead of 256 threads issuing 12 to 16 16-byte
// cp.async pieces each per chunk. The walks of value tile 64 do so as wgmma_roles_walk; without the maps every walk
// loads through cp.async (the narrow key-128 walk always: with TMA it is 4-5 % slower on the H200).
template <class Ops, int DQK, int VT, bool Summary>
inline constexpr bool kWgmmaTmaWalk = kWgmmaWalk<Ops, DQK, VT, Summary>;

// The factors of WalkDecay::registers for a thread whose scores cover keys key0 + 8 nt + 2 tq + e (nt < NB, e < 2),
// set once per segment (the update's weights again where the chunk length changes):
//   row[half]     = gamma^(i - R) for its rows i = 16 wq + g + 8 half (the state part of the outputs);
//   col[nt][e]    = gamma^(R - j) for its score columns (the scores take row times col, gamma^(i - j) <= 1 where kept);
//   upd[kt][half] = gamma^(len - 1 - j) as bf16 pairs for keys j = 16 kt + 8 half + 2 tq and the next (0 past len):
//                   the update's K^T fragments (transposed_a_fragments' layout).
// Indices are the tile's rows; with mirror = 63 the tile holds the chunk upside down (row r is chunk row r ^ 63 =
// 63 - r: the TMA walk's reversed runs, whose copies cannot run backwards), and the factors are those of the chunk
// rows.
template <int NB>
struct RegisterDecays {
  float row[2], col[NB][2];
  uint32_t upd[4][2];
  int len = -1;
  int mirror;  // 0, or 63: tile row r holds chunk row 63 - r
  __device__ RegisterDecays(float l2g, int key0, const WgmmaThread& t, int m = 0) : mirror(m) {
    constexpr int R = kEngineRows / 2;
    for (int half = 0; half < 2; ++half)
      row[half] = exp2f(static_cast<float>(((t.wq * 16 + t.g + 8 * half) ^ m) - R) * l2g);
    for (int nt = 0; nt < NB; ++nt)
      for (int e = 0; e < 2; ++e)
        col[nt][e] = exp2f(static_cast<float>(R - ((key0 + 8 * nt + 2 * t.tq + e) ^ m)) * l2g);
  }
  __device__ __forceinline__ void prepare(int n, float l2g, const WgmmaThread& t) {
    if (n == len) return;
    auto w = [&](int r) {
      const int j = r ^ mirror;
      return j < n ? exp2f(static_cast<float>(n - 1 - j) * l2g) : 0.f;
    };
    for (int kt = 0; kt < 4; ++kt)
      for (int half = 0; half < 2; ++half) {
        const int r = kt * 16 + 8 * half + 2 * t.tq;
        upd[kt][half] = pack_bf16x2(w(r), w(r + 1));
      }
    len = n;
  }
};

// update_fragments with the weights of RegisterDecays (U stored as Tile).
template <class Tile = SwizzledTile<kEngineRows>, int NB>
__device__ __forceinline__ void update_fragments(uint32_t (&ka)[4][4], const __nv_bfloat16* U, int mt,
                                                 const RegisterDecays<NB>& rd, const WgmmaThread& t) {
  transposed_a_fragments<Tile>(ka, U, 128 * mt + t.wg * 64 + t.wq * 16, t.lane,
                               [&](int kt, int half) { return rd.upd[kt][half]; });
}

// The warp's scores (rows row0 .. row0 + 15 of the chunk, keys key0 .. key0 + 8 NB - 1) under the causal mask
// i >= j, as the A fragments of the first NB / 2 k steps of (S . mask) V; i and j are chunk rows of the tiles' rows
// r ^ mirror (RegisterDecays).
// With rd (WalkDecay::registers): also times gamma^(i - j).
template <int NB>
__device__ __forceinline__ void masked_score_fragments(uint32_t (&sa)[4][4], const float (&sacc)[NB][4], int row0,
                                                       int key0, const WgmmaThread& t,
                                                       const RegisterDecays<NB>* rd = nullptr, int mirror = 0) {
#pragma unroll
  for (int kt = 0; kt < NB / 2; ++kt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int nt = 2 * kt + half;
      float m[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = (row0 + t.g + 8 * (e >> 1)) ^ mirror, j = (key0 + nt * 8 + 2 * t.tq + (e & 1)) ^ mirror;
        if (rd) {
          m[e] = i >= j ? sacc[nt][e] * (rd->row[e >> 1] * rd->col[nt][e & 1]) : 0.f;
        } else {
          m[e] = i >= j ? sacc[nt][e] : 0.f;
        }
      }
      sa[kt][2 * half] = pack_bf16x2(m[0], m[1]);
      sa[kt][2 * half + 1] = pack_bf16x2(m[2], m[3]);
    }
}

// Writes the warpgroup's output tile oacc (chunk rows 0 .. len - 1 at sequence positions c0 + i, columns
// col0 .. col0 + 8 NB - 1 of o [B, T, H, width], each row times p.mu where given) through the warpgroup's staging
// tile Os [64, 8 NB + 8] (padded rows: the fragment writes are free of bank conflicts, and the row reads too for
// 64 columns), in 16-byte row pieces. BarrierFirst: Os may still be being read by the warpgroup's previous call.
// mirror 63: the tile's row r is chunk row 63 - r (RegisterDecays).
template <bool BarrierFirst, int NB>
__device__ __forceinline__ void store_outputs_staged(__nv_bfloat16* Os, void* o, int width, int col0,
                                                     const float (&oacc)[NB][4], const ScanParams& p, int b, int h,
                                                     int64_t c0, int len, const WgmmaThread& t, int mirror = 0) {
  using E = __nv_bfloat16;
  constexpr int PITCH = kStagedOutputPitch<8 * NB>, PIECES = NB, ROWS = 128 / PIECES;  // pieces per row, rows per pass
  auto bar = [&] {
    if (t.wg == 0) {
      named_barrier_sync<1, 128>();
    } else {
      named_barrier_sync<2, 128>();
    }
  };
  auto phys = [&](int64_t pos) { return p.reverse ? p.T - 1 - pos : pos; };
  if constexpr (BarrierFirst) bar();
  const int row0 = t.wq * 16;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = (row0 + t.g + 8 * half) ^ mirror;  // chunk row
    const float m = p.mu && i < len ? p.mu[(static_cast<int64_t>(b) * p.T + phys(c0 + i)) * p.H + h] : 1.f;
    const int r = i ^ mirror;
#pragma unroll
    for (int nt = 0; nt < NB; ++nt)
      *reinterpret_cast<uint32_t*>(Os + r * PITCH + nt * 8 + 2 * t.tq) =
          pack_bf16x2(oacc[nt][2 * half] * m, oacc[nt][2 * half + 1] * m);
  }
  bar();  // the tile is complete
  const int piece = t.tid & (PIECES - 1);
  const int64_t ld = static_cast<int64_t>(p.H) * width;
  E* const og = static_cast<E*>(o) + (static_cast<int64_t>(b) * p.T * p.H + h) * width + col0 + piece * 8;
#pragma unroll
  for (int it = 0; it < kEngineRows / ROWS; ++it) {
    const int r = it * ROWS + (t.tid & 127) / PIECES, i = r ^ mirror;
    if (i < len)
      *reinterpret_cast<uint4*>(og + phys(c0 + i) * ld) = *reinterpret_cast<const uint4*>(Os + r * PITCH + piece * 8);
  }
}

// One k16 step's operand offset in a 128-byte-swizzled tile read K-major along its columns (128 or 256: two or four
// atoms): the 64-column atom and the 32-byte step inside it.
template <int Rows>
__device__ __forceinline__ int kmajor_step(int ks) {
  return (ks / 4) * SwizzledTile<Rows>::kAtom + (ks % 4) * 16;
}

// Where the warpgroups split the scores (WgmmaSplit), each hands its masked scores' A fragments (k steps
// 0 .. KW / 16 - 1 of sa) to the other, which takes them as its k steps KW / 16 ..; x: the exchange's shared memory.
template <class Split>
__device__ __forceinline__ void exchange_scores(uint32_t (&sa)[4][4], uint4* x, const WgmmaThread& t) {
  constexpr int OWN = Split::KW / 16;
  const int i = t.tid & 127;  // the other warpgroup's thread i holds the same rows
#pragma unroll
  for (int kt = 0; kt < OWN; ++kt)
    x[(t.wg * OWN + kt) * 128 + i] = make_uint4(sa[kt][0], sa[kt][1], sa[kt][2], sa[kt][3]);
  __syncthreads();  // both halves written; the next writes come after the next chunk's barrier
#pragma unroll
  for (int kt = 0; kt < OWN; ++kt) {
    const uint4 y = x[((t.wg ^ 1) * OWN + kt) * 128 + i];
    sa[OWN + kt][0] = y.x, sa[OWN + kt][1] = y.y, sa[OWN + kt][2] = y.z, sa[OWN + kt][3] = y.w;
  }
}

// The first part of a chunk in the walks, for a warpgroup of a block of DV value columns (WgmmaSplit<DV>):
// S = A B[key0 ..]^T and O = A Hc[:, OW wg ..] (A, B chunk tiles [64, DQK] read K-major; Hc the state copy [DQK, DV]
// read N-major) in two commit groups; meanwhile the update's A fragments of the first state tile (update_fragments;
// with key size 256 the walk loads the second tile's later, so that part 1 holds fewer registers) and the state's decay
// dl (split: before); then S under the causal mask as A fragments sa (all 64 keys: split scores are swapped through x).
// Returns with O complete. (The update also runs after a segment's last chunk, whose state nobody reads: a wgmma under
// a branch makes ptxas serialize all of them.) With rd (WalkDecay::registers): the factors in registers (fu unused),
// and O's rows times gamma^(i - R). issued() runs once both products are issued (the outputs walk issues its next
// loads there, behind the tensor cores' work). Merged (key size 256): B is a MergedKeyTile holding both K and the
// state copy (Hc unused), and S and O come from one m64n64 product per k step, in one commit group. mirror: the
// tiles' rows are chunk rows r ^ mirror (masked_score_fragments).
struct NoWork {
  __device__ void operator()() const {}
};
template <int DQK, int DV = 128, bool Merged = false, class Issued = NoWork>
__device__ __forceinline__ void scores_and_state_part(float (&oacc)[DV / 16][4], uint32_t (&sa)[4][4],
                                                      uint32_t (&ka)[4][4], float (&hacc)[kStateTiles<DQK> * DV / 8][4],
                                                      const __nv_bfloat16* A, const __nv_bfloat16* B,
                                                      const __nv_bfloat16* Hc, const __nv_bfloat16* U, float fu,
                                                      float dl, const WgmmaThread& t, uint4* x = nullptr,
                                                      const RegisterDecays<WgmmaSplit<DV>::KW / 8>* rd = nullptr,
                                                      Issued issued = {}, int mirror = 0) {
  using HTile = SwizzledTile<DQK>;
  using Split = WgmmaSplit<DV>;
  constexpr int LM = kEngineRows, KS = 16;
  const int key0 = Split::key0(t.wg);
  float sacc[Split::KW / 8][4];
  auto decay_state = [&] {
#pragma unroll
    for (int j = 0; j < kStateTiles<DQK> * DV / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) hacc[j][e] *= dl;
  };
  // Scaled among the products below, the state makes ptxas wait for them all first (info C7517), which holds the
  // mask (and the exchange) back until Q H is done; the split walk scales it before them. (The 128-column walks
  // keep their measured order.)
  constexpr bool kDecayFirst = Split::kExchange && !Merged;
  if constexpr (kDecayFirst) decay_state();
  wgmma_fence();
  if constexpr (Merged) {
    static_assert(Split::KW == 32 && DV == 64, "32 keys and 32 output columns per warpgroup");
    float acc[8][4];
#pragma unroll
    for (int ks = 0; ks < DQK / KS; ++ks)
      wgmma_m64n64k16_ss<0, 0>(acc, wgmma_desc(A + kmajor_step<LM>(ks), 0),
                               wgmma_desc(B + t.wg * 64 * 64 + kmajor_step<128>(ks), 0), ks > 0);
    wgmma_commit();
    issued();
    update_fragments<MergedKeyTile>(ka, U, 0, *rd, t);
    wgmma_wait<0>();
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) sacc[nt][e] = acc[nt][e], oacc[nt][e] = acc[4 + nt][e];
  } else {
#pragma unroll
    for (int ks = 0; ks < DQK / KS; ++ks)
      wgmma_m64k16_ss<0, 0>(sacc, wgmma_desc(A + kmajor_step<LM>(ks), 0),
                            wgmma_desc(B + key0 * 64 + kmajor_step<LM>(ks), 0), ks > 0);
    wgmma_commit();
#pragma unroll
    for (int ks = 0; ks < DQK / KS; ++ks)
      wgmma_m64k16_ss<0, 1>(oacc, wgmma_desc(A + kmajor_step<LM>(ks), 0),
                            wgmma_desc(Hc + Split::template col0<DQK>(t.wg) + ks * KS * 64, 2 * HTile::kAtom), ks > 0);
    wgmma_commit();
    issued();
    if (rd) {
      update_fragments(ka, U, 0, *rd, t);
    } else {
      update_fragments(ka, U, 0, fu, t);
    }
  }
  if constexpr (!kDecayFirst) decay_state();
  wgmma_wait<1>();
  masked_score_fragments(sa, sacc, t.wq * 16, key0, t, rd, mirror);
  if constexpr (Split::kExchange) exchange_scores<Split>(sa, x, t);
  wgmma_wait<0>();
  if (rd) {
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int nt = 0; nt < DV / 16; ++nt) oacc[nt][2 * half] *= rd->row[half], oacc[nt][2 * half + 1] *= rd->row[half];
  }
}

// O += (S . mask) X[:, OW wg ..] for a warpgroup (sa: the masked scores' A fragments, k step kt at keys
// key0 + 16 kt mod 64; X a chunk tile read N-major), one commit group.
template <int DV = 128>
__device__ __forceinline__ void masked_values(float (&oacc)[DV / 16][4], const uint32_t (&sa)[4][4],
                                              const __nv_bfloat16* X, const WgmmaThread& t) {
  using Tile = SwizzledTile<kEngineRows>;
  using Split = WgmmaSplit<DV>;
  constexpr int LM = kEngineRows;
  const int key0 = Split::key0(t.wg);
  wgmma_fence();
#pragma unroll
  for (int kt = 0; kt < 4; ++kt)
    wgmma_m64k16_rs<1>(
        oacc, sa[kt],
        wgmma_desc(X + Split::template col0<LM>(t.wg) + ((key0 + kt * 16) & (LM - 1)) * 64, 2 * Tile::kAtom));
  wgmma_commit();
}

// H += U^T W over all DV state columns, one commit group (ka[4 mt + kt]: the A fragments of the weighted U^T for the
// state's m64 tile mt; W a chunk tile read N-major, all its atoms).
template <int DV, int N, int MT = N / (DV / 8)>
__device__ __forceinline__ void update_state(float (&hacc)[N][4], const uint32_t (&ka)[4 * MT][4],
                                             const __nv_bfloat16* W) {
  using Tile = SwizzledTile<kEngineRows>;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int kt = 0; kt < 4; ++kt)
      wgmma_m64k16_rs<1>(subarray<DV / 8>(hacc, DV / 8 * mt), ka[4 * mt + kt],
                         wgmma_desc(W + kt * 16 * 64, 2 * Tile::kAtom));
  wgmma_commit();
}

// The last products of a chunk in the fused backward: O += (S . mask) X[:, OW wg ..], then the update
// (update_state): two commit groups.
template <int DV = 128>
__device__ __forceinline__ void values_and_update(float (&oacc)[DV / 16][4], const uint32_t (&sa)[4][4],
                                                  const __nv_bfloat16* X, float (&hacc)[DV / 8][4],
                                                  const uint32_t (&ka)[4][4], const __nv_bfloat16* W,
                                                  const WgmmaThread& t) {
  masked_values<DV>(oacc, sa, X, t);
  update_state<DV>(hacc, ka, W);
}

// f(row, col, x) for each of this thread's state elements x (hacc: the warpgroup's state tiles, WgmmaThread's layout).
template <int DQK, class Acc, class F>
__device__ __forceinline__ void for_each_state_element(Acc& hacc, const WgmmaThread& t, F&& f) {
  constexpr int NB = static_cast<int>(sizeof(Acc) / sizeof(hacc[0])) / kStateTiles<DQK>;
#pragma unroll
  for (int mt = 0; mt < kStateTiles<DQK>; ++mt)
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) f(t.row(mt) + 8 * (e >> 1), 8 * j + 2 * t.tq + (e & 1), hacc[NB * mt + j][e]);
}

// dst[row * ld + col] = m * H(row, col) for this thread's state elements (the final state).
template <int DQK, int N>
__device__ __forceinline__ void write_state(float* dst, int64_t ld, const float (&hacc)[N][4], float m,
                                            const WgmmaThread& t) {
  for_each_state_element<DQK>(hacc, t, [&](int row, int col, float x) { dst[row * ld + col] = x * m; });
}

// The entering state of this thread's elements (columns col0 .. of the state, as entering_state).
template <int DQK, int N>
__device__ __forceinline__ void read_entering_state(float (&hacc)[N][4], const ScanParams& p, const WgmmaSegment& seg,
                                                    int col0, const WgmmaThread& t) {
  for_each_state_element<DQK>(
      hacc, t, [&](int row, int col, float& x) { x = entering_state<DQK>(p, seg.bh, seg.s, col0, row, col); });
}

// The walk on TMA with a role for each warpgroup, for value tiles of 64 (key size 256, and the narrow key-128 walk;
// where the host encoded the tensor maps: otherwise the merged and narrow walks keep their cp.async loads). Two
// warpgroups that split every chunk between them would wait for the slower at two block barriers per chunk (the
// score exchange and the next chunk's), and both read Q for their halves of [S | O] = Q [K ; Hc^T]^T (on the H200
// the tensor cores are busy 37 % of the merged key-256 walk, which works so). Here:
//   the outputs warpgroup (0): [S | O] = Q [K ; Hc^T]^T as one m64n128 product per k step (Q read once), the mask
//     and decays in registers, O += (S . mask) V, the outputs stored;
//   the state warpgroup (1): the state, transposed, in registers (one m64 n DQK accumulator),
//     H^T <- gamma^len H^T + (V diag(w))^T K, and the copy Hc^T = gamma^(R + 1) H^T entering the next chunk, stored
//     below the next chunk's keys; one of its threads refills the stages.
// So the update of chunk c runs beside chunk c's outputs, and no block barrier orders them. Their mbarriers, one of
// each per stage: full (the chunk's TMA boxes have landed), ready (the state warpgroup has stored the chunk's Hc),
// consumed (the outputs warpgroup has read the stage's Hc, which may take the copy entering chunk c + STAGES) and
// empty (both are done with the stage, which may take chunk c + STAGES). Stage layout: Q [64, DQK], the keys tile
// (rows 0-63 the chunk's keys, rows 64-127 Hc^T, both [., DQK]), V [64, 64]; then the outputs' staging tile. Three
// stages where they fit (key size 128), else two.
// OutWGs = 2 (chunk_roles_kernel, 384 threads; key size 128): two outputs warpgroups take alternate chunks, so that
// one's products run while the other masks and stores (a chunk's outputs depend only on its stage and its Hc); the
// state warpgroup is the third, and the outputs warpgroup that finishes a chunk refills its stage.
template <int DQK, int OutWGs = 1>
struct RolesWalkSmem {
  static constexpr int LM = kEngineRows, VT = 64;
  static constexpr int Q_ELEMS = LM * DQK, KEYS_ELEMS = 2 * LM * DQK, V_ELEMS = LM * VT;
  static constexpr int STAGE = Q_ELEMS + KEYS_ELEMS + V_ELEMS;
  static constexpr int O_ELEMS = LM * kStagedOutputPitch<VT>;  // per outputs warpgroup
  static constexpr int THREADS = 128 * (OutWGs + 1);
  static constexpr int bytes_with(int stages) {
    return (stages * STAGE + OutWGs * O_ELEMS) * 2 + 4 * stages * 8 + 1024;  // 4 mbarriers per stage; alignment
  }
  static constexpr int STAGES = bytes_with(3) <= 227 * 1024 ? 3 : 2;
  static constexpr int bytes = bytes_with(STAGES);
  static constexpr uint32_t kChunkBytes = (Q_ELEMS + KEYS_ELEMS / 2 + V_ELEMS) * 2;  // one chunk's boxes
};

// Dynamic shared memory of the outputs walk <DQK, VT>: its own layout's, or the roles walk's where larger.
template <int DQK, int VT>
constexpr int wgmma_walk_bytes() {
  if constexpr (kRolesWalk<DQK, VT>) {
    return RolesWalkSmem<DQK>::bytes > WgmmaSmem<DQK, VT>::bytes ? RolesWalkSmem<DQK>::bytes
                                                                 : WgmmaSmem<DQK, VT>::bytes;
  }
  return WgmmaSmem<DQK, VT>::bytes;
}

template <int DQK, int OutWGs = 1>
__device__ __forceinline__ void wgmma_roles_walk(const ScanParams& p, const HeadDecays& dec, unsigned char* smem_raw) {
  using E = __nv_bfloat16;
  using SM = RolesWalkSmem<DQK, OutWGs>;
  using QTile = SwizzledTile<kEngineRows>;
  using KeysTile = SwizzledTile<2 * kEngineRows>;
  constexpr int LM = kEngineRows, KS = 16, R = LM / 2, VT = SM::VT, S = SM::STAGES;
  static_assert(DQK == 128 || DQK == 256, "an m64 n128 or n256 state accumulator");
  static_assert(OutWGs == 1 || OutWGs == 2, "one or two outputs warpgroups");
  E* smem = reinterpret_cast<E*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  E* const Os_base = smem + S * SM::STAGE;
  uint64_t* const bars = reinterpret_cast<uint64_t*>(Os_base + OutWGs * SM::O_ELEMS);
  const StageBarriers<S> full{bars}, ready{bars + S}, consumed{bars + 2 * S}, empty{bars + 3 * S};
  auto stage_q = [&](int st) { return smem + st * SM::STAGE; };
  auto stage_keys = [&](int st) { return stage_q(st) + SM::Q_ELEMS; };
  auto stage_v = [&](int st) { return stage_keys(st) + SM::KEYS_ELEMS; };

  const WgmmaThread t(threadIdx.x);
  const WgmmaSegment seg(p, dec);
  const int vt = blockIdx.x, b = seg.b, h = seg.h, nchunks = seg.nchunks, dv = p.dv;
  const int64_t T = seg.T;
  const int mirror = p.reverse ? LM - 1 : 0;  // a reversed run's tiles hold its chunks upside down

  if (t.tid == 0) {
    full.set_up(1);
    ready.set_up(128);
    consumed.set_up(128);
    empty.set_up(256);  // the chunk's outputs warpgroup and the state warpgroup
  }
  __syncthreads();                // the only block barrier: the mbarriers are set up
  auto load_chunk = [&](int c) {  // one thread
    const int st = c % S, y0 = tma_tile_position(T, seg.start + static_cast<int64_t>(c) * p.L, mirror);
    uint64_t* const bar = full.of(c);
    full.expect(c, SM::kChunkBytes);
    tma_load_chunk_tile<DQK>(stage_q(st), QTile::kAtom, &p.tma_q, bar, 0, h, y0, b);
    tma_load_chunk_tile<DQK>(stage_keys(st), KeysTile::kAtom, &p.tma_k, bar, 0, h, y0, b);
    tma_load_chunk_tile<VT>(stage_v(st), QTile::kAtom, &p.tma_v, bar, vt * VT, h, y0, b);
  };
  if (t.tid == 0) {
    for (int c = 0; c < min(nchunks, S); ++c) load_chunk(c);
  }
  RegisterDecays<LM / 8> rd(seg.l2g, 0, t, mirror);

  if (t.wg < OutWGs) {  // an outputs warpgroup: chunks wg, wg + OutWGs, ..
    const int first = OutWGs > 1 ? t.wg : 0;
    E* const Os = Os_base + first * SM::O_ELEMS;
    for (int c = first; c < nchunks; c += OutWGs) {
      const int st = c % S, len = min(p.L, seg.len - c * p.L);
      const int64_t c0 = seg.start + static_cast<int64_t>(c) * p.L;
      const E* Qs = stage_q(st);
      const E* Ks = stage_keys(st);
      const E* Vs = stage_v(st);
      full.wait(c);
      ready.wait(c);
      // [S | O] = Q [K ; Hc^T]^T: accumulator blocks 0-7 the scores of keys 0-63, 8-15 the state part of the outputs.
      float acc[16][4];
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < DQK / KS; ++ks)
        wgmma_m64n128k16_ss<0, 0>(acc, wgmma_desc(Qs + kmajor_step<LM>(ks), 0),
                                  wgmma_desc(Ks + kmajor_step<2 * LM>(ks), 0), ks > 0);
      wgmma_commit();
      wgmma_wait<0>();
      consumed.arrive(c);  // the stage's Hc may take the copy entering chunk c + S
      // The state part's rows times gamma^(i - R), into an accumulator of its own (as a part of acc, the next
      // product's accumulator made ptxas serialize the products).
      float oacc[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) oacc[nt][e] = acc[8 + nt][e] * rd.row[e >> 1];
      uint32_t sa[LM / KS][4];
      masked_score_fragments(sa, subarray<8>(acc, 0), t.wq * 16, 0, t, &rd, mirror);
      // O += (S . mask) V
      wgmma_fence();
#pragma unroll
      for (int kt = 0; kt < LM / KS; ++kt)
        wgmma_m64n64k16_rs<1>(oacc, sa[kt], wgmma_desc(Vs + kt * KS * 64, 2 * QTile::kAtom));
      wgmma_commit();
      wgmma_wait<0>();
      empty.arrive(c);             // this warpgroup is done with the stage
      if constexpr (OutWGs > 1) {  // the refill of this stage with chunk c + S, once the state warpgroup is done too
        if ((t.tid & 127) == 0 && c + S < nchunks) {
          empty.wait(c);
          load_chunk(c + S);
        }
      }
      store_outputs_staged<true>(Os, p.o, dv, vt * VT, oacc, p, b, h, c0, len, t, mirror);
    }
    return;
  }

  // The state warpgroup holds H^T [VT, DQK] as one m64 n DQK accumulator: ht[j][e] is H(8 j + 2 tq + e % 2, column
  // 16 wq + g + 8 (e / 2)) (the accumulator layout). So the update is H^T += (V diag(w))^T K, four m64 n DQK k16
  // products with V^T's fragments from registers, and the copy Hc^T is stored untransposed.
  constexpr int NJ = DQK / 8;
  float ht[NJ][4];
  auto for_each_state_element = [&](auto&& f) {
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) f(8 * j + 2 * t.tq + (e & 1), 16 * t.wq + t.g + 8 * (e >> 1), ht[j][e]);
  };
  // The entering state (as entering_state): element (row, col) at src + row rs + col cs. The pointer passes through
  // an empty asm per n8 block, so that ptxas computes each block's addresses after the last block's loads (with all
  // 128 addresses computed first it spilled).
  {
    const float* src = p.states + state_offset<DQK>(p, seg.bh, seg.s);
    const int64_t rs = p.states_transposed ? 1 : dv, cs = p.states_transposed ? DQK : 1;
    src += 2 * t.tq * rs + (vt * VT + 16 * t.wq + t.g) * cs;
    const int64_t at[4] = {0, rs, 8 * cs, rs + 8 * cs};  // e = 0 .. 3: rows + e % 2, columns + 8 (e / 2)
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) ht[j][e] = src[at[e]];
      src += 8 * rs;
      asm volatile("" : "+l"(src));
    }
  }
  // The copy gamma^(R + 1) H^T entering chunk c, into rows LM .. LM + VT - 1 of stage c's keys tile, as stmatrix
  // fragments: matrix i of a store holds columns 16 wq + 8 (i % 2) .., key dims 8 (j + i / 2) ..; lane l gives the
  // address of its row l % 8. Then the outputs warpgroup may read it.
  const float copy_factor = seg.gpow(R + 1);
  const int st_i = t.lane >> 3, st_k = t.lane & 7;
  const uint32_t copy_row = 2 * (LM + 16 * t.wq + 8 * (st_i & 1) + st_k) * 64;
  auto state_copy = [&](int c) {
    const uint32_t KH = smem_addr(stage_keys(c % S)) + copy_row;
#pragma unroll
    for (int j = 0; j < NJ; j += 2) {
      uint32_t x[4];
#pragma unroll
      for (int m = 0; m < 4; ++m) {  // matrix m: n8 block j + m / 2, rows + 8 (m % 2)
        const float(&v)[4] = ht[j + (m >> 1)];
        x[m] = pack_bf16x2(v[2 * (m & 1)] * copy_factor, v[2 * (m & 1) + 1] * copy_factor);
      }
      // KeysTile::at(row, 8 (j + i / 2)): the atom, and the 16-byte piece (j % 8 + i / 2) ^ (row % 8) of the row
      const uint32_t piece = ((j & 7) ^ (st_i >> 1) ^ st_k) << 4;
      stsm_x4(KH + 2 * (j / 8) * KeysTile::kAtom + piece, x);
    }
    fence_proxy_async();  // the tensor cores read the copy
    ready.arrive(c);
  };
  state_copy(0);
  for (int c = 0; c < nchunks; ++c) {
    const int st = c % S, len = min(p.L, seg.len - c * p.L);
    const E* Ks = stage_keys(st);
    const E* Vs = stage_v(st);
    full.wait(c);
    rd.prepare(len, seg.l2g, t);
    const float dl = seg.gpow(len);
    // H^T <- gamma^len H^T + (V diag(w))^T K, w_j = gamma^(len - 1 - j); K read N-major (its key dims).
    uint32_t va[LM / KS][4];
    transposed_a_fragments(va, Vs, t.wq * 16, t.lane, [&](int kt, int half) { return rd.upd[kt][half]; });
    for_each_state_element([&](int, int, float& x) { x *= dl; });
    wgmma_fence();
#pragma unroll
    for (int kt = 0; kt < LM / KS; ++kt)
      wgmma_m64k16_rs<1>(ht, va[kt], wgmma_desc(Ks + kt * KS * 64, 2 * KeysTile::kAtom));
    wgmma_commit();
    wgmma_wait<0>();
    fence_proxy_async();  // this warpgroup's reads of the stage, before its refill
    empty.arrive(c);
    // The copy entering chunk c + 1, once chunk c + 1 - S's outputs have read the Hc rows of its stage (the TMA boxes
    // of chunk c + 1 fill only the key rows: the copy need not wait for them).
    if (c + 1 < nchunks) {
      if (c + 1 >= S) consumed.wait(c + 1 - S);
      state_copy(c + 1);
    }
    // Then the refill of this stage with chunk c + S, once the outputs warpgroup is done with chunk c too.
    if (OutWGs == 1 && t.tid == 128 && c + S < nchunks) {
      empty.wait(c);
      load_chunk(c + S);
    }
  }
  float* const final_state = final_state_of(p, seg.s);
  if (final_state) {  // the last segment: this walk ends the sequence
    const float m = final_state_factor(p, dec, seg.bh, h);
    float* dst = final_state + static_cast<int64_t>(seg.bh) * DQK * dv + vt * VT + 2 * t.tq * dv + 16 * t.wq + t.g;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) dst[(e & 1) * dv + 8 * (e >> 1)] = ht[j][e] * m;
      dst += 8 * static_cast<int64_t>(dv);
      asm volatile("" : "+l"(dst));
    }
  }
}

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
  using Split = typename SM::Split;
  constexpr int LM = kEngineRows, KS = 16, S = SM::STAGES, R = LM / 2, MT = kStateTiles<DQK>;
  constexpr WalkDecay Decay = kWalkDecay<DQK, VT>;
  constexpr bool kMerged = kMergedWalk<DQK, VT>;
  // Merged: a stage holds Q, the MergedKeyTile (K and the state copy entering the stage's chunk) and V, in the room of
  // the separate stages and state copies.
  constexpr int STAGE = kMerged ? 3 * SM::QK_ELEMS + SM::V_ELEMS : SM::STAGE;
  static_assert(!kMerged || (S == 2 && Decay == WalkDecay::registers && S * STAGE == S * SM::STAGE + 2 * SM::H_ELEMS),
                "merged stages: two, decays in registers, the state copies' room");

  static_assert(DQK == 128 || (DQK == 256 && VT == 64), "two warpgroups of 64 or 128 state rows");
  if constexpr (kRolesWalk<DQK, VT>) {
    if (p.tma == 1) {
      wgmma_roles_walk<DQK>(p, dec, smem_raw);
      return;
    }
  }
  static_assert(SM::fits, "shared memory of one block");
  E* smem = reinterpret_cast<E*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  E* Hs_base = smem + S * SM::STAGE;
  E* const Os = Hs_base + 2 * SM::H_ELEMS;
  uint4* const score_exchange = reinterpret_cast<uint4*>(Os + 2 * SM::O_ELEMS);

  const WgmmaThread t(threadIdx.x);
  const int wg = t.wg, tid = t.tid;
  const WgmmaSegment seg(p, dec);
  const int vt = blockIdx.x, b = seg.b, h = seg.h, nchunks = seg.nchunks, dv = p.dv;
  const int64_t T = seg.T;

  auto phys = [&](int64_t pos) { return p.reverse ? T - 1 - pos : pos; };
  const int dir = p.reverse ? -1 : 1;
  auto stage_q = [&](int st) { return smem + st * STAGE; };
  auto stage_k = [&](int st) { return stage_q(st) + SM::QK_ELEMS; };  // merged: the MergedKeyTile
  auto stage_v = [&](int st) { return stage_k(st) + (kMerged ? 2 : 1) * SM::QK_ELEMS; };
  using QKLoader = TileLoader<Tile, DQK, kMerged ? 1 : 2>;  // merged: Q only
  const QKLoader load_qk = [&] {
    if constexpr (kMerged) {
      return QKLoader({p.q}, b, h, T, p.H, DQK, 0, tid);
    } else {
      return QKLoader({p.q, p.k}, b, h, T, p.H, DQK, 0, tid);
    }
  }();
  const TileLoader<MergedKeyTile, DQK> load_k({p.k}, b, h, T, p.H, DQK, 0, tid);  // merged only
  const TileLoader<Tile, VT> load_v({p.v}, b, h, T, p.H, dv, vt * VT, tid);
  // Through TMA where the host encoded the maps: thread 0 issues a chunk's boxes, which complete on the stage's
  // mbarrier. The mbarriers sit after the layout, in the room left from aligning it (16 bytes at least; a walk whose
  // mbarriers would not fit there keeps its cp.async loads). A reversed run's boxes hold its chunks upside down, so
  // the factors, masks, prescale and stores take mirrored rows. The walks of value tile 64 reach this point only
  // without the maps (with them they run as wgmma_roles_walk, above), so only the 128-column walk loads through TMA.
  constexpr bool kTma = kWgmmaTmaWalk<EngineOps<E>, DQK, VT, false> && !kRolesWalk<DQK, VT>;
  const StageBarriers<S> stages{
      reinterpret_cast<uint64_t*>(reinterpret_cast<unsigned char*>(score_exchange) + Split::kExchangeBytes)};
  const bool use_tma = kTma && p.tma != 0 && reinterpret_cast<unsigned char*>(stages.bar + S) <= smem_raw + SM::bytes;
  const int mirror = use_tma && p.reverse ? LM - 1 : 0;
  if (use_tma) stages.init(tid);
  auto tma_chunk = [&](int c, int64_t c0) {
    if constexpr (kTma) {
      static_assert(!kMerged, "the merged key tile loads through TMA only in wgmma_roles_walk");
      constexpr uint32_t kBytes = (2 * SM::QK_ELEMS + SM::V_ELEMS) * 2;
      const int st = c % S, y0 = tma_tile_position(T, c0, mirror);
      uint64_t* const bar = stages.of(c);
      stages.expect(c, kBytes);
      tma_load_chunk_tile<DQK>(stage_q(st), Tile::kAtom, &p.tma_q, bar, 0, h, y0, b);
      tma_load_chunk_tile<DQK>(stage_k(st), Tile::kAtom, &p.tma_k, bar, 0, h, y0, b);
      tma_load_chunk_tile<VT>(stage_v(st), Tile::kAtom, &p.tma_v, bar, vt * VT, h, y0, b);
    } else {
      (void)c, (void)c0;
    }
  };
  auto wait_chunk = [&](int c) {  // chunk c has landed, for this thread
    if (use_tma) {
      stages.wait(c);
    } else {
      cp_async_wait<S - 2>();  // all but the newest S - 2 groups: chunk c
    }
  };
  // Every call commits one group (empty past the last chunk): "all but the newest S - 2 groups" is chunk c.
  auto load_chunk = [&](int c) {
    if (c < nchunks) {
      const int st = c % S;
      const int64_t c0 = seg.start + static_cast<int64_t>(c) * p.L;
      const int len = min(p.L, seg.len - c * p.L);
      if (use_tma) {
        if (tid == 0) tma_chunk(c, c0);
      } else if constexpr (kMerged) {
        load_qk.load({stage_q(st)}, c0, len, phys, dir);
        load_k.load({stage_k(st)}, c0, len, phys, dir);
        load_v.load({stage_v(st)}, c0, len, phys, dir);
      } else {
        load_qk.load({stage_q(st), stage_k(st)}, c0, len, phys, dir);
        load_v.load({stage_v(st)}, c0, len, phys, dir);
      }
    }
    cp_async_commit();
  };
  // The Q and K pieces this thread copied into stage st, times their rows' factors (once they have landed; not with
  // WalkDecay::registers). At most four rows' pieces in flight: with key size 256 (eight rows) all at once would spill
  // registers.
  auto prescale = [&](int st) {
    if constexpr (Decay == WalkDecay::operands) {
#pragma unroll 4
      for (int i = 0; i < LM / QKLoader::RSTEP; ++i) {
        const int r = load_qk.r0 + i * QKLoader::RSTEP, at = Tile::at<DQK>(r, load_qk.cc), cr = r ^ mirror;
        const float fq = seg.gpow(cr - R), fk = seg.gpow(R - cr);
        scale_piece(stage_q(st) + at, pack_bf16x2(fq, fq));
        scale_piece(stage_k(st) + at, pack_bf16x2(fk, fk));
      }
    }
  };

  RegisterDecays<Split::KW / 8> rdec(seg.l2g, Split::key0(wg), t, mirror);  // WalkDecay::registers only
  float hacc[MT * VT / 8][4];
  read_entering_state<DQK>(hacc, p, seg, vt * VT, t);
  const float copy_factor = seg.gpow(R + 1);
  auto state_copy = [&](int c) {  // the copy of the state entering chunk c
    if constexpr (kMerged) {
      store_state_copy_transposed<DQK>(stage_k(c % S), hacc, copy_factor, t);
    } else {
      store_state_copy<DQK>(Hs_base + (c & 1) * SM::H_ELEMS, hacc, copy_factor, t);
    }
  };
  state_copy(0);

  float* const final_state = final_state_of(p, seg.s);
#pragma unroll
  for (int c = 0; c < S - 1; ++c) load_chunk(c);
  wait_chunk(0);
  prescale(0);
  for (int c = 0, st = 0; c < nchunks; ++c, st = st + 1 == S ? 0 : st + 1) {
    const int len = min(p.L, seg.len - c * p.L);
    const int64_t c0 = seg.start + static_cast<int64_t>(c) * p.L;
    const E* Qs = stage_q(st);
    const E* Ks = stage_k(st);
    const E* Vs = stage_v(st);
    const E* Hs = Hs_base + (c & 1) * SM::H_ELEMS;
    fence_proxy_async();  // this thread's copies, scalings and state-copy writes, before the tensor cores read them
    __syncthreads();      // chunk c (scaled) and Hs(c & 1) complete; everyone is past chunk c - 1, whose stage refills

    // 1. S = Q~ K~^T (the warpgroup's keys; the mask comes later), then O = Q~ (gamma^(R+1) H)[:, OW wg ..]; the
    //    update's fragments K~^T times gamma^(len - 1 - R).
    float oacc[VT / 16][4];
    uint32_t sa[LM / KS][4], ka[MT * LM / KS][4];
    const float fu = seg.gpow(len - 1 - R);
    if constexpr (Decay == WalkDecay::registers) rdec.prepare(len, seg.l2g, t);
    scores_and_state_part<DQK, VT, kMerged>(
        oacc, sa, subarray<LM / KS>(ka, 0), hacc, Qs, Ks, Hs, Ks, fu, seg.gpow(len), t, score_exchange,
        Decay == WalkDecay::registers ? &rdec : nullptr, [&] { load_chunk(c + S - 1); }, mirror);
    // 2. O += (S . Gamma) V[:, OW wg ..]; 3. H <- gamma^len H + (K diag(w))^T V over all VT state columns.
    masked_values<VT>(oacc, sa, Vs, t);
    // The other state tile's update fragments (key size 256), while (S . mask) V runs.
#pragma unroll
    for (int mt = 1; mt < MT; ++mt) {
      if constexpr (Decay == WalkDecay::registers) {
        update_fragments<std::conditional_t<kMerged, MergedKeyTile, Tile>>(subarray<LM / KS>(ka, LM / KS * mt), Ks, mt,
                                                                           rdec, t);
      } else {
        update_fragments(subarray<LM / KS>(ka, LM / KS * mt), Ks, mt, fu, t);
      }
    }
    if constexpr (MT > 1) wgmma_fence();  // the update reads registers written since group 2's fence
    update_state<VT>(hacc, ka, Vs);

    wgmma_wait<1>();  // group 2 done; the update may still run
    store_outputs_staged<false>(Os + wg * SM::O_ELEMS, p.o, dv, vt * VT + wg * Split::OW, oacc, p, b, h, c0, len, t,
                                mirror);
    // Meanwhile, the next chunk's Q and K rows get their factors.
    if (c + 1 < nchunks) {
      wait_chunk(c + 1);
      prescale(st + 1 == S ? 0 : st + 1);
    }
    wgmma_wait<0>();
    // The next chunk's state copy goes to the other buffer (merged: the next stage's): its readers, chunk c - 1's
    // group 1, finished before this chunk's barrier.
    if (c + 1 < nchunks) state_copy(c + 1);
  }
  if (final_state) {  // the last segment: this walk ends the sequence
    const float m = final_state_factor(p, dec, seg.bh, h);
    write_state<DQK>(final_state + static_cast<int64_t>(seg.bh) * DQK * dv + vt * VT, dv, hacc, m, t);
  }
}

// The fused backward's walk (chunk_engine_dkdv_kernel's contract: p.q = k, p.k = q, p.v = g, p.x = v; p.o = dv,
// p.o2 = dk; the state dU [DQK, DV] in registers, its copy read as dU for dv and as dU^T for dk). The decays enter
// through the operands as in the outputs walk: K~ = gamma^(i - R) k, V~ = gamma^(i - R) v, Q~ = gamma^(R - j) q
// (scaled in shared memory as they land; g stays as it is), and the copy holds c dU with c = gamma^(R + 1):
//   dv_i = gamma^(i+1) k_i dU + sum_{j <= i} gamma^(i-j) (k_i . q_j) g_j   = K~_i (c dU) + sum_j mask(K~_i . Q~_j) g_j
//   dk_i = gamma^(i+1) v_i dU^T + sum_{j <= i} gamma^(i-j) (v_i . g_j) q_j = V~_i (c dU)^T + sum_j mask(V~_i . g_j)
//   Q~_j dU <- gamma^len dU + gamma^(len - 1 - R) Q~^T g.
// Per chunk: dv's scores and state part, its masked scores, dk's scores while dv's outputs are stored, dk's state
// part, its masked scores, then dk's last product and the update in one go.
template <int DQK, int DV>
__device__ __forceinline__ void wgmma_dkdv_walk(const ScanParams& p, const HeadDecays& dec, unsigned char* smem_raw) {
  using E = __nv_bfloat16;
  using Tile = SwizzledTile<kEngineRows>;
  using HTile = SwizzledTile<DQK>;  // the copy of dU [DQK, DV]
  using SM = WgmmaDkdvSmem<DQK, DV>;
  constexpr int LM = kEngineRows, KS = 16, R = LM / 2;
  static_assert(DQK == 128 && DV == 128, "two warpgroups of 64 output columns and 64 state rows");
  static_assert(SM::fits, "shared memory of one block");
  E* smem = reinterpret_cast<E*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  E* Hs_base = smem + SM::STAGES * SM::STAGE;

  const WgmmaThread t(threadIdx.x);
  const int wg = t.wg;
  E* const Os = Hs_base + 2 * SM::H_ELEMS + wg * SM::O_ELEMS;
  const WgmmaSegment seg(p, dec);
  const int b = seg.b, h = seg.h, nchunks = seg.nchunks;
  const int64_t T = seg.T;

  auto phys = [&](int64_t pos) { return p.reverse ? T - 1 - pos : pos; };
  const int dir = p.reverse ? -1 : 1;
  // Stage layout: k, q (width DQK), g, v (width DV).
  auto stage_k = [&](int st) { return smem + st * SM::STAGE; };
  auto stage_q = [&](int st) { return stage_k(st) + SM::QK_ELEMS; };
  auto stage_g = [&](int st) { return stage_q(st) + SM::QK_ELEMS; };
  auto stage_v = [&](int st) { return stage_g(st) + SM::V_ELEMS; };
  using Loader = TileLoader<Tile, DQK, 4>;  // DQK == DV: one loader for the four tiles
  const Loader load({p.q, p.k, p.v, p.x}, b, h, T, p.H, DQK, 0, t.tid);
  // Through TMA where the host encoded the maps, as the outputs walk: thread 0 issues the four tiles' boxes, the
  // stage's mbarrier counts them in, and a reversed run's tiles hold its chunks upside down (mirror).
  const bool use_tma = p.tma != 0;
  const int mirror = use_tma && p.reverse ? LM - 1 : 0;
  const StageBarriers<SM::STAGES> stages{reinterpret_cast<uint64_t*>(Hs_base + 2 * SM::H_ELEMS + 2 * SM::O_ELEMS)};
  static_assert(SM::STAGES * sizeof(uint64_t) <= 16, "the mbarriers fit the 16 bytes the alignment leaves");
  if (use_tma) stages.init(t.tid);
  auto load_chunk = [&](int c) {
    const int st = c & 1;
    const int64_t c0 = seg.start + static_cast<int64_t>(c) * p.L;
    if (!use_tma) {
      load.load({stage_k(st), stage_q(st), stage_g(st), stage_v(st)}, c0, min(p.L, seg.len - c * p.L), phys, dir);
    } else if (t.tid == 0) {
      const int y0 = tma_tile_position(T, c0, mirror);
      uint64_t* const bar = stages.of(c);
      stages.expect(c, SM::STAGE * 2);
      tma_load_chunk_tile<DQK>(stage_k(st), Tile::kAtom, &p.tma_q, bar, 0, h, y0, b);
      tma_load_chunk_tile<DQK>(stage_q(st), Tile::kAtom, &p.tma_k, bar, 0, h, y0, b);
      tma_load_chunk_tile<DV>(stage_g(st), Tile::kAtom, &p.tma_v, bar, 0, h, y0, b);
      tma_load_chunk_tile<DV>(stage_v(st), Tile::kAtom, &p.tma_x, bar, 0, h, y0, b);
    }
    cp_async_commit();
  };
  auto wait_chunk = [&](int c) {  // chunk c has landed, for this thread
    if (use_tma) {
      stages.wait(c);
    } else {
      cp_async_wait<0>();
    }
  };
  auto prescale = [&](int st) {
#pragma unroll
    for (int i = 0; i < LM / Loader::RSTEP; ++i) {
      const int r = load.r0 + i * Loader::RSTEP, at = Tile::at<DQK>(r, load.cc), cr = r ^ mirror;
      const float fi = seg.gpow(cr - R), fj = seg.gpow(R - cr);
      const uint32_t wi = pack_bf16x2(fi, fi);
      scale_piece(stage_k(st) + at, wi);
      scale_piece(stage_v(st) + at, wi);
      scale_piece(stage_q(st) + at, pack_bf16x2(fj, fj));
    }
  };

  float hacc[kStateTiles<DQK> * DV / 8][4];
  read_entering_state<DQK>(hacc, p, seg, 0, t);
  const float copy_factor = seg.gpow(R + 1);
  store_state_copy<DQK>(Hs_base, hacc, copy_factor, t);

  float* const final_state = final_state_of(p, seg.s);
  load_chunk(0);
  wait_chunk(0);
  prescale(0);
  for (int c = 0; c < nchunks; ++c) {
    const int st = c & 1;
    const int len = min(p.L, seg.len - c * p.L);
    const int64_t c0 = seg.start + static_cast<int64_t>(c) * p.L;
    const E* Ks = stage_k(st);
    const E* Qs = stage_q(st);
    const E* Gs = stage_g(st);
    const E* Vs = stage_v(st);
    const E* Hs = Hs_base + st * SM::H_ELEMS;
    fence_proxy_async();  // this thread's copies, scalings and state-copy writes, before the tensor cores read them
    __syncthreads();      // chunk c (scaled) and Hs(c & 1) complete; everyone is past chunk c - 1, whose stage refills

    // dv: S = K~ Q~^T, then O = K~ (c dU)[:, 64 wg ..] (then the next chunk's loads are issued); the update's
    // fragments Q~^T times gamma^(len - 1 - R).
    float sacc[LM / 8][4], oacc[8][4];
    uint32_t sa[LM / KS][4], ka[LM / KS][4];
    scores_and_state_part<DQK>(
        oacc, sa, ka, hacc, Ks, Qs, Hs, Qs, seg.gpow(len - 1 - R), seg.gpow(len), t, nullptr, nullptr,
        [&] {
          if (c + 1 < nchunks) load_chunk(c + 1);
        },
        mirror);
    // dv: O += mask(S) g[:, 64 wg ..]; then dk's scores S = V~ g^T.
    masked_values(oacc, sa, Gs, t);
#pragma unroll
    for (int ks = 0; ks < DV / KS; ++ks)
      wgmma_m64n64k16_ss<0, 0>(sacc, wgmma_desc(Vs + kmajor_step<LM>(ks), 0), wgmma_desc(Gs + kmajor_step<LM>(ks), 0),
                               ks > 0);
    wgmma_commit();
    wgmma_wait<1>();
    store_outputs_staged<false>(Os, p.o, DV, wg * 64, oacc, p, b, h, c0, len, t, mirror);
    // dk: O = V~ (c dU)^T[:, 64 wg ..], B[k][n] = copy(n, k): the copy's rows 64 wg .. read K-major.
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < DV / KS; ++ks)
      wgmma_m64n64k16_ss<0, 0>(oacc, wgmma_desc(Vs + kmajor_step<LM>(ks), 0),
                               wgmma_desc(Hs + wg * 64 * 64 + kmajor_step<DQK>(ks), 0), ks > 0);
    wgmma_commit();
    wgmma_wait<1>();
    masked_score_fragments<LM / 8>(sa, sacc, t.wq * 16, 0, t, nullptr, mirror);
    wgmma_wait<0>();
    // dk: O += mask(S) Q~[:, 64 wg ..]; dU <- gamma^len dU + (Q~ gamma^(len - 1 - R))^T g over all DV columns.
    values_and_update(oacc, sa, Qs, hacc, ka, Gs, t);
    // Meanwhile, the next chunk's rows get their factors.
    if (c + 1 < nchunks) {
      wait_chunk(c + 1);
      prescale(st ^ 1);
    }
    wgmma_wait<1>();
    store_outputs_staged<true>(Os, p.o2, DQK, wg * 64, oacc, p, b, h, c0, len, t, mirror);
    wgmma_wait<0>();
    if (c + 1 < nchunks) store_state_copy<DQK>(Hs_base + (st ^ 1) * SM::H_ELEMS, hacc, copy_factor, t);
  }
  if (final_state) {  // the last segment: this walk ends the sequence
    const float m = final_state_factor(p, dec, seg.bh, h);
    write_state<DQK>(final_state + static_cast<int64_t>(seg.bh) * DQK * DV, DV, hacc, m, t);
  }
}

// The summary pass's shared memory: Stages of K [64, 128] and V [64, VT], aligned to 1024 bytes; small enough for two
// blocks per multiprocessor.
template <int VT>
struct WgmmaSummarySmem {
  static constexpr int LM = kEngineRows, K_ELEMS = LM * 128, V_ELEMS = LM * VT, STAGE = K_ELEMS + V_ELEMS;
  static constexpr int STAGES = VT == 64 ? 4 : 3;
  static constexpr int bytes = STAGES * STAGE * 2 + 1024;
  static_assert(2 * (bytes + 1024) <= 228 * 1024, "two blocks per multiprocessor");
};

// The summary pass on wgmma (chunk_engine_kernel<bf16, 128, VT, true>: the segment's state from zero, no outputs):
// H <- gamma^len H + (K diag(w))^T V chunk by chunk, w_j = gamma^(len - 1 - j). Two warpgroups, each holding state rows
// 64 wg .. 64 wg + 63 (all VT columns) in registers; K^T comes as A fragments through ldmatrix.trans times the
// weights (update_fragments), V straight from shared memory. The chunks arrive in cp.async stages, chunk c + 1 landing
// while chunk c's product runs. Every decay: the weights merely underflow to zero for small ones, as in the mma.sync
// walk. (The mma.sync walk is issue-bound: its fragment loads and 512 mma.sync per chunk.)
template <int VT>
__device__ __forceinline__ void wgmma_summary_walk(const ScanParams& p, const HeadDecays& dec,
                                                   unsigned char* smem_raw) {
  using E = __nv_bfloat16;
  using Tile = SwizzledTile<kEngineRows>;
  using SM = WgmmaSummarySmem<VT>;
  constexpr int DQK = 128, S = SM::STAGES;
  static_assert(S >= 3, "chunk c + 1 lands while the stage of chunk c - 1 refills");
  E* const smem = reinterpret_cast<E*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  const WgmmaThread t(threadIdx.x);
  const WgmmaSegment seg(p, dec);
  const int vt = blockIdx.x, nchunks = seg.nchunks;

  auto stage_k = [&](int st) { return smem + st * SM::STAGE; };
  auto stage_v = [&](int st) { return stage_k(st) + SM::K_ELEMS; };
  auto phys = [&](int64_t pos) { return p.reverse ? seg.T - 1 - pos : pos; };
  const int dir = p.reverse ? -1 : 1;
  const TileLoader<Tile, DQK> load_k({p.k}, seg.b, seg.h, seg.T, p.H, DQK, 0, t.tid);
  const TileLoader<Tile, VT> load_v({p.v}, seg.b, seg.h, seg.T, p.H, p.dv, vt * VT, t.tid);
  auto chunk_len = [&](int c) { return min(p.L, seg.len - c * p.L); };
  // One commit group per call (empty past the last chunk), so that the groups count chunks.
  auto load_chunk = [&](int c) {
    if (c < nchunks) {
      const int64_t c0 = seg.start + static_cast<int64_t>(c) * p.L;
      load_k.load({stage_k(c % S)}, c0, chunk_len(c), phys, dir);
      load_v.load({stage_v(c % S)}, c0, chunk_len(c), phys, dir);
    }
    cp_async_commit();
  };
  // Once this thread's copies of chunk c + 1 are complete: chunk c + 1 has landed for every thread, and both
  // warpgroups are past their wait for chunk c - 1's product, so that chunk c - 1's stage may refill.
  auto landed = [&] {
    fence_proxy_async();  // this thread's copies, before the tensor cores read them
    __syncthreads();
  };

  RegisterDecays<VT / 16> rd(seg.l2g, 0, t);  // its update weights only
  float hacc[VT / 8][4];
  for_each_state_element<DQK>(hacc, t, [](int, int, float& x) { x = 0.f; });
  uint32_t ka[4][4];
#pragma unroll
  for (int c = 0; c < S - 1; ++c) load_chunk(c);
  cp_async_wait<S - 2>();
  landed();
  for (int c = 0; c < nchunks; ++c) {
    const int st = c % S, len = chunk_len(c);
    rd.prepare(len, seg.l2g, t);
    update_fragments(ka, stage_k(st), 0, rd, t);
    const float dl = seg.gpow(len);
    for_each_state_element<DQK>(hacc, t, [dl](int, int, float& x) { x *= dl; });
    wgmma_fence();
    update_state<VT>(hacc, ka, stage_v(st));
    cp_async_wait<S - 3>();  // chunk c + 1
    landed();
    load_chunk(c + S - 1);  // into chunk c - 1's stage
    wgmma_wait<0>();        // chunk c's product: ka and hacc are free
  }
  write_state<DQK>(p.states + state_offset<DQK>(p, seg.bh, seg.s) + vt * VT, p.dv, hacc, 1.f, t);
}

// setmaxnreg (sm_90a): this warpgroup's registers per thread, raised or lowered to N (a multiple of 8), so that the
// roles of a walk split the register file unevenly.
template <int N>
__device__ __forceinline__ void warpgroup_registers_up() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void warpgroup_registers_down() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// The fused backward with a role per warpgroup (chunk_dkdv_roles_kernel, 384 threads; bf16, key and value size 128,
// tensor maps given). Same contract as wgmma_dkdv_walk (p.q = k, p.k = q, p.v = g, p.x = v; p.o = dv, p.o2 = dk), with
// the decays in registers (RegisterDecays) instead of scaled operands. There, two warpgroups each computed half of dv
// and half of dk (both scores twice) and met at a block barrier per chunk; Nsight Compute found the walk the largest
// kernel of a long backward. Here:
//   the dv warpgroup (0): S = K Q^T, dv = gamma^(i - R) K (c dU) + (S . decayed mask) g, all 128 columns, as one
//     running product (see the loop);
//   the dk warpgroup (1): S = V g^T, dk = gamma^(i - R) V (c dU)^T + (S . decayed mask) Q;
//   the state warpgroup (2): dU [DQK, DV] in registers (two m64 tiles), dU <- gamma^len dU + (Q diag(w))^T g, and the
//     copy c dU (c = gamma^(R + 1)) entering the next chunk, which both others read (dv N-major, dk K-major); one of
//     its threads issues the chunks' TMA boxes.
// So the two outputs run side by side, and the update of chunk c beside them. Their mbarriers: full (per stage: the
// chunk's boxes have landed), empty (per stage: all three are done with it), ready (per copy buffer: the state
// warpgroup has stored the copy) and consumed (per copy buffer: both outputs have read it, so that it may take the
// copy two chunks on). The state warpgroup holds 128 accumulator registers and the update's 16 fragment registers:
// setmaxnreg gives it 184 per thread, the outputs 160 (the three sum to 3 x 168, the block's registers at launch).
struct DkdvRolesSmem {
  static constexpr int LM = kEngineRows, D = 128, STAGES = 2;
  // O: an outputs warpgroup's staging tile, for 64 columns at a time (128 padded columns would not fit)
  static constexpr int TILE = LM * D, STAGE = 4 * TILE, COPY = D * D, O_ELEMS = LM * kStagedOutputPitch<64>;
  static constexpr int THREADS = 384;
  static constexpr int bytes = (STAGES * STAGE + 2 * COPY + 2 * O_ELEMS) * 2 + 4 * 2 * 8 + 1024;
  static_assert(bytes <= 227 * 1024, "shared memory of one block");
  static constexpr uint32_t kChunkBytes = STAGE * 2;
};

__device__ __forceinline__ void wgmma_dkdv_roles_walk(const ScanParams& p, const HeadDecays& dec,
                                                      unsigned char* smem_raw) {
  using E = __nv_bfloat16;
  using SM = DkdvRolesSmem;
  using Tile = SwizzledTile<kEngineRows>;  // the chunk's k, q, g, v
  using HTile = SwizzledTile<128>;         // the copy c dU [DQK, DV]
  constexpr int LM = kEngineRows, KS = 16, R = LM / 2, S = SM::STAGES, D = SM::D;
  E* const smem = reinterpret_cast<E*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  E* const copies = smem + S * SM::STAGE;
  E* const Os_base = copies + 2 * SM::COPY;
  uint64_t* const bars = reinterpret_cast<uint64_t*>(Os_base + 2 * SM::O_ELEMS);
  const StageBarriers<S> full{bars}, empty{bars + S};
  const StageBarriers<2> ready{bars + 2 * S}, consumed{bars + 2 * S + 2};
  // Stage layout: k, q, g, v (the maps of p.q, p.k, p.v, p.x).
  auto tile = [&](int c, int i) { return smem + (c % S) * SM::STAGE + i * SM::TILE; };
  auto copy_of = [&](int c) { return copies + (c & 1) * SM::COPY; };

  const int role = threadIdx.x >> 7;
  const WgmmaThread t(threadIdx.x);  // the outputs warpgroups' (named barriers 1 and 2 for their stores)
  const WgmmaSegment seg(p, dec);
  const int b = seg.b, h = seg.h, nchunks = seg.nchunks;
  const int64_t T = seg.T;
  const int mirror = p.reverse ? LM - 1 : 0;  // a reversed run's tiles hold its chunks upside down

  if (threadIdx.x == 0) {
    full.set_up(1);
    empty.set_up(SM::THREADS);
    ready.set_up(128);
    consumed.set_up(256);
  }
  __syncthreads();  // the only block barrier: the mbarriers are set up
  auto chunk_len = [&](int c) { return min(p.L, seg.len - c * p.L); };
  auto chunk_start = [&](int c) { return seg.start + static_cast<int64_t>(c) * p.L; };

  // dv (Role 0): A = k, scored against q, values g, the copy read N-major; dk (Role 1): A = v, scored against g,
  // values q, the copy's rows read K-major. A loop per role: a branch between the products inside one loop made
  // ptxas serialize them (C7520).
  auto outputs = [&](auto role_c) {
    constexpr int Role = decltype(role_c)::value, kA = Role == 0 ? 0 : 3, kB = Role == 0 ? 1 : 2,
                  kX = Role == 0 ? 2 : 1;
    E* const Os = Os_base + Role * SM::O_ELEMS;
    // The row factors gamma^(i - R) of this thread's rows i (RegisterDecays::row); the keys' gamma^(R - j) are
    // computed per chunk (registers are what limit these warpgroups: short of them, ptxas serialized the products).
    float row[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) row[half] = seg.gpow(((t.wq * 16 + t.g + 8 * half) ^ mirror) - R);
    for (int c = 0; c < nchunks; ++c) {
      const E* As = tile(c, kA);
      const E* Bs = tile(c, kB);
      const E* Xs = tile(c, kX);
      const E* Hc = copy_of(c);
      float sacc[LM / 8][4], oacc[D / 8][4];
      full.wait(c);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < D / KS; ++ks)
        wgmma_m64n64k16_ss<0, 0>(sacc, wgmma_desc(As + kmajor_step<LM>(ks), 0), wgmma_desc(Bs + kmajor_step<LM>(ks), 0),
                                 ks > 0);
      wgmma_commit();
      ready.wait(c);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < D / KS; ++ks) {
        if constexpr (Role == 0) {
          wgmma_m64n128k16_ss<0, 1>(oacc, wgmma_desc(As + kmajor_step<LM>(ks), 0),
                                    wgmma_desc(Hc + ks * KS * 64, 2 * HTile::kAtom), ks > 0);
        } else {
          wgmma_m64n128k16_ss<0, 0>(oacc, wgmma_desc(As + kmajor_step<LM>(ks), 0),
                                    wgmma_desc(Hc + kmajor_step<D>(ks), 0), ks > 0);
        }
      }
      wgmma_commit();
      // Meanwhile S under the causal mask, times gamma^(R - j) only: O = diag(gamma^(i - R)) (A c dU + S' X) with
      // S' = S . mask . gamma^(R - j), so that S' X adds to the running product and the rows are scaled once.
      wgmma_wait<1>();
      uint32_t sa[LM / KS][4];
#pragma unroll
      for (int nt = 0; nt < LM / 8; ++nt) {
        float m[4];
#pragma unroll
        for (int e1 = 0; e1 < 2; ++e1) {
          const int j = (nt * 8 + 2 * t.tq + e1) ^ mirror;
          const float col = seg.gpow(R - j);
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int i = (t.wq * 16 + t.g + 8 * half) ^ mirror;
            m[2 * half + e1] = i >= j ? sacc[nt][2 * half + e1] * col : 0.f;
          }
        }
        sa[nt >> 1][2 * (nt & 1)] = pack_bf16x2(m[0], m[1]);
        sa[nt >> 1][2 * (nt & 1) + 1] = pack_bf16x2(m[2], m[3]);
      }
      wgmma_fence();
#pragma unroll
      for (int kt = 0; kt < LM / KS; ++kt)
        wgmma_m64n128k16_rs<1>(oacc, sa[kt], wgmma_desc(Xs + kt * KS * 64, 2 * Tile::kAtom));
      wgmma_commit();
      wgmma_wait<0>();
      consumed.arrive(c);  // the copy buffer may take the copy entering chunk c + 2
      empty.arrive(c);     // this warpgroup is done with the stage
#pragma unroll
      for (int half = 0; half < 2; ++half)
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt) oacc[nt][2 * half] *= row[half], oacc[nt][2 * half + 1] *= row[half];
      void* const o = Role == 0 ? p.o : p.o2;
#pragma unroll
      for (int half = 0; half < 2; ++half)
        store_outputs_staged<true>(Os, o, D, 64 * half, subarray<8>(oacc, 8 * half), p, b, h, chunk_start(c),
                                   chunk_len(c), t, mirror);
    }
  };
  if (role < 2) {
    warpgroup_registers_down<160>();
    if (role == 0) {
      outputs(std::integral_constant<int, 0>{});
    } else {
      outputs(std::integral_constant<int, 1>{});
    }
    return;
  }

  // The state warpgroup: dU rows 0-63 in h0 and 64-127 in h1 (the accumulator layouts of warpgroups 0 and 1 of the
  // other walks, whence t0 and t1).
  warpgroup_registers_up<184>();
  const WgmmaThread t0(threadIdx.x & 127), t1((threadIdx.x & 127) + 128);
  auto load_chunk = [&](int c) {  // one thread
    const int y0 = tma_tile_position(T, chunk_start(c), mirror);
    uint64_t* const bar = full.of(c);
    full.expect(c, SM::kChunkBytes);
    tma_load_chunk_tile<D>(tile(c, 0), Tile::kAtom, &p.tma_q, bar, 0, h, y0, b);
    tma_load_chunk_tile<D>(tile(c, 1), Tile::kAtom, &p.tma_k, bar, 0, h, y0, b);
    tma_load_chunk_tile<D>(tile(c, 2), Tile::kAtom, &p.tma_v, bar, 0, h, y0, b);
    tma_load_chunk_tile<D>(tile(c, 3), Tile::kAtom, &p.tma_x, bar, 0, h, y0, b);
  };
  if (t0.tid == 0) {
    for (int c = 0; c < min(nchunks, S); ++c) load_chunk(c);
  }
  float h0[D / 8][4], h1[D / 8][4];
  read_entering_state<128>(h0, p, seg, 0, t0);
  read_entering_state<128>(h1, p, seg, 0, t1);
  const float copy_factor = seg.gpow(R + 1);
  auto state_copy = [&](int c) {
    store_state_copy<128>(copy_of(c), h0, copy_factor, t0);
    store_state_copy<128>(copy_of(c), h1, copy_factor, t1);
    fence_proxy_async();  // the tensor cores read the copy
    ready.arrive(c);
  };
  state_copy(0);
  RegisterDecays<LM / 8> rd(seg.l2g, 0, t0, mirror);  // its update weights only
  for (int c = 0; c < nchunks; ++c) {
    const int len = chunk_len(c);
    const E* Qs = tile(c, 1);
    const E* Gs = tile(c, 2);
    full.wait(c);
    rd.prepare(len, seg.l2g, t0);
    // dU <- gamma^len dU + (Q diag(w))^T g, w_j = gamma^(len - 1 - j): Q^T's fragments from registers, g N-major;
    // one m64 tile after the other, so that one set of fragments serves both (with two, ptxas ran short of registers
    // and serialized the products).
    const float dl = seg.gpow(len);
    uint32_t ka[4][4];
    update_fragments(ka, Qs, 0, rd, t0);
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) h0[j][e] *= dl, h1[j][e] *= dl;
    wgmma_fence();
    update_state<D>(h0, ka, Gs);
    wgmma_wait<0>();
    update_fragments(ka, Qs, 0, rd, t1);
    wgmma_fence();
    update_state<D>(h1, ka, Gs);
    wgmma_wait<0>();
    fence_proxy_async();  // this warpgroup's reads of the stage, before its refill
    empty.arrive(c);
    // The copy entering chunk c + 1, once both outputs have read the copy entering chunk c - 1 (its buffer).
    if (c + 1 < nchunks) {
      if (c >= 1) consumed.wait(c - 1);
      state_copy(c + 1);
    }
    // Then the refill of this stage with chunk c + S, once the outputs are done with chunk c too.
    if (t0.tid == 0 && c + S < nchunks) {
      empty.wait(c);
      load_chunk(c + S);
    }
    __syncwarp();
  }
  float* const final_state = final_state_of(p, seg.s);
  if (final_state) {  // the last segment: this walk ends the sequence
    const float m = final_state_factor(p, dec, seg.bh, h);
    write_state<128>(final_state + static_cast<int64_t>(seg.bh) * D * D, D, h0, m, t0);
    write_state<128>(final_state + static_cast<int64_t>(seg.bh) * D * D, D, h1, m, t1);
  }
}

}  // namespace retnet::cuda_detail
