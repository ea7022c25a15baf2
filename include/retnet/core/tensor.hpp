#pragma once
// Shapes, non-owning views and an owning host tensor. All layouts are row-major (last index fastest).
// A view carries its memory space (Host or Device) in its type, so host memory cannot reach a GPU op.
#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <new>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "retnet/core/error.hpp"

namespace retnet {

struct Host {};
struct Device {};

// Size arithmetic that cannot wrap: a product or sum of sizes past int64 is a retnet::Error naming `what`.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  require(!__builtin_mul_overflow(a, b, &r), what, ": size ", a, " x ", b, " overflows 64-bit integers");
  return r;
}
inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  require(!__builtin_add_overflow(a, b, &r), what, ": size ", a, " + ", b, " overflows 64-bit integers");
  return r;
}

class Shape {
 public:
  static constexpr int max_rank = 6;

  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) {
    require(static_cast<int>(dims.size()) <= max_rank, "Shape: rank ", dims.size(), " exceeds ", max_rank);
    for (int64_t d : dims) dims_[rank_++] = d;
  }
  explicit Shape(const std::vector<int64_t>& dims) {
    require(static_cast<int>(dims.size()) <= max_rank, "Shape: rank ", dims.size(), " exceeds ", max_rank);
    for (int64_t d : dims) dims_[rank_++] = d;
  }

  int rank() const { return rank_; }
  int64_t operator[](int i) const { return dims_[static_cast<size_t>(i)]; }
  // Element count; a product past int64 (a corrupted or hostile size) is a retnet::Error, not a wrapped value.
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank_; ++i)
      if (__builtin_mul_overflow(n, dims_[static_cast<size_t>(i)], &n))
        fail("Shape ", to_string(), ": the element count overflows 64-bit integers");
    return n;
  }
  std::vector<int64_t> to_vector() const { return {dims_.begin(), dims_.begin() + rank_}; }
  std::string to_string() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) s += (i ? ", " : "") + std::to_string(dims_[static_cast<size_t>(i)]);
    return s + "]";
  }
  // Streaming lets error messages format a shape only when they are raised.
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.to_string(); }
  friend bool operator==(const Shape& a, const Shape& b) {
    return a.rank_ == b.rank_ && std::equal(a.dims_.begin(), a.dims_.begin() + a.rank_, b.dims_.begin());
  }

 private:
  std::array<int64_t, max_rank> dims_{};
  int rank_ = 0;
};

template <class T, class Space = Host>
class TensorView {
 public:
  using value_type = std::remove_const_t<T>;
  TensorView() = default;
  TensorView(T* data, Shape shape) : data_(data), shape_(shape) {}

  // A mutable view converts to a read-only one in the same space.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  TensorView(const TensorView<U, Space>& other) : data_(other.data()), shape_(other.shape()) {}

  T* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  int64_t size(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }
  bool empty() const { return data_ == nullptr; }

 private:
  T* data_ = nullptr;
  Shape shape_;
};

template <class T>
using HostView = TensorView<T, Host>;
template <class T>
using DeviceView = TensorView<T, Device>;

// Owning host tensor, zero-initialised. At most max_bytes bytes (1 TiB); a larger shape, or an allocation the
// system refuses, is a retnet::Error naming the shape.
template <class T>
class Tensor {
 public:
  static constexpr int64_t max_bytes = int64_t{1} << 40;

  Tensor() = default;
  explicit Tensor(Shape shape) : shape_(shape) {
    for (int i = 0; i < shape.rank(); ++i) require(shape[i] >= 0, "Tensor: negative size in shape ", shape);
    const int64_t n = shape.numel();
    require(n <= max_bytes / static_cast<int64_t>(sizeof(T)), "Tensor: shape ", shape, " needs ", n, " elements of ",
            sizeof(T), " bytes, more than the limit of ", max_bytes, " bytes");
    try {
      data_.assign(static_cast<size_t>(n), T{});
    } catch (const std::bad_alloc&) {
      fail("Tensor: out of memory allocating ", n * static_cast<int64_t>(sizeof(T)), " bytes for shape ", shape);
    }
  }
  Tensor(Shape shape, T fill) : Tensor(shape) { std::fill(data_.begin(), data_.end(), fill); }

  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  const Shape& shape() const { return shape_; }
  int64_t size(int i) const { return shape_[i]; }
  int64_t numel() const { return static_cast<int64_t>(data_.size()); }
  T& operator[](int64_t i) { return data_[static_cast<size_t>(i)]; }
  const T& operator[](int64_t i) const { return data_[static_cast<size_t>(i)]; }
  std::vector<T>& storage() { return data_; }
  const std::vector<T>& storage() const { return data_; }

  HostView<T> view() { return {data_.data(), shape_}; }
  HostView<const T> view() const { return {data_.data(), shape_}; }
  HostView<const T> cview() const { return {data_.data(), shape_}; }

  // Same data, another shape of equal element count.
  void reshape(Shape shape) {
    require(shape.numel() == shape_.numel(), "Tensor::reshape: ", shape_, " to ", shape, " changes the element count");
    shape_ = shape;
  }

 private:
  std::vector<T> data_;
  Shape shape_;
};

}  // namespace retnet
