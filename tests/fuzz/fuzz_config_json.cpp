// libFuzzer target: model configurations from JSON. Accepted configurations must write back and read again to
// the same JSON; everything else must be a retnet::Error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "retnet/io/config_json.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const retnet::ModelConfig c =
        retnet::io::config_from_json_string(std::string(reinterpret_cast<const char*>(data), size));
    const std::string once = retnet::io::config_to_json(c).dump();
    const std::string twice = retnet::io::config_to_json(retnet::io::config_from_json_string(once)).dump();
    if (once != twice) std::abort();  // a round trip must be exact
  } catch (const retnet::Error&) {
  }
  return 0;
}
