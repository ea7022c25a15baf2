#pragma once
// Helpers shared by the test programs.
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>

#include "retnet/core/error.hpp"

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

}  // namespace retnet::test
