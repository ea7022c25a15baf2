#pragma once
// Buffer<T, B>: owning, zero-initialised memory of n elements in backend B's memory space (RAII, move-only).
// Long-lived: models, workspaces, optimizer state and carried states allocate once and reuse, so no allocation
// happens inside a training or decoding step.
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "retnet/core/backend.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/tensor.hpp"

namespace retnet {

// Bytes of n elements of T; throws instead of wrapping around.
template <class T>
size_t buffer_bytes(int64_t n) {
  require(n >= 0 && static_cast<uint64_t>(n) <= std::numeric_limits<size_t>::max() / sizeof(T), "Buffer: ", n,
          " elements of ", sizeof(T), " bytes exceed the address space");
  return sizeof(T) * static_cast<size_t>(n);
}

template <class T, Backend B>
class Buffer {
 public:
  using space = typename B::space;

  Buffer() = default;
  Buffer(const B& backend, int64_t n) : be_(backend), n_(n) {
    const size_t bytes = buffer_bytes<T>(n);
    data_ = static_cast<T*>(be_.allocate(bytes));
    be_.zero(data_, bytes);
  }
  ~Buffer() { be_.release(data_); }
  Buffer(Buffer&& o) noexcept : be_(o.be_), data_(std::exchange(o.data_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      be_.release(data_);
      be_ = o.be_;
      data_ = std::exchange(o.data_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  int64_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  const B& backend() const { return be_; }

  TensorView<T, space> view(Shape shape) { return {data_, checked_shape(shape)}; }
  TensorView<const T, space> view(Shape shape) const { return {data_, checked_shape(shape)}; }

  void zero() { be_.zero(data_, sizeof(T) * static_cast<size_t>(n_)); }
  // Copies n elements from host memory into the buffer, starting at element `offset`.
  void copy_from_host(const T* src, int64_t n, int64_t offset = 0) {
    require(offset >= 0 && n >= 0 && offset + n <= n_, "Buffer::copy_from_host: ", n, " elements at ", offset,
            " do not fit ", n_);
    be_.copy_from_host(data_ + offset, src, sizeof(T) * static_cast<size_t>(n));
  }
  void copy_to_host(T* dst, int64_t n, int64_t offset = 0) const {
    require(offset >= 0 && n >= 0 && offset + n <= n_, "Buffer::copy_to_host: ", n, " elements at ", offset, " exceed ",
            n_);
    be_.copy_to_host(dst, data_ + offset, sizeof(T) * static_cast<size_t>(n));
  }
  std::vector<T> to_host() const {
    std::vector<T> h(static_cast<size_t>(n_));
    copy_to_host(h.data(), n_);
    return h;
  }

 private:
  Shape checked_shape(const Shape& s) const {
    require(s.numel() <= n_, "Buffer::view: shape ", s, " exceeds the buffer's ", n_, " elements");
    return s;
  }
  B be_{};
  T* data_ = nullptr;
  int64_t n_ = 0;
};

}  // namespace retnet
