#pragma once
// Hopper's tensor memory accelerator (TMA) for the wgmma walks: tensor maps of the [B, T, H, W] bf16 inputs (host),
// and on the device the bulk tensor copies into the 128-byte-swizzle tile layout (wgmma.cuh) that complete on a
// shared-memory mbarrier. One thread issues a chunk's copies instead of 256 threads issuing 16-byte cp.async pieces
// (the key-256 walk spends about a quarter of its time on its copies with cp.async; TMA makes it 6-8 % faster).
// The instructions exist only where the code is compiled for sm_90a; elsewhere the device wrappers trap.
#include <cuda.h>  // CUtensorMap and cuTensorMapEncodeTiled's types (the function comes from the driver at run time)
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>

#include "retnet/cuda/context.cuh"
#include "retnet/cuda/mma.cuh"

namespace retnet::cuda_detail {

// ---- host: tensor maps ----

using TensorMapEncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                          const cuuint64_t*, const cuuint32_t*, const cuuint32_t*,
                                          CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                                          CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled from the driver, through the runtime (the library links no libcuda).
inline TensorMapEncodeTiled tensor_map_encoder() {
  static std::once_flag once;
  static TensorMapEncodeTiled fn = nullptr;
  std::call_once(once, [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    RETNET_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found));
#else
    RETNET_CUDA_CHECK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &found));
#endif
    if (found == cudaDriverEntryPointSuccess) fn = reinterpret_cast<TensorMapEncodeTiled>(f);
  });
  if (fn == nullptr) fail("CUDA driver: cuTensorMapEncodeTiled is not available");
  return fn;
}

// Rows of one TMA box of the walks: half a chunk, so that the key-256 walk's merged tile (keys in blocks of 32 rows,
// MergedKeyTile) takes boxes too.
inline constexpr int kTmaBoxRows = 32;

// The tensor map of x [B, T, H, width] (bf16, rows of width elements at stride H width) read in boxes of 64 columns x
// kTmaBoxRows sequence positions of one (batch, head), 128-byte swizzle; positions outside [0, T) read as zeros.
inline CUtensorMap bf16_rows_tensor_map(const void* x, int64_t B, int64_t T, int H, int width) {
  CUtensorMap map{};
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(width), static_cast<cuuint64_t>(H), static_cast<cuuint64_t>(T),
                              static_cast<cuuint64_t>(B)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(width) * 2, static_cast<cuuint64_t>(H) * width * 2,
                                 static_cast<cuuint64_t>(T) * H * width * 2};  // bytes, dims 1..3
  const cuuint32_t box[4] = {64, 1, kTmaBoxRows, 1}, unit[4] = {1, 1, 1, 1};
  const CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<void*>(x), dims,
                                          strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    fail("CUDA driver: cuTensorMapEncodeTiled failed (", static_cast<int>(r), ") for a [", B, ", ", T, ", ", H, ", ",
         width, "] bf16 tensor at ", x);
  return map;
}

// ---- device: mbarriers and bulk tensor copies ----

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, int arrivals) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(arrivals) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
  __trap();
#endif
}

// This thread's arrival on bar (release: its earlier writes are visible to the threads that wait on the phase).
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
#else
  __trap();
#endif
}

// This thread's arrival on bar, announcing that the phase also waits for bytes of copies.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
#else
  __trap();
#endif
}

// Waits until bar's phase with this parity has completed (its copies' bytes are visible to this thread).
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
#else
  __trap();
#endif
}

// One mbarrier per load stage of a walk (bar[0 .. S - 1] in shared memory): chunk c uses stage c % S, whose
// (c / S)-th phase is chunk c's. For the copies' arrival (TMA) and for the warps' own (the roles walk).
template <int S>
struct StageBarriers {
  uint64_t* bar;
  // One thread sets them up, each completing a phase on arrivals arrivals; a block barrier must follow before any
  // thread waits on them.
  __device__ void set_up(int arrivals) const {
    for (int st = 0; st < S; ++st) mbarrier_init(&bar[st], arrivals);
  }
  // Thread 0 sets them up for the issuing thread's one arrival, then the block's barrier.
  __device__ void init(int tid) const {
    if (tid == 0) set_up(1);
    __syncthreads();
  }
  __device__ uint64_t* of(int c) const { return &bar[static_cast<unsigned>(c) % S]; }  // c >= 0
  // The issuing thread's arrival for chunk c, whose copies bring bytes.
  __device__ void expect(int c, uint32_t bytes) const { mbarrier_arrive_expect_tx(of(c), bytes); }
  // This thread's arrival for chunk c.
  __device__ void arrive(int c) const { mbarrier_arrive(of(c)); }
  // Until chunk c's phase has completed, for this thread.
  __device__ void wait(int c) const { mbarrier_wait(of(c), (static_cast<unsigned>(c) / S) & 1); }
};

// Copies the box at coordinates (column, head, position, batch) of the tensor map into dst (1024-byte aligned for the
// swizzle), completing on bar. map: a kernel parameter (__grid_constant__) or global memory.
__device__ __forceinline__ void tma_load_box(void* dst, const CUtensorMap* map, uint64_t* bar, int col, int head,
                                             int pos, int batch) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(head), "r"(pos), "r"(batch), "r"(smem_addr(bar))
      : "memory");
#else
  __trap();
#endif
}

}  // namespace retnet::cuda_detail
