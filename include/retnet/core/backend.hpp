#pragma once
// Backends. Every op takes its backend as the first argument and has one overload per backend; layers, model and
// trainer are templates over the backend type, so one set of templates runs on both. A backend names the memory
// space its pointers live in (`space`: Host or Device, carried by views so host memory cannot reach a GPU op) and
// provides raw memory: allocate/release, zero, copies to and from the host, and a synchronisation.
// retnet::Cuda (a stream and a cuBLAS handle) lives in retnet/cuda/context.cuh.
#include <concepts>
#include <cstddef>
#include <cstring>
#include <new>
#include <type_traits>

#include "retnet/core/tensor.hpp"

namespace retnet {

struct Cpu {
  using space = Host;
  void* allocate(size_t bytes) const { return bytes ? ::operator new (bytes, std::align_val_t{64}) : nullptr; }
  void release(void* p) const {
    if (p) ::operator delete (p, std::align_val_t{64});
  }
  void zero(void* p, size_t bytes) const {
    if (bytes) std::memset(p, 0, bytes);
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) const {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void copy_from_host(void* dst, const void* src, size_t bytes) const {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void sync() const {}
};
inline constexpr Cpu cpu{};

template <class B>
concept Backend = requires(const B& b, void* d, const void* s, size_t n) {
  typename B::space;
  { b.allocate(n) } -> std::same_as<void*>;
  b.release(d);
  b.zero(d, n);
  b.copy_to_host(d, s, n);
  b.copy_from_host(d, s, n);
  b.sync();
};

// True for backends whose memory the host reads directly.
template <class B>
inline constexpr bool host_backend = std::is_same_v<typename B::space, Host>;

}  // namespace retnet
