#pragma once
// The CUDA backend tag, error checking and the stream-ordered workspace used by the GPU ops.
//
// retnet::Cuda carries the stream every op runs on and a cuBLAS handle (used by the dense layers). Ops are
// asynchronous on that stream; errors from launches are checked at once (cudaGetLastError), errors from the
// kernels themselves surface at the caller's next synchronisation. Ops can be captured into CUDA graphs once each
// has run outside capture on the device (its first call sets kernel attributes and the memory pool, and asks once
// whether the wgmma kernels were built).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "retnet/core/backend.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/tensor.hpp"

namespace retnet {

struct Cuda {
  using space = Device;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  // Float storage: false keeps float accuracy (retention's matrix products as three tf32 products each, about
  // 1e-6 relative; dense layers in exact float); true runs them as one tf32 product (about 1e-3 relative, as
  // PyTorch's allow_tf32 and fla's float kernels), about 1.75 times faster on the H200 (retention fwd+bwd,
  // (8, 4096, 16, 128)). bf16 is not affected.
  bool allow_tf32 = false;

  // Raw memory for long-lived buffers (Buffer<T, Cuda>): allocated on the current device outside any step.
  void* allocate(size_t bytes) const;
  void release(void* p) const;
  // Stream-ordered; copy_to_host and copy_from_host return once the copy is complete.
  void zero(void* p, size_t bytes) const;
  void copy_to_host(void* dst, const void* src, size_t bytes) const;
  void copy_from_host(void* dst, const void* src, size_t bytes) const;
  void sync() const;
};

namespace cuda_detail {

inline void check_cuda(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess)
    fail("CUDA error in ", what, " (", file, ":", line, "): ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
}

inline void check_cublas(cublasStatus_t s, const char* what, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error ", static_cast<int>(s), " in ", what, " (", file, ":", line, ")");
}

}  // namespace cuda_detail

// Every CUDA runtime call goes through RETNET_CUDA_CHECK; every launch is followed by RETNET_CUDA_CHECK_LAUNCH.
#define RETNET_CUDA_CHECK(call) ::retnet::cuda_detail::check_cuda((call), #call, __FILE__, __LINE__)
#define RETNET_CUDA_CHECK_LAUNCH(name) ::retnet::cuda_detail::check_cuda(cudaGetLastError(), name, __FILE__, __LINE__)
#define RETNET_CUBLAS_CHECK(call) ::retnet::cuda_detail::check_cublas((call), #call, __FILE__, __LINE__)

inline void* Cuda::allocate(size_t bytes) const {
  void* p = nullptr;
  if (bytes) RETNET_CUDA_CHECK(cudaMalloc(&p, bytes));
  return p;
}
inline void Cuda::release(void* p) const {
  if (p) (void)cudaFree(p);  // never throws from a destructor
}
inline void Cuda::zero(void* p, size_t bytes) const {
  if (bytes) RETNET_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));
}
inline void Cuda::copy_to_host(void* dst, const void* src, size_t bytes) const {
  if (!bytes) return;
  RETNET_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
  RETNET_CUDA_CHECK(cudaStreamSynchronize(stream));
}
inline void Cuda::copy_from_host(void* dst, const void* src, size_t bytes) const {
  if (!bytes) return;
  RETNET_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
  RETNET_CUDA_CHECK(cudaStreamSynchronize(stream));  // the source may be released as soon as this returns
}
inline void Cuda::sync() const { RETNET_CUDA_CHECK(cudaStreamSynchronize(stream)); }

// Owns what a Cuda backend points to: a non-blocking stream on the current device and a cuBLAS handle bound to it,
// released however the owner ends (after the stream's work is done). The usual way to get a backend:
//   retnet::CudaContext gpu;  retnet::Model<float, retnet::Cuda> model(cfg, gpu.backend());
class CudaContext {
 public:
  explicit CudaContext(bool allow_tf32 = false) {
    be_.allow_tf32 = allow_tf32;
    RETNET_CUDA_CHECK(cudaStreamCreateWithFlags(&be_.stream, cudaStreamNonBlocking));
    if (cublasCreate(&be_.cublas) != CUBLAS_STATUS_SUCCESS) {
      (void)cudaStreamDestroy(be_.stream);
      fail("CudaContext: cannot create a cuBLAS handle");
    }
    (void)cublasSetStream(be_.cublas, be_.stream);
  }
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;
  ~CudaContext() {
    (void)cudaStreamSynchronize(be_.stream);
    (void)cublasDestroy(be_.cublas);
    (void)cudaStreamDestroy(be_.stream);
  }
  const Cuda& backend() const { return be_; }

 private:
  Cuda be_;
};

namespace cuda_detail {

// Throws unless p is device memory (or managed memory) of the current device, aligned to `align` bytes.
inline void expect_device_pointer(const char* op, const char* name, const void* p, size_t align = 16) {
  if (p == nullptr) return;
  cudaPointerAttributes a{};
  const cudaError_t e = cudaPointerGetAttributes(&a, p);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error state of this query
    fail(op, ": ", name, " is not a pointer the CUDA runtime knows (", cudaGetErrorString(e), ")");
  }
  require(a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged, op, ": ", name,
          " is not device memory (it is ", a.type == cudaMemoryTypeHost ? "pinned host" : "unregistered host",
          " memory)");
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice", __FILE__, __LINE__);
  require(a.type == cudaMemoryTypeManaged || a.device == dev, op, ": ", name, " lives on device ", a.device,
          " but the current device is ", dev);
  require(reinterpret_cast<uintptr_t>(p) % align == 0, op, ": ", name, " is not aligned to ", align, " bytes");
}

template <class T>
void expect_device_view(const char* op, const char* name, const TensorView<T, Device>& v, size_t align = 16) {
  expect_device_pointer(op, name, v.data(), align);
}

// Scratch memory from the stream-ordered pool (cudaMallocAsync): cheap after the first call, freed in
// stream order when the op returns.
class Workspace {
 public:
  Workspace(cudaStream_t s, size_t bytes) : stream_(s) {
    if (bytes) RETNET_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, s));
  }
  ~Workspace() {
    if (ptr_) (void)cudaFreeAsync(ptr_, stream_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  template <class U>
  U* as(size_t byte_offset = 0) const {
    return reinterpret_cast<U*>(static_cast<char*>(ptr_) + byte_offset);
  }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
};

inline size_t align_up(size_t n, size_t a = 256) { return (n + a - 1) / a * a; }

// Keep freed pool memory cached between ops instead of returning it to the driver at each synchronisation.
inline void keep_pool_memory() {
  static const bool done = [] {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, dev) != cudaSuccess) return false;
    uint64_t threshold = UINT64_MAX;
    (void)cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
    return true;
  }();
  (void)done;
}

// At least n zero floats on the current device, in a buffer that stays allocated (and zero) for the process: a
// read-only zero operand that costs no launch per op. A larger request allocates a larger buffer; the smaller ones
// are kept, since work already queued may read them. Null where that would mean allocating while `stream` is being
// captured into a graph (neither cudaMalloc nor cudaMemset may run then): the caller takes another way.
inline const float* zero_floats(size_t n, cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<int, std::pair<float*, size_t>> buffers;
  int dev = 0;
  RETNET_CUDA_CHECK(cudaGetDevice(&dev));
  const std::lock_guard<std::mutex> lock(mutex);
  auto& [ptr, size] = buffers[dev];
  if (size < n) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    RETNET_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone) return nullptr;
    const size_t grown = std::max(n, 2 * size);
    float* p = nullptr;
    RETNET_CUDA_CHECK(cudaMalloc(&p, grown * sizeof(float)));
    RETNET_CUDA_CHECK(cudaMemset(p, 0, grown * sizeof(float)));
    ptr = p;
    size = grown;
  }
  return ptr;
}

}  // namespace cuda_detail
}  // namespace retnet
