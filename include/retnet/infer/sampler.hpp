#pragma once
// Token sampling from logits: greedy, temperature, top-k and top-p (nucleus), seeded and reproducible.
//
//   Sampler s({.temperature = 0.8, .top_k = 40, .top_p = 0.95, .seed = 7});
//   int64_t next = s.sample(logits_row, vocab);
//
// temperature 0 (or greedy = true) picks the arg-max (the lowest index among equal maxima). Otherwise the
// probabilities are softmax(logits / temperature) restricted to the top_k most likely tokens (0: all) and then to
// the smallest set of most likely tokens whose probability reaches top_p (1: all), renormalised. Draws come
// from a 64-bit generator seeded with `seed`; the uniform variate is built from its bits directly, so the same
// seed gives the same tokens on every platform.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "retnet/core/error.hpp"

namespace retnet {

struct SamplingOptions {
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;        // in (0, 1]; 1: no limit
  bool greedy = false;
  uint64_t seed = 0;

  void validate() const {
    require(std::isfinite(temperature) && temperature >= 0, "SamplingOptions: temperature = ", temperature,
            " is invalid; it must be finite and >= 0 (0 means greedy)");
    require(top_k >= 0, "SamplingOptions: top_k = ", top_k, " is invalid; it must be >= 0 (0 means no limit)");
    require(std::isfinite(top_p) && top_p > 0 && top_p <= 1, "SamplingOptions: top_p = ", top_p,
            " is invalid; it must lie in (0, 1]");
  }
};

// splitmix64: derives independent seeds (e.g. one per sequence of a batch) from one seed.
inline uint64_t mix_seed(uint64_t seed, uint64_t stream) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class Sampler {
 public:
  explicit Sampler(SamplingOptions o = {}) : o_(o), rng_(o.seed) { o_.validate(); }

  const SamplingOptions& options() const { return o_; }
  void reseed(uint64_t seed) { rng_.seed(seed); }

  // A uniform variate in [0, 1) from the top 53 bits of the generator.
  double uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

  // The probabilities sampling draws from (zeros outside top-k / top-p); for greedy a one-hot vector.
  template <class T>
  std::vector<double> distribution(const T* logits, int64_t vocab) const {
    require(vocab > 0, "Sampler: vocab = ", vocab, " must be positive");
    for (int64_t i = 0; i < vocab; ++i)
      require(std::isfinite(static_cast<double>(logits[i])), "Sampler: logit ", i, " = ",
              static_cast<double>(logits[i]), " is not finite");
    std::vector<double> p(static_cast<size_t>(vocab), 0.0);
    if (o_.greedy || o_.temperature == 0) {
      p[static_cast<size_t>(argmax(logits, vocab))] = 1.0;
      return p;
    }
    double mx = -INFINITY;
    for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      p[static_cast<size_t>(i)] = std::exp((static_cast<double>(logits[i]) - mx) / o_.temperature);
      sum += p[static_cast<size_t>(i)];
    }
    for (auto& x : p) x /= sum;
    const bool limit_k = o_.top_k > 0 && o_.top_k < vocab;
    if (limit_k || o_.top_p < 1) {
      std::vector<int64_t> order(static_cast<size_t>(vocab));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return p[static_cast<size_t>(a)] > p[static_cast<size_t>(b)]; });
      int64_t keep = limit_k ? o_.top_k : vocab;
      if (o_.top_p < 1) {
        double cum = 0;
        int64_t n = 0;
        while (n < keep) {
          cum += p[static_cast<size_t>(order[static_cast<size_t>(n)])];
          ++n;
          if (cum >= o_.top_p * (1 - 1e-12)) break;
        }
        keep = n;
      }
      for (int64_t i = keep; i < vocab; ++i) p[static_cast<size_t>(order[static_cast<size_t>(i)])] = 0;
      double s = 0;
      for (double x : p) s += x;
      for (auto& x : p) x /= s;
    }
    return p;
  }

  template <class T>
  int64_t sample(const T* logits, int64_t vocab) {
    if (o_.greedy || o_.temperature == 0) {
      (void)distribution(logits, vocab);  // validation
      return argmax(logits, vocab);
    }
    const std::vector<double> p = distribution(logits, vocab);
    const double u = uniform();
    double cum = 0;
    int64_t last = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (p[static_cast<size_t>(i)] <= 0) continue;
      cum += p[static_cast<size_t>(i)];
      last = i;
      if (u < cum) return i;
    }
    return last;  // rounding: u beyond the accumulated sum
  }

  template <class T>
  static int64_t argmax(const T* logits, int64_t vocab) {
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; ++i)
      if (logits[i] > logits[best]) best = i;
    return best;
  }

 private:
  SamplingOptions o_;
  std::mt19937_64 rng_;
};

}  // namespace retnet
