#pragma once
// Softmax cross-entropy over the last dimension with an ignore index, fused with its gradient.
// Stable for large logits: log-sum-exp after subtracting the row maximum, sums in double.
#include <cmath>
#include <cstdint>
#include <vector>

#include "retnet/core/backend.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/op_types.hpp"
#include "retnet/core/tokens.hpp"

namespace retnet {

// logits [n, vocab], targets [n] (ids or ignore_index). Returns the summed loss and count.
// If dlogits is given, writes dlogits [n, vocab] = grad_scale · (softmax − onehot) for counted rows, 0 for
// ignored rows (dlogits may alias logits). Typically grad_scale = 1 / (tokens in the whole optimizer step).
template <class T>
LossSum cross_entropy_forward_backward(Cpu, const T* logits, const int64_t* targets, int64_t n, int64_t vocab,
                                       T* dlogits = nullptr, double grad_scale = 1.0,
                                       int64_t ignore_index = kIgnoreIndex, T* row_loss = nullptr) {
  validate_targets(targets, n, vocab, ignore_index);
  std::vector<double> losses(static_cast<size_t>(n), 0.0);
#pragma omp parallel for schedule(static) if (n * vocab > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const T* x = logits + i * vocab;
    const int64_t t = targets[i];
    if (t == ignore_index) {
      if (dlogits)
        for (int64_t j = 0; j < vocab; ++j) dlogits[i * vocab + j] = T(0);
      if (row_loss) row_loss[i] = T(0);
      continue;
    }
    T mx = x[0];
    for (int64_t j = 1; j < vocab; ++j) mx = x[j] > mx ? x[j] : mx;
    double se = 0;
    for (int64_t j = 0; j < vocab; ++j) se += std::exp(static_cast<double>(x[j] - mx));
    const double lse = std::log(se) + static_cast<double>(mx);
    const double li = lse - static_cast<double>(x[t]);
    losses[static_cast<size_t>(i)] = li;
    if (row_loss) row_loss[i] = static_cast<T>(li);
    if (dlogits) {
      T* g = dlogits + i * vocab;
      const double inv = 1.0 / se;
      for (int64_t j = 0; j < vocab; ++j) {
        const double p = std::exp(static_cast<double>(x[j] - mx)) * inv;
        g[j] = static_cast<T>(grad_scale * (p - (j == t ? 1.0 : 0.0)));
      }
    }
  }
  LossSum r;
  for (int64_t i = 0; i < n; ++i) {
    if (targets[i] == ignore_index) continue;
    r.sum += losses[static_cast<size_t>(i)];
    ++r.count;
  }
  return r;
}

}  // namespace retnet
