#pragma once
// Hopper's warpgroup MMA (wgmma.mma_async, sm_90a) for the chunk engine's outputs walk (retention_wgmma.cuh):
// shared-memory matrix descriptors for bf16 tiles in the 128-byte-swizzle layout, the products it uses, and the
// fences and waits around them. The instructions exist only where the code is compiled for sm_90a
// (__CUDA_ARCH_FEAT_SM90_ALL); elsewhere the callers are not built and these wrappers trap.
// Layouts and descriptor fields (each checked on the H200 against the mma.sync results):
//  * a tile is stored as atoms of 64 bf16 columns (rows of 128 bytes), the 16-byte piece c of row r at c ^ (r % 8),
//    each atom 1024-byte aligned;
//  * descriptor: start >> 4 at bit 0, leading byte offset >> 4 at 16, stride byte offset >> 4 at 32 (1024: eight
//    rows), swizzle mode 1 (128 bytes) at 62;
//  * K-major operand: a k16 step adds 32 bytes, every fourth moves to the next atom (four in a tile of 256 columns);
//    M- or N-major (transposed): a k16 step adds 16 rows (2048 bytes) and the leading byte offset is the distance
//    between the 64-column atoms;
//  * accumulators: warp w of the warpgroup holds rows 16 w .. 16 w + 15 in the mma.sync m16n8 order per n8 block.
//  * an N-major operand of 32 columns inside an atom (the narrow outputs walk) starts 64 bytes into the atom's rows:
//    the swizzle acts on the address bits, as the K-major in-atom steps rely on (checked on the H200: the narrow
//    walk's tests pass).
#include <cuda_runtime.h>

#include <cstdint>

#include "retnet/cuda/mma.cuh"

namespace retnet::cuda_detail {

// The "+f" operand list of a wgmma accumulator d[N][4], blocks 0 .. N - 1 in order (the asm templates' %0 ..).
#define RETNET_WGMMA_ACC1(d, i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define RETNET_WGMMA_ACC4(d, i) \
  RETNET_WGMMA_ACC1(d, i), RETNET_WGMMA_ACC1(d, i + 1), RETNET_WGMMA_ACC1(d, i + 2), RETNET_WGMMA_ACC1(d, i + 3)
#define RETNET_WGMMA_ACC8(d, i) RETNET_WGMMA_ACC4(d, i), RETNET_WGMMA_ACC4(d, i + 4)
#define RETNET_WGMMA_ACC16(d, i) RETNET_WGMMA_ACC8(d, i), RETNET_WGMMA_ACC8(d, i + 8)
#define RETNET_WGMMA_ACC32(d, i) RETNET_WGMMA_ACC16(d, i), RETNET_WGMMA_ACC16(d, i + 16)
#define RETNET_WGMMA_ACC(d, n) RETNET_WGMMA_ACC##n(d, 0)

// Shared-memory matrix descriptor of a 128-byte-swizzled bf16 operand at p; lbo_bytes: between 64-column atoms.
__device__ __forceinline__ uint64_t wgmma_desc(const void* p, uint32_t lbo_bytes) {
  return static_cast<uint64_t>((smem_addr(p) >> 4) & 0x3fff) | static_cast<uint64_t>((lbo_bytes >> 4) & 0x3fff) << 16 |
         static_cast<uint64_t>(1024 >> 4) << 32 | uint64_t{1} << 62;
}

// Before the first wgmma that reads or writes registers which other instructions touched.
__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most N committed groups of this warpgroup are pending (groups complete in order).
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Orders this thread's shared-memory writes (st.shared, completed cp.async) before the tensor cores' reads.
__device__ __forceinline__ void fence_proxy_async() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// d[8][4] (+)= A B for a warpgroup, m64 n64 k16, bf16 operands from shared memory (descriptors da, db),
// TA / TB: A stored M-major / B stored N-major instead of K-major. accumulate = 0 overwrites d.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], uint64_t da, uint64_t db, int accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%"
      "30,%31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
      : RETNET_WGMMA_ACC(d, 8)
      : "l"(da), "l"(db), "r"(accumulate), "n"(TA), "n"(TB));
#else
  (void)d, (void)da, (void)db, (void)accumulate;
  __trap();
#endif
}

// d[16][4] (+)= A B for a warpgroup, m64 n128 k16, bf16 operands from shared memory (as wgmma_m64n64k16_ss).
template <int TA, int TB>
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[16][4], uint64_t da, uint64_t db, int accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%"
      "30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%"
      "58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, %67, %68;\n}\n"
      : RETNET_WGMMA_ACC(d, 16)
      : "l"(da), "l"(db), "r"(accumulate), "n"(TA), "n"(TB));
#else
  (void)d, (void)da, (void)db, (void)accumulate;
  __trap();
#endif
}

// d[4][4] (+)= A B for a warpgroup, m64 n32 k16, bf16 operands from shared memory (as wgmma_m64n64k16_ss).
template <int TA, int TB>
__device__ __forceinline__ void wgmma_m64n32k16_ss(float (&d)[4][4], uint64_t da, uint64_t db, int accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, %16, %17, p, 1, 1, %19, %20;\n}\n"
      : RETNET_WGMMA_ACC(d, 4)
      : "l"(da), "l"(db), "r"(accumulate), "n"(TA), "n"(TB));
#else
  (void)d, (void)da, (void)db, (void)accumulate;
  __trap();
#endif
}

// d[4][4] += A B for a warpgroup, m64 n32 k16, A from registers (as wgmma_m64n64k16_rs).
template <int TB>
__device__ __forceinline__ void wgmma_m64n32k16_rs(float (&d)[4][4], const uint32_t (&a)[4], uint64_t db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, 1, 1, 1, %21;\n"
      : RETNET_WGMMA_ACC(d, 4)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TB));
#else
  (void)d, (void)a, (void)db;
  __trap();
#endif
}

// d[8][4] += A B for a warpgroup, m64 n64 k16, A from registers (the mma.sync m16n8k16 A fragment of the
// warp's 16 rows), B from shared memory (descriptor db; TB: stored N-major).
template <int TB>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%"
      "30,%31}, {%32,%33,%34,%35}, %36, 1, 1, 1, %37;\n"
      : RETNET_WGMMA_ACC(d, 8)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TB));
#else
  (void)d, (void)a, (void)db;
  __trap();
#endif
}

// d[16][4] += A B for a warpgroup, m64 n128 k16, A from registers (the mma.sync m16n8k16 A fragment of the
// warp's 16 rows), B from shared memory (descriptor db; TB: stored N-major).
template <int TB>
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[16][4], const uint32_t (&a)[4], uint64_t db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%"
      "30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%"
      "58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, 1, 1, 1, %69;\n"
      : RETNET_WGMMA_ACC(d, 16)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TB));
#else
  (void)d, (void)a, (void)db;
  __trap();
#endif
}

// d[32][4] += A B for a warpgroup, m64 n256 k16, A from registers (as wgmma_m64n128k16_rs).
template <int TB>
__device__ __forceinline__ void wgmma_m64n256k16_rs(float (&d)[32][4], const uint32_t (&a)[4], uint64_t db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%"
      "30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%"
      "58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%"
      "86,%87,%88,%89,%90,%91,%92,%93,%94,%95,%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%"
      "111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127}, {%128,%129,%130,%131}, "
      "%132, 1, 1, 1, %133;\n"
      : RETNET_WGMMA_ACC(d, 32)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TB));
#else
  (void)d, (void)a, (void)db;
  __trap();
#endif
}

// d[8][4] (+)= A B for a warpgroup, m64 n64 k8, tf32 operands from shared memory, both K-major (tf32 has no
// transposed operands): float tiles in the 128-byte-swizzle layout (rows of 32 floats; a k8 step adds 32 bytes, as a
// bf16 k16 step). The tensor cores read the upper 19 bits of each float. accumulate = 0 overwrites d.
__device__ __forceinline__ void wgmma_m64n64k8_tf32_ss(float (&d)[8][4], uint64_t da, uint64_t db, int accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1;\n}\n"
      : RETNET_WGMMA_ACC(d, 8)
      : "l"(da), "l"(db), "r"(accumulate));
#else
  (void)d, (void)da, (void)db, (void)accumulate;
  __trap();
#endif
}

// d[16][4] (+)= A B for a warpgroup, m64 n128 k8, tf32 operands from shared memory (as wgmma_m64n64k8_tf32_ss).
__device__ __forceinline__ void wgmma_m64n128k8_tf32_ss(float (&d)[16][4], uint64_t da, uint64_t db, int accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, "
      "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, "
      "1;\n}\n"
      : RETNET_WGMMA_ACC(d, 16)
      : "l"(da), "l"(db), "r"(accumulate));
#else
  (void)d, (void)da, (void)db, (void)accumulate;
  __trap();
#endif
}

// d[8][4] (+)= A B for a warpgroup, m64 n64 k8, tf32: A from registers (the mma.sync m16n8k8 tf32 A fragment of the
// warp's 16 rows: (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4)), B from shared memory, K-major (descriptor db).
__device__ __forceinline__ void wgmma_m64n64k8_tf32_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t db,
                                                       int accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31}, {%32,%33,%34,%35}, %36, p, 1, 1;\n}\n"
      : RETNET_WGMMA_ACC(d, 8)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
#else
  (void)d, (void)a, (void)db, (void)accumulate;
  __trap();
#endif
}

// The m64 nN k16 products with N = 8 NB, the width of the accumulators d (code shared by walks of several widths).
template <int TA, int TB, int NB>
__device__ __forceinline__ void wgmma_m64k16_ss(float (&d)[NB][4], uint64_t da, uint64_t db, int accumulate) {
  if constexpr (NB == 4) {
    wgmma_m64n32k16_ss<TA, TB>(d, da, db, accumulate);
  } else {
    static_assert(NB == 8, "m64 n32 or n64");
    wgmma_m64n64k16_ss<TA, TB>(d, da, db, accumulate);
  }
}
template <int TB, int NB>
__device__ __forceinline__ void wgmma_m64k16_rs(float (&d)[NB][4], const uint32_t (&a)[4], uint64_t db) {
  if constexpr (NB == 4) {
    wgmma_m64n32k16_rs<TB>(d, a, db);
  } else if constexpr (NB == 8) {
    wgmma_m64n64k16_rs<TB>(d, a, db);
  } else if constexpr (NB == 16) {
    wgmma_m64n128k16_rs<TB>(d, a, db);
  } else {
    static_assert(NB == 32, "m64 n32, n64, n128 or n256");
    wgmma_m64n256k16_rs<TB>(d, a, db);
  }
}

}  // namespace retnet::cuda_detail

#undef RETNET_WGMMA_ACC
#undef RETNET_WGMMA_ACC32
#undef RETNET_WGMMA_ACC16
#undef RETNET_WGMMA_ACC8
#undef RETNET_WGMMA_ACC4
#undef RETNET_WGMMA_ACC1
