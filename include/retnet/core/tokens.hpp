#pragma once
// Checks and counts over token ids and targets, done on the host before ids reach any backend.
#include <cstdint>

#include "retnet/core/error.hpp"
#include "retnet/core/op_types.hpp"

namespace retnet {

// Throws retnet::Error naming the first token id outside [0, vocab) and its position [row, column].
inline void validate_tokens(const char* op, const int64_t* tokens, int64_t rows, int64_t cols, int64_t vocab) {
  for (int64_t i = 0; i < rows * cols; ++i)
    require(tokens[i] >= 0 && tokens[i] < vocab, op, ": token id ", tokens[i], " at position [", i / cols, ", ",
            i % cols, "] is out of range; ids must lie in [0, ", vocab, ")");
}

// Throws retnet::Error naming the first target that is neither an id in [0, vocab) nor the ignore index.
inline void validate_targets(const int64_t* targets, int64_t n, int64_t vocab, int64_t ignore_index = kIgnoreIndex) {
  for (int64_t i = 0; i < n; ++i)
    require(targets[i] == ignore_index || (targets[i] >= 0 && targets[i] < vocab), "cross_entropy: target ", targets[i],
            " at row ", i, " is out of range; expected an id in [0, ", vocab, ") or the ignore index ", ignore_index);
}

inline int64_t count_targets(const int64_t* targets, int64_t n, int64_t ignore_index = kIgnoreIndex) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += targets[i] != ignore_index;
  return c;
}

}  // namespace retnet
