#pragma once
// The chunk engine: the same passes and contract as scan_kernel (retention_scan.cuh), with each chunk computed so
// that the tensor cores, not shared memory and barriers, set the pace:
//  * 8 warps. For the output, 4 row groups of 16 chunk rows x 2 halves of the value tile; each warp computes its
//    rows of S = Q K^T only up to its diagonal (causal), masks and decays them in registers and feeds them to
//    S V directly as A fragments (no trip through shared memory, no barrier).
//  * one Q fragment per k step feeds both S = Q K^T and Q H.
//  * the state update's decay diag(gamma^(L-1-j)) scales the V fragments in registers (no scaled copy of V).
//  * the stage buffers and the copy of the state that Q H reads are double-buffered: one barrier per chunk.
// Row groups pair up on the warp schedulers (warps w and w + 4 share one): group w and 3 - w, so that every
// scheduler carries the same causal work.
// Two kernels: chunk_engine_kernel (a run's summary or outputs pass) and chunk_engine_dkdv_kernel (the backward's
// dk and dv from one walk over their shared state). Both are built from TileLoader, EngineState and chunk_outputs.
// Compiled for sm_90a, both take the wgmma walks of retention_wgmma.cuh for bf16 with key size 128 (outputs pass
// with value tile 128 or 64, and fused backward) or 256 (outputs pass, value tile 64), except for heads whose decay
// is below 2^-3; the summary pass for bf16 with key size 128 takes its wgmma walk for every head. Two more kernels
// run walks with a role per warpgroup (three warpgroups, too many registers for the others' blocks): the host
// launches chunk_roles_kernel (outputs pass, key size 128, value tile 64) and chunk_dkdv_roles_kernel (fused
// backward, key and value size 128) in their place where every head takes the wgmma walks and TMA is on. Float with
// key size 128 (value tile 64) takes the tf32 wgmma walk of retention_wgmma_f32.cuh in the outputs pass; with key size
// 256 that walk is a kernel of its own (chunk_float256_kernel), since this kernel's mma.sync buffers would not fit.
//
// The storage type picks the arithmetic (EngineOps below):
//   bf16 : mma.sync m16n8k16, ldmatrix from padded rows.
//   float: mma.sync m16n8k8 in tf32 with three products per product (hi hi + hi lo + lo hi: float accuracy), or
//          one (EngineOpsTf32, Cuda::allow_tf32), from XOR-swizzled rows (conflict-free both along and across
//          rows, no padding: the double buffers fit). Within every 8 keys of S = Q K^T the keys are permuted so
//          that the accumulators of S are already the A fragments of S V (no shuffles).
#include "retnet/cuda/retention_engine_parts.cuh"
// The outputs walks on wgmma (sm_90a builds), built from the parts.
#include "retnet/cuda/retention_wgmma.cuh"
#include "retnet/cuda/retention_wgmma_f32.cuh"

namespace retnet::cuda_detail {

// Dynamic shared memory of a chunk_engine_kernel launch: the mma.sync walk's, or the wgmma walk's where larger.
template <class Ops, int DQK, int VT, bool Summary>
constexpr int engine_launch_bytes() {
  constexpr int own = EngineSmem<Ops, DQK, VT, Summary>::bytes;
  if constexpr (kWgmmaWalk<Ops, DQK, VT, Summary>)
    return own > wgmma_walk_bytes<DQK, VT>() ? own : wgmma_walk_bytes<DQK, VT>();
  if constexpr (kWgmmaSummaryWalk<Ops, DQK, VT, Summary>)
    return own > WgmmaSummarySmem<VT>::bytes ? own : WgmmaSummarySmem<VT>::bytes;
  if constexpr (kWgmmaF32Walk<Ops, DQK, VT, Summary>) return own > WgmmaF32Smem::bytes ? own : WgmmaF32Smem::bytes;
  return own;
}

// grid (dv / VT, NS, B * H), block 256. The summary pass keeps only the state tile: two blocks per multiprocessor
// (one for exact float, whose fresh chunk accumulator would not fit in 128 registers).
// Ops: EngineOps<E> for storage type E, or EngineOpsTf32.
template <class Ops, int DQK, int VT, bool Summary>
__global__ void __launch_bounds__(kEngineThreads, Summary && !Ops::kFreshDelta ? 2 : 1)
    chunk_engine_kernel(const __grid_constant__ ScanParams p, HeadDecays dec) {
  using E = typename Ops::E;
  using SM = EngineSmem<Ops, DQK, VT, Summary>;
  static_assert(SM::fits, "chunk engine: shared memory of one block");
  constexpr int STAGE = SM::STAGE;
  static_assert(VT == 64 || VT == 128, "value tile of 64 or 128 columns");
  extern __shared__ __align__(16) unsigned char smem_raw[];
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (kWgmmaWalk<Ops, DQK, VT, Summary>) {
    if (wgmma_walk_applies(p, dec)) {
      wgmma_outputs_walk<DQK, VT>(p, dec, smem_raw);
      return;
    }
  }
  if constexpr (kWgmmaSummaryWalk<Ops, DQK, VT, Summary>) {
    wgmma_summary_walk<VT>(p, dec, smem_raw);
    return;
  }
  if constexpr (kWgmmaF32Walk<Ops, DQK, VT, Summary>) {
    if (wgmma_walk_applies(p, dec)) {
      wgmma_f32_walk<Ops::kFreshDelta, DQK>(p, dec, smem_raw);  // kFreshDelta: exact float
      return;
    }
  }
#endif
  E* smem = reinterpret_cast<E*>(smem_raw);
  E* Hs_base = smem + 2 * STAGE;

  const int tid = threadIdx.x;
  const EngineWarp w(tid);
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
  auto stage_q = [&](int st) { return smem + st * STAGE; };
  auto stage_k = [&](int st) { return Summary ? smem + st * STAGE : smem + st * STAGE + SM::QK_ELEMS; };
  auto stage_v = [&](int st) { return stage_k(st) + SM::QK_ELEMS; };
  // Q and K with one loader each, or one shared loader with kStraightLoads (the unused ones compile away).
  const TileLoader<Ops, DQK> load_q({p.q}, b, h, T, p.H, DQK, 0, tid), load_k({p.k}, b, h, T, p.H, DQK, 0, tid);
  const TileLoader<Ops, DQK, 2> load_qk({p.q, p.k}, b, h, T, p.H, DQK, 0, tid);
  const TileLoader<Ops, VT> load_v({p.v}, b, h, T, p.H, dv, vt * VT, tid);
  auto load_chunk = [&](int c, int st) {
    const int64_t c0 = seg_start + static_cast<int64_t>(c) * p.L;
    const int len = min(p.L, seg_len - c * p.L);
    if constexpr (Summary) {
      load_k.load({stage_k(st)}, c0, len, phys, dir);
    } else if constexpr (Ops::kStraightLoads) {
      load_qk.load({stage_q(st), stage_k(st)}, c0, len, phys, dir);
    } else {
      load_q.load({stage_q(st)}, c0, len, phys, dir);
      load_k.load({stage_k(st)}, c0, len, phys, dir);
    }
    load_v.load({stage_v(st)}, c0, len, phys, dir);
    cp_async_commit();
  };

  float* const final_state = Summary ? nullptr : final_state_of(p, s);
  EngineState<Ops, DQK, VT> state(w.warp);
  state.for_each(w.lane, [&](int row, int col, float& x) {
    x = Summary ? 0.f : entering_state<DQK>(p, bh, s, vt * VT, row, col);
  });
  // Hs(c & 1) holds the copy of the state entering chunk c.
  if constexpr (!Summary) state.store_copy(Hs_base, w.lane);

  UpdateWeights<Ops> wts;

  load_chunk(0, 0);
  for (int c = 0; c < nchunks; ++c) {
    const int st = c & 1;
    const int len = min(p.L, seg_len - c * p.L);
    cp_async_wait<0>();
    __syncthreads();  // chunk c and Hs(c & 1) visible; everyone is past chunk c - 1
    if (c + 1 < nchunks) load_chunk(c + 1, st ^ 1);
    wts.prepare(len, w.tq, l2g);

    if constexpr (!Summary) {
      float oacc[VT / 16][4];
      chunk_outputs<Ops, DQK, VT, false>(oacc, w, stage_q(st), stage_k(st), stage_v(st), Hs_base + st * SM::H_ELEMS,
                                         l2g);
      store_output_tile<E>(p.o, dv, p, oacc, b, h, seg_start + static_cast<int64_t>(c) * p.L, len, w.rg * 16,
                           vt * VT + (w.warp >> 2) * (VT / 2), w.lane);
    }

    // H <- gamma^len H + K^T diag(gamma^(len-1-j)) V (after its last chunk, the outputs pass needs the state only
    // when it writes the final state)
    if (Summary || c + 1 < nchunks || final_state)
      state.update(stage_k(st), stage_v(st), wts, exp2f(static_cast<float>(len) * l2g), w.lane);
    // The next chunk's copy of the state goes to the other buffer: its last readers finished chunk c - 1.
    if constexpr (!Summary) {
      if (c + 1 < nchunks) state.store_copy(Hs_base + (st ^ 1) * SM::H_ELEMS, w.lane);
    }
  }
  if constexpr (Summary) {
    state.write(p.states + state_offset<DQK>(p, bh, s) + vt * VT, dv, 1.f, w.lane);
  } else if (final_state) {  // the last segment: this walk ends the sequence
    state.write(final_state + static_cast<int64_t>(bh) * DQK * dv + vt * VT, dv, final_state_factor(p, dec, bh, h),
                w.lane);
  }
}

// The roles walk with two outputs warpgroups (wgmma_roles_walk<DQK, 2>, key size 128): grid as chunk_engine_kernel's
// with value tiles of 64, block RolesWalkSmem<DQK, 2>::THREADS, dynamic shared memory RolesWalkSmem<DQK, 2>::bytes.
// The host launches it in place of chunk_engine_kernel<bf16, DQK, 64, false> where that kernel would take the roles
// walk for every head (roles_kernel_applies): its own launch, since its third warpgroup does not fit the other walks'
// registers.
template <int DQK>
__global__ void __launch_bounds__(RolesWalkSmem<DQK, 2>::THREADS, 1)
    chunk_roles_kernel(const __grid_constant__ ScanParams p, HeadDecays dec) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  wgmma_roles_walk<DQK, 2>(p, dec, smem_raw);
#else
  (void)p, (void)dec, (void)smem_raw;
  __trap();  // launched only where wgmma_walks_built()
#endif
}

// The fused backward with a role per warpgroup (wgmma_dkdv_roles_walk; bf16, key and value size 128): grid as
// chunk_engine_dkdv_kernel's, block DkdvRolesSmem::THREADS, dynamic shared memory DkdvRolesSmem::bytes. The host
// launches it in place of chunk_engine_dkdv_kernel<bf16, 128, 128> where every head would take the wgmma walk and the
// tensor maps are given (dkdv_roles_kernel_applies).
template <int D>
__global__ void __launch_bounds__(DkdvRolesSmem::THREADS, 1)
    chunk_dkdv_roles_kernel(const __grid_constant__ ScanParams p, HeadDecays dec) {
  static_assert(D == 128, "key and value size 128");
  extern __shared__ __align__(16) unsigned char smem_raw[];
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  wgmma_dkdv_roles_walk(p, dec, smem_raw);
#else
  (void)p, (void)dec, (void)smem_raw;
  __trap();  // launched only where wgmma_walks_built()
#endif
}

// Dynamic shared memory of a chunk_engine_dkdv_kernel launch (as engine_launch_bytes).
template <class Ops, int DQK, int DV>
constexpr int dkdv_launch_bytes() {
  constexpr int own = DkdvSmem<Ops, DQK, DV>::bytes;
  if constexpr (kWgmmaDkdv<Ops, DQK, DV>)
    return own > WgmmaDkdvSmem<DQK, DV>::bytes ? own : WgmmaDkdvSmem<DQK, DV>::bytes;
  return own;
}

// The backward's dk and dv in one reversed walk over the state dU [DQK, DV] (g = mu d_o):
//   dv = reversed retention of (q=k, k=q, v=g), state dU;
//   dk = reversed retention of (q=v, k=g, v=q), state dU^T, read from the same copy transposed.
// p.q = k, p.k = q, p.v = g, p.x = v; p.o = dv [.., DV], p.o2 = dk [.., DQK]; the states are the dv run's. One
// block covers all DV columns (dk sums over them), so each chunk loads four tiles and updates the state once,
// where two runs load six and update twice. grid (1, NS, B * H), block 256.
template <class Ops, int DQK, int DV>
__global__ void __launch_bounds__(kEngineThreads, 1)
    chunk_engine_dkdv_kernel(const __grid_constant__ ScanParams p, HeadDecays dec) {
  using E = typename Ops::E;
  using SM = DkdvSmem<Ops, DQK, DV>;
  static_assert(SM::fits, "fused backward: shared memory of one block");
  constexpr int STAGE = SM::STAGE;
  static_assert(DV == 64 || DV == 128, "value tile of 64 or 128 columns");
  extern __shared__ __align__(16) unsigned char smem_raw[];
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (kWgmmaDkdv<Ops, DQK, DV>) {
    if (wgmma_walk_applies(p, dec)) {
      wgmma_dkdv_walk<DQK, DV>(p, dec, smem_raw);
      return;
    }
  }
#endif
  E* smem = reinterpret_cast<E*>(smem_raw);
  E* Hs_base = smem + 2 * STAGE;

  const int tid = threadIdx.x;
  const EngineWarp w(tid);
  const int s = blockIdx.y, bh = blockIdx.z;
  const int b = bh / p.H, h = bh % p.H;
  const int64_t T = p.T;
  const float l2g = dec.log2g[h];
  const int64_t seg_start = static_cast<int64_t>(s) * p.seg;
  const int seg_len = static_cast<int>(min(static_cast<int64_t>(p.seg), T - seg_start));
  const int nchunks = (seg_len + p.L - 1) / p.L;

  auto phys = [&](int64_t pos) { return p.reverse ? T - 1 - pos : pos; };
  const int dir = p.reverse ? -1 : 1;
  // Stage layout: k, q (width DQK), g, v (width DV).
  auto stage_k = [&](int st) { return smem + st * STAGE; };
  auto stage_q = [&](int st) { return stage_k(st) + SM::QK_ELEMS; };
  auto stage_g = [&](int st) { return stage_q(st) + SM::QK_ELEMS; };
  auto stage_v = [&](int st) { return stage_g(st) + SM::V_ELEMS; };
  const TileLoader<Ops, DQK> load_k({p.q}, b, h, T, p.H, DQK, 0, tid), load_q({p.k}, b, h, T, p.H, DQK, 0, tid);
  const TileLoader<Ops, DV> load_g({p.v}, b, h, T, p.H, DV, 0, tid), load_v({p.x}, b, h, T, p.H, DV, 0, tid);
  auto load_chunk = [&](int c, int st) {
    const int64_t c0 = seg_start + static_cast<int64_t>(c) * p.L;
    const int len = min(p.L, seg_len - c * p.L);
    load_k.load({stage_k(st)}, c0, len, phys, dir);
    load_q.load({stage_q(st)}, c0, len, phys, dir);
    load_g.load({stage_g(st)}, c0, len, phys, dir);
    load_v.load({stage_v(st)}, c0, len, phys, dir);
    cp_async_commit();
  };

  float* const final_state = final_state_of(p, s);
  EngineState<Ops, DQK, DV> state(w.warp);
  state.for_each(w.lane, [&](int row, int col, float& x) { x = entering_state<DQK>(p, bh, s, 0, row, col); });
  state.store_copy(Hs_base, w.lane);

  UpdateWeights<Ops> wts;

  load_chunk(0, 0);
  for (int c = 0; c < nchunks; ++c) {
    const int st = c & 1;
    const int len = min(p.L, seg_len - c * p.L);
    cp_async_wait<0>();
    __syncthreads();  // chunk c and Hs(c & 1) visible; everyone is past chunk c - 1
    if (c + 1 < nchunks) load_chunk(c + 1, st ^ 1);
    wts.prepare(len, w.tq, l2g);
    const E* Hs = Hs_base + st * SM::H_ELEMS;
    const int64_t c0 = seg_start + static_cast<int64_t>(c) * p.L;
    {
      float oacc[DV / 16][4];
      chunk_outputs<Ops, DQK, DV, false>(oacc, w, stage_k(st), stage_q(st), stage_g(st), Hs, l2g);
      store_output_tile<E>(p.o, DV, p, oacc, b, h, c0, len, w.rg * 16, (w.warp >> 2) * (DV / 2), w.lane);
    }
    {
      float oacc[DQK / 16][4];
      chunk_outputs<Ops, DQK, DV, true>(oacc, w, stage_v(st), stage_g(st), stage_q(st), Hs, l2g);
      store_output_tile<E>(p.o2, DQK, p, oacc, b, h, c0, len, w.rg * 16, (w.warp >> 2) * (DQK / 2), w.lane);
    }
    if (c + 1 < nchunks || final_state)
      state.update(stage_q(st), stage_g(st), wts, exp2f(static_cast<float>(len) * l2g), w.lane);
    if (c + 1 < nchunks) state.store_copy(Hs_base + (st ^ 1) * SM::H_ELEMS, w.lane);
  }
  if (final_state)  // the last segment: this walk ends the sequence
    state.write(final_state + static_cast<int64_t>(bh) * DQK * DV, DV, final_state_factor(p, dec, bh, h), w.lane);
}

}  // namespace retnet::cuda_detail
