#pragma once
// Token embedding lookup and its backward (a scatter-add into the table rows).
#include <cstdint>

#include "retnet/core/backend.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/tokens.hpp"

namespace retnet {

// out [n, d] = scale · E[tokens[i]],  E [vocab, d]
template <class T>
void embedding_forward(Cpu, T* out, const int64_t* tokens, const T* table, int64_t n, int64_t d, T scale) {
#pragma omp parallel for schedule(static) if (n * d > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const T* e = table + tokens[i] * d;
    T* o = out + i * d;
    for (int64_t j = 0; j < d; ++j) o[j] = scale * e[j];
  }
}

// dE[tokens[i]] += scale · dout[i]  (serial in row order: deterministic)
template <class T>
void embedding_backward(Cpu, T* dtable, const T* dout, const int64_t* tokens, int64_t n, int64_t d, T scale) {
  for (int64_t i = 0; i < n; ++i) {
    T* g = dtable + tokens[i] * d;
    const T* o = dout + i * d;
    for (int64_t j = 0; j < d; ++j) g[j] += scale * o[j];
  }
}

}  // namespace retnet
