// libFuzzer target: the safetensors reader. Any input must either load (then every tensor reads back) or be
// rejected with retnet::Error; anything else (a crash, a sanitizer report, another exception) is a finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "retnet/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto f = retnet::io::SafetensorsFile::from_bytes(std::string(reinterpret_cast<const char*>(data), size));
    for (const auto& name : f.names()) {
      const retnet::Shape s = f.shape(name);
      if (s.numel() > (int64_t{1} << 20)) continue;  // the data would exceed the input anyway
      const std::string dt = f.dtype(name);
      try {
        if (dt[0] == 'F' || dt == "BF16") {
          std::vector<double> v(static_cast<size_t>(s.numel()));
          f.read(name, v.data(), s);
        } else {
          std::vector<int64_t> v(static_cast<size_t>(s.numel()));
          f.read(name, v.data(), s);
        }
      } catch (const retnet::Error&) {
      }
    }
  } catch (const retnet::Error&) {
  }
  return 0;
}
