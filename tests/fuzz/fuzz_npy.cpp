// libFuzzer target: the .npy reader, as floating point and as integer arrays. Everything it cannot read must be
// a retnet::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "retnet/io/npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    (void)retnet::io::read_npy_bytes<double>(bytes);
  } catch (const retnet::Error&) {
  }
  try {
    (void)retnet::io::read_npy_bytes<int64_t>(bytes);
  } catch (const retnet::Error&) {
  }
  return 0;
}
