#pragma once
// Warp-level tensor-core helpers for the retention kernels: one policy per storage type.
//
//   MmaBf16 : bf16 operands in shared memory, mma.sync m16n8k16 with float accumulators (ldmatrix loads).
//   MmaTf32x3 : float operands in shared memory, mma.sync m16n8k8 in tf32 with the 3-term split
//               (a_hi b_hi + a_hi b_lo + a_lo b_hi), which keeps float accuracy (about 1e-6 relative).
//   MmaTf32 : the same with one tf32 product (Cuda::allow_tf32, about 1e-3 relative).
//
// Fragment loaders take a shared-memory tile, its leading dimension (elements) and the fragment origin:
//   lda<false>: A stored row-major [m][k];   lda<true>: A stored transposed [k][m]
//   ldb<false>: B stored as [n][k];           ldb<true>: B stored as [k][n]
// Accumulator layout (both policies): c0, c1 at row g, columns 2t, 2t+1; c2, c3 at row g + 8 (g = lane / 4,
// t = lane % 4).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace retnet::cuda_detail {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

struct MmaBf16 {
  using T = __nv_bfloat16;
  static constexpr int KS = 16;
  struct A {
    uint32_t r[4];
  };
  struct B {
    uint32_t r[2];
  };

  template <bool Trans>
  __device__ __forceinline__ static void lda(A& a, const T* s, int ld, int m0, int k0, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    const T* p;
    if constexpr (!Trans) {
      p = s + (m0 + r + 8 * (mat & 1)) * ld + k0 + 8 * (mat >> 1);
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(a.r[0]), "=r"(a.r[1]), "=r"(a.r[2]), "=r"(a.r[3])
                   : "r"(smem_addr(p)));
    } else {
      p = s + (k0 + r + 8 * (mat >> 1)) * ld + m0 + 8 * (mat & 1);
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(a.r[0]), "=r"(a.r[1]), "=r"(a.r[2]), "=r"(a.r[3])
                   : "r"(smem_addr(p)));
    }
  }
  // One n8 block (columns n0..n0+7).
  template <bool Trans>
  __device__ __forceinline__ static void ldb1(B& b, const T* s, int ld, int n0, int k0, int lane) {
    const int mat = (lane >> 3) & 1, r = lane & 7;
    const T* p = Trans ? s + (k0 + r + 8 * mat) * ld + n0 : s + (n0 + r) * ld + k0 + 8 * mat;
    if constexpr (!Trans) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                   : "=r"(b.r[0]), "=r"(b.r[1])
                   : "r"(smem_addr(p)));
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                   : "=r"(b.r[0]), "=r"(b.r[1])
                   : "r"(smem_addr(p)));
    }
  }
  // Two n8 blocks at once: b[0] for columns n0..n0+7, b[1] for n0+8..n0+15.
  template <bool Trans>
  __device__ __forceinline__ static void ldb2(B (&b)[2], const T* s, int ld, int n0, int k0, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    const T* p;
    if constexpr (!Trans) {
      p = s + (n0 + r + 8 * (mat >> 1)) * ld + k0 + 8 * (mat & 1);
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(b[0].r[0]), "=r"(b[0].r[1]), "=r"(b[1].r[0]), "=r"(b[1].r[1])
                   : "r"(smem_addr(p)));
    } else {
      p = s + (k0 + r + 8 * (mat & 1)) * ld + n0 + 8 * (mat >> 1);
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(b[0].r[0]), "=r"(b[0].r[1]), "=r"(b[1].r[0]), "=r"(b[1].r[1])
                   : "r"(smem_addr(p)));
    }
  }
  __device__ __forceinline__ static void mma(float (&c)[4], const A& a, const B& b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
  }
  __device__ __forceinline__ static T from_float(float x) { return __float2bfloat16(x); }
  __device__ __forceinline__ static float to_float(T x) { return __bfloat162float(x); }
};

// The float elements of the m16n8k8 tf32 fragments (g = lane / 4, t = lane % 4), read from a shared tile with
// leading dimension ld, A stored [m][k] (or [k][m] with Trans), B stored [n][k] (or [k][n] with Trans):
//   A element i = at(g + 8 (i % 2), t + 4 (i / 2)),   B element i = at(k = t + 4 i, n = g).
// f(i, x) turns element i into the fragment's tf32 representation.
struct Tf32Fragments {
  template <bool Trans, class F>
  __device__ __forceinline__ static void a(const float* s, int ld, int m0, int k0, int lane, F&& f) {
    const int g = lane >> 2, t = lane & 3;
    auto at = [&](int m, int k) { return Trans ? s[(k0 + k) * ld + m0 + m] : s[(m0 + m) * ld + k0 + k]; };
    f(0, at(g, t));
    f(1, at(g + 8, t));
    f(2, at(g, t + 4));
    f(3, at(g + 8, t + 4));
  }
  template <bool Trans, class F>
  __device__ __forceinline__ static void b(const float* s, int ld, int n0, int k0, int lane, F&& f) {
    const int g = lane >> 2, t = lane & 3;
    auto at = [&](int k, int n) { return Trans ? s[(k0 + k) * ld + n0 + n] : s[(n0 + n) * ld + k0 + k]; };
    f(0, at(t, g));
    f(1, at(t + 4, g));
  }
};

struct MmaTf32x3 {
  using T = float;
  static constexpr int KS = 8;
  struct A {
    uint32_t hi[4], lo[4];
  };
  struct B {
    uint32_t hi[2], lo[2];
  };
  __device__ __forceinline__ static void split(float x, uint32_t& hi, uint32_t& lo) {
    uint32_t h;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(h) : "f"(x));
    const float rest = x - __uint_as_float(h);
    uint32_t l;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(l) : "f"(rest));
    hi = h;
    lo = l;
  }
  template <bool Trans>
  __device__ __forceinline__ static void lda(A& a, const T* s, int ld, int m0, int k0, int lane) {
    Tf32Fragments::a<Trans>(s, ld, m0, k0, lane, [&](int i, float x) { split(x, a.hi[i], a.lo[i]); });
  }
  template <bool Trans>
  __device__ __forceinline__ static void ldb1(B& b, const T* s, int ld, int n0, int k0, int lane) {
    Tf32Fragments::b<Trans>(s, ld, n0, k0, lane, [&](int i, float x) { split(x, b.hi[i], b.lo[i]); });
  }
  template <bool Trans>
  __device__ __forceinline__ static void ldb2(B (&b)[2], const T* s, int ld, int n0, int k0, int lane) {
    ldb1<Trans>(b[0], s, ld, n0, k0, lane);
    ldb1<Trans>(b[1], s, ld, n0 + 8, k0, lane);
  }
  __device__ __forceinline__ static void mma1(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  __device__ __forceinline__ static void mma(float (&c)[4], const A& a, const B& b) {
    mma1(c, a.lo, b.hi);
    mma1(c, a.hi, b.lo);
    mma1(c, a.hi, b.hi);
  }
  __device__ __forceinline__ static T from_float(float x) { return x; }
  __device__ __forceinline__ static float to_float(T x) { return x; }
};

// Float operands as one tf32 product (Cuda::allow_tf32): rounded to tf32 by adding half a tf32 unit (the mma
// ignores the low 13 bits).
struct MmaTf32 {
  using T = float;
  static constexpr int KS = 8;
  struct A {
    uint32_t r[4];
  };
  struct B {
    uint32_t r[2];
  };
  __device__ __forceinline__ static uint32_t round(float x) { return __float_as_uint(x) + 0x1000u; }
  template <bool Trans>
  __device__ __forceinline__ static void lda(A& a, const T* s, int ld, int m0, int k0, int lane) {
    Tf32Fragments::a<Trans>(s, ld, m0, k0, lane, [&](int i, float x) { a.r[i] = round(x); });
  }
  template <bool Trans>
  __device__ __forceinline__ static void ldb1(B& b, const T* s, int ld, int n0, int k0, int lane) {
    Tf32Fragments::b<Trans>(s, ld, n0, k0, lane, [&](int i, float x) { b.r[i] = round(x); });
  }
  template <bool Trans>
  __device__ __forceinline__ static void ldb2(B (&b)[2], const T* s, int ld, int n0, int k0, int lane) {
    ldb1<Trans>(b[0], s, ld, n0, k0, lane);
    ldb1<Trans>(b[1], s, ld, n0 + 8, k0, lane);
  }
  __device__ __forceinline__ static void mma(float (&c)[4], const A& a, const B& b) { MmaTf32x3::mma1(c, a.r, b.r); }
  __device__ __forceinline__ static T from_float(float x) { return x; }
  __device__ __forceinline__ static float to_float(T x) { return x; }
};

// 16-byte asynchronous copy global -> shared; src_bytes = 0 fills the 16 bytes with zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace retnet::cuda_detail
