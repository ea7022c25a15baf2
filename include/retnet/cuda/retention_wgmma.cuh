#pragma once
// The summary pass on Hopper's warpgroup MMA (wgmma, sm_90a): Delta = sum over chunks of gamma^(...) K^T diag(w) V
// with both operands read by the tensor cores straight from shared memory, so the warps issue four instructions
// per chunk instead of loading fragments. Built where RETNET_WGMMA is defined, which a build may do only when it
// compiles for sm_90a (CMAKE_CUDA_ARCHITECTURES=90a; the project's tests and benchmarks do so by themselves).
// Layout and descriptor settings were checked on the H200 (bench/results/cuda_retention.md).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "retnet/cuda/retention_engine.cuh"

namespace retnet::cuda_detail {

// bf16 tiles as wgmma reads them with the 128-byte swizzle: atoms of 64 columns (64 rows of 128 bytes), the
// 16-byte piece c of row r at piece c ^ (r % 8). A TileLoader policy.
struct WgmmaTiles {
  using E = __nv_bfloat16;
  static constexpr int EPV = 8;
  static constexpr bool kStraightLoads = false;
  static constexpr int kAtomElems = kEngineRows * 64;
  template <int W>
  __device__ __forceinline__ static int at(int r, int c) {
    return (c >> 6) * kAtomElems + r * 64 + ((((c & 63) >> 3) ^ (r & 7)) << 3) + (c & 7);
  }
};

#if defined(RETNET_WGMMA)

// Shared-memory matrix descriptor, 128-byte swizzle: eight rows (1024 bytes) between core-matrix groups along K,
// lbo_bytes between 64-column atoms along M or N.
__device__ __forceinline__ uint64_t wgmma_desc(const void* p, uint32_t lbo_bytes) {
  return static_cast<uint64_t>((smem_addr(p) >> 4) & 0x3fff) | static_cast<uint64_t>((lbo_bytes >> 4) & 0x3fff) << 16 |
         static_cast<uint64_t>(1024 >> 4) << 32 | uint64_t{1} << 62;
}

// d[64] += A B for a warpgroup, m64 n128 k16, bf16 in, float out; A M-major and B N-major (both transposed from
// the K-major default): A [k16 rows][64 m], B [k16 rows][128 n] as two atoms.
__device__ __forceinline__ void wgmma_m64n128k16_tt(float (&d)[64], uint64_t da, uint64_t db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,"
      "%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,"
      "%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db));
#else
  (void)d;
  (void)da;
  (void)db;
  __trap();
#endif
}

__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit_and_wait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\nwgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
}
// Orders this thread's shared-memory writes (st.shared, completed cp.async) before the tensor cores' reads.
__device__ __forceinline__ void fence_proxy_async() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

template <int DQK>
struct WgmmaSummarySmem {
  static constexpr int VT = 128, K_ELEMS = kEngineRows * DQK, STAGE = K_ELEMS + kEngineRows * VT;
  static constexpr int bytes = 2 * STAGE * 2 + 1024;  // two stages of bf16, and room to align them to 1024 bytes
};

// The summary pass (bf16, key size 128, value tile 128): grid (dv / 128, NS, B * H), block 256 = two warpgroups,
// each holding 64 rows of the state [DQK, 128] in registers. Each chunk: the copies of chunk c land, every thread
// scales the K rows it copied by their decay weights gamma^(len-1-j) (in bf16, as the mma.sync engine scales V),
// and each warpgroup adds K^T V for its 64 rows in four wgmma.
template <int DQK>
__global__ void __launch_bounds__(kEngineThreads, 2) summary_wgmma_kernel(ScanParams p, HeadDecays dec) {
  static_assert(DQK == 128, "two warpgroups of 64 state rows");
  using E = __nv_bfloat16;
  using SM = WgmmaSummarySmem<DQK>;
  constexpr int VT = SM::VT, LM = kEngineRows;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  E* smem = reinterpret_cast<E*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
  const int vt = blockIdx.x, s = blockIdx.y, bh = blockIdx.z;
  const int b = bh / p.H, h = bh % p.H;
  const int64_t T = p.T;
  const float l2g = dec.log2g[h];
  const int64_t seg_start = static_cast<int64_t>(s) * p.seg;
  const int seg_len = static_cast<int>(min(static_cast<int64_t>(p.seg), T - seg_start));
  const int nchunks = (seg_len + p.L - 1) / p.L;
  auto phys = [&](int64_t pos) { return p.reverse ? T - 1 - pos : pos; };
  const int dir = p.reverse ? -1 : 1;

  auto stage_k = [&](int st) { return smem + st * SM::STAGE; };
  auto stage_v = [&](int st) { return smem + st * SM::STAGE + SM::K_ELEMS; };
  using KLoader = TileLoader<WgmmaTiles, DQK>;
  const KLoader load_k({p.k}, b, h, T, p.H, DQK, 0, tid);
  const TileLoader<WgmmaTiles, VT> load_v({p.v}, b, h, T, p.H, p.dv, vt * VT, tid);
  auto load_chunk = [&](int c, int st) {
    const int64_t c0 = seg_start + static_cast<int64_t>(c) * p.L;
    const int len = min(p.L, seg_len - c * p.L);
    load_k.load({stage_k(st)}, c0, len, phys, dir);
    load_v.load({stage_v(st)}, c0, len, phys, dir);
    cp_async_commit();
  };

  float d[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) d[i] = 0.f;

  load_chunk(0, 0);
  for (int c = 0; c < nchunks; ++c) {
    const int st = c & 1;
    const int len = min(p.L, seg_len - c * p.L);
    cp_async_wait<0>();
    // The K rows this thread copied, times their weights (rows past len were zero-filled).
#pragma unroll
    for (int r = load_k.r0; r < LM; r += KLoader::RSTEP) {
      const float wr = r < len ? exp2f(static_cast<float>(len - 1 - r) * l2g) : 0.f;
      const uint32_t w2 = pack_bf16x2(wr, wr);
      uint4* piece = reinterpret_cast<uint4*>(stage_k(st) + WgmmaTiles::at<DQK>(r, load_k.cc));
      uint4 x = *piece;
      x.x = mul_bf16x2(x.x, w2);
      x.y = mul_bf16x2(x.y, w2);
      x.z = mul_bf16x2(x.z, w2);
      x.w = mul_bf16x2(x.w, w2);
      *piece = x;
    }
    fence_proxy_async();
    __syncthreads();  // chunk c ready for the tensor cores; everyone is past chunk c - 1
    if (c + 1 < nchunks) load_chunk(c + 1, st ^ 1);

    const float dl = exp2f(static_cast<float>(len) * l2g);
#pragma unroll
    for (int i = 0; i < 64; ++i) d[i] *= dl;
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < LM / 16; ++ks) {
      // A = K^T rows 64 wg .. 64 wg + 63 (atom wg of the K tile), B = V (two atoms); k16 = 16 chunk rows
      const uint64_t da = wgmma_desc(stage_k(st) + wg * WgmmaTiles::kAtomElems + ks * 16 * 64, 0);
      const uint64_t db = wgmma_desc(stage_v(st) + ks * 16 * 64, WgmmaTiles::kAtomElems * 2);
      wgmma_m64n128k16_tt(d, da, db);
    }
    wgmma_commit_and_wait();
  }

  float* dst = p.states + state_offset<DQK>(p, bh, s) + vt * VT;
  const int g = lane >> 2, t = lane & 3, row0 = wg * 64 + (warp & 3) * 16 + g;
#pragma unroll
  for (int i = 0; i < 64; ++i) {
    const int row = row0 + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * t + (i & 1);
    dst[static_cast<int64_t>(row) * p.dv + col] = d[i];
  }
}

#endif  // RETNET_WGMMA

}  // namespace retnet::cuda_detail
