#pragma once
// Memory estimates checked against the machine before allocating (no CLI11 here: the CUDA translation unit of
// train_lm includes this).
#include <unistd.h>

#include <cstdio>
#include <string>

#include "retnet/core/error.hpp"

namespace retnet_examples {

// Physical memory of this machine in bytes (0 when unknown).
inline double physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

// Refuses a run whose estimated memory (bytes, computed in double so it cannot wrap) exceeds physical memory.
inline void require_memory(double estimate, const std::string& what) {
  const double have = physical_memory_bytes();
  if (have <= 0) return;
  const double gib = 1024.0 * 1024.0 * 1024.0;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3g GiB", estimate / gib);
  std::string need = buf;
  std::snprintf(buf, sizeof buf, "%.3g GiB", have / gib);
  retnet::require(estimate <= have, what, " would need about ", need, " of memory; this machine has ", buf);
}

}  // namespace retnet_examples
