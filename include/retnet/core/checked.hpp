#pragma once
// Checked mode: ops scan their inputs and outputs for NaN/Inf and throw a retnet::Error naming the op,
// the tensor and the flat position. On by default in debug builds (no NDEBUG), off otherwise;
// switch at run time with retnet::set_checked(bool) or the environment variable RETNET_CHECKED=0/1.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "retnet/core/error.hpp"
#include "retnet/core/tensor.hpp"

namespace retnet {

namespace detail {
inline std::atomic<bool>& checked_flag() {
  static std::atomic<bool> flag{[] {
    if (const char* env = std::getenv("RETNET_CHECKED")) return std::string(env) != "0";
#ifdef NDEBUG
    return false;
#else
    return true;
#endif
  }()};
  return flag;
}
}  // namespace detail

inline bool checked() { return detail::checked_flag().load(std::memory_order_relaxed); }
inline void set_checked(bool on) { detail::checked_flag().store(on, std::memory_order_relaxed); }

// RAII switch for a scope (tests).
class CheckedScope {
 public:
  explicit CheckedScope(bool on) : saved_(checked()) { set_checked(on); }
  ~CheckedScope() { set_checked(saved_); }
  CheckedScope(const CheckedScope&) = delete;
  CheckedScope& operator=(const CheckedScope&) = delete;

 private:
  bool saved_;
};

// Throws if any of the n values is NaN or infinite; "shape" turns the flat index into coordinates.
template <class T>
void check_finite(const char* op, const char* tensor, const T* data, const Shape& shape) {
  if (data == nullptr) return;
  const int64_t n = shape.numel();
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(static_cast<double>(data[i]))) {
      std::string coord = "[";
      int64_t rem = i;
      std::vector<int64_t> idx(static_cast<size_t>(shape.rank()));
      for (int d = shape.rank() - 1; d >= 0; --d) {
        idx[static_cast<size_t>(d)] = shape[d] ? rem % shape[d] : 0;
        rem = shape[d] ? rem / shape[d] : 0;
      }
      for (size_t d = 0; d < idx.size(); ++d) coord += (d ? ", " : "") + std::to_string(idx[d]);
      fail(op, ": non-finite value ", static_cast<double>(data[i]), " in ", tensor, " at ", coord, "] (shape ",
           shape.to_string(), ")");
    }
  }
}

template <class T>
void check_finite(const char* op, const char* tensor, const HostView<T>& v) {
  check_finite(op, tensor, v.data(), v.shape());
}

}  // namespace retnet
