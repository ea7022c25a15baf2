#pragma once
// Helpers shared by the test programs.
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "retnet/core/error.hpp"
#include "retnet/nn/config.hpp"

namespace retnet::test {

// The message of the retnet::Error that f throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A path in a per-process scratch directory that is removed when the test program exits.
inline std::string temp_path(const std::string& name) {
  struct ScratchDir {
    std::filesystem::path path;
    ScratchDir() : path(std::filesystem::temp_directory_path() / ("retnet_test_" + std::to_string(::getpid()))) {
      std::filesystem::create_directories(path);
    }
    ~ScratchDir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static ScratchDir scratch;
  return (scratch.path / name).string();
}

// n token ids drawn uniformly from [0, V), reproducibly from seed.
inline std::vector<int64_t> random_tokens(int64_t n, int64_t V, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int64_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int64_t>(g() % static_cast<uint64_t>(V));
  return t;
}

// A two-layer model small enough for finite differences: d 16, 2 heads, value 24, FFN 20, vocab 13, chunk 4.
inline ModelConfig small_model_config() {
  ModelConfig c;
  c.decoder_embed_dim = 16;
  c.decoder_retention_heads = 2;
  c.decoder_value_embed_dim = 24;
  c.decoder_ffn_embed_dim = 20;
  c.decoder_layers = 2;
  c.vocab_size = 13;
  c.recurrent_chunk_size = 4;
  return c;
}

}  // namespace retnet::test
