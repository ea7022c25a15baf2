#pragma once
// BackendTensor<T, B>: an owning, zero-initialised tensor in backend B's memory (a Buffer with a shape). Recurrent
// states of device backends are kept in these; host backends keep theirs in Tensor<T>.
#include <cstdint>
#include <utility>

#include "retnet/core/buffer.hpp"
#include "retnet/core/tensor.hpp"

namespace retnet {

template <class T, Backend B>
class BackendTensor {
 public:
  using space = typename B::space;

  BackendTensor() = default;
  BackendTensor(const B& backend, Shape shape) : buf_(backend, shape.numel()), shape_(shape) {}

  T* data() { return buf_.data(); }
  const T* data() const { return buf_.data(); }
  const Shape& shape() const { return shape_; }
  int64_t size(int i) const { return shape_[i]; }
  int64_t numel() const { return buf_.size(); }
  TensorView<T, space> view() { return {buf_.data(), shape_}; }
  TensorView<const T, space> view() const { return {buf_.data(), shape_}; }

  // Host copies, in and out (whole tensor).
  Tensor<T> to_host() const {
    Tensor<T> t(shape_);
    buf_.copy_to_host(t.data(), t.numel());
    return t;
  }
  void copy_from_host(const T* src, int64_t n) {
    require(n == numel(), "BackendTensor::copy_from_host: ", n, " values for shape ", shape_);
    buf_.copy_from_host(src, n);
  }

 private:
  Buffer<T, B> buf_;
  Shape shape_;
};

}  // namespace retnet
