#pragma once
// retnet::Error: the one exception type the library throws for bad input.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace retnet {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream s;
  (s << ... << std::forward<Parts>(parts));
  return s.str();
}
}  // namespace detail

// Throws retnet::Error with the streamed message parts, e.g.
//   fail("RetentionConfig: heads = ", h, " must be positive");
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  throw Error(detail::concat(std::forward<Parts>(parts)...));
}

template <class... Parts>
void require(bool ok, Parts&&... parts) {
  if (!ok) fail(std::forward<Parts>(parts)...);
}

}  // namespace retnet
