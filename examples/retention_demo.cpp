// The three retention forms on one long sequence: they agree (exactly in raw mode, after a per-head RMS
// normalisation in torchscale mode), a chunkwise prefill hands its state to the decoding step, and each form
// is timed. Usage: retention_demo [length=4096] [heads=8] [head_dim=64] [chunk=64] (--help)
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "cli.hpp"
#include "retnet/retnet.hpp"

using namespace retnet;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// max |a - b| after dividing every (position, head) row of each by its RMS (epsilon 0).
double normalised_diff(const Tensor<double>& a, const Tensor<double>& b, int64_t dv) {
  double worst = 0;
  for (int64_t r = 0; r < a.numel() / dv; ++r) {
    double sa = 0, sb = 0;
    for (int64_t j = 0; j < dv; ++j) sa += a[r * dv + j] * a[r * dv + j], sb += b[r * dv + j] * b[r * dv + j];
    sa = std::sqrt(sa / static_cast<double>(dv)), sb = std::sqrt(sb / static_cast<double>(dv));
    for (int64_t j = 0; j < dv; ++j) worst = std::max(worst, std::abs(a[r * dv + j] / sa - b[r * dv + j] / sb));
  }
  return worst;
}

double rel_diff(const Tensor<double>& a, const Tensor<double>& b) {
  double worst = 0, scale = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    worst = std::max(worst, std::abs(a[i] - b[i])), scale = std::max(scale, std::abs(b[i]));
  return worst / scale;
}

}  // namespace

int main(int argc, char** argv) {
  return retnet_examples::guarded_main("retention_demo", [&] {
    int64_t T = 4096, H = 8, D = 64, C = 64;
    CLI::App app("The three retention forms on one long sequence: agreement and timings.", "retention_demo");
    retnet_examples::setup_app(app);
    app.add_option("length", T, "sequence length")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
    app.add_option("heads", H, "heads")->check(CLI::Range(int64_t{1}, int64_t{1} << 10));
    app.add_option("head_dim", D, "head size (even)")->check(CLI::Range(int64_t{2}, int64_t{1} << 12));
    app.add_option("chunk", C, "chunk size")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
    retnet_examples::parse_args(app, retnet_examples::args_of(argc, argv));
    retnet_examples::require_memory(
        8.0 * 8.0 * static_cast<double>(T) * static_cast<double>(H) * static_cast<double>(D) +
            8.0 * static_cast<double>(H) * static_cast<double>(T) * static_cast<double>(T),
        "retention_demo with these sizes");
    const int64_t B = 1;
    std::printf("retention demo: batch %lld, length %lld, %lld heads, head size %lld, chunk %lld (double)\n",
                static_cast<long long>(B), static_cast<long long>(T), static_cast<long long>(H),
                static_cast<long long>(D), static_cast<long long>(C));
    Tensor<double> q({B, T, H, D}), k({B, T, H, D}), v({B, T, H, D});
    std::mt19937_64 rng(42);
    std::normal_distribution<double> normal;
    for (auto& x : q.storage()) x = normal(rng);
    for (auto& x : k.storage()) x = normal(rng) / std::sqrt(static_cast<double>(D));
    for (auto& x : v.storage()) x = normal(rng);
    const RetentionInputs<double> in{q.cview(), k.cview(), v.cview(), {}, {}};
    bool ok = true;
    for (Normalization norm : {Normalization::torchscale, Normalization::raw}) {
      const RetentionConfig cfg(RetentionOptions{
          .heads = H, .key_dim = D, .value_dim = D, .chunk_size = C, .normalization = norm, .eps = 0.0});
      std::printf("\n%s normalisation\n", to_string(norm));
      Tensor<double> o[3], kv[3], scale[3];
      const Form forms[3] = {Form::parallel, Form::recurrent, Form::chunkwise};
      for (int f = 0; f < 3; ++f) {
        o[f] = Tensor<double>({B, T, H, D}), kv[f] = Tensor<double>({B, H, D, D}), scale[f] = Tensor<double>({B, H});
        const auto t0 = std::chrono::steady_clock::now();
        retention_forward(cpu, forms[f], cfg, in, RetentionOutputs<double>{o[f].view(), kv[f].view(), scale[f].view()});
        std::printf("  %-9s forward %9.2f ms\n", to_string(forms[f]), 1e3 * seconds_since(t0));
      }
      for (int f : {0, 2}) {
        const double d = norm == Normalization::raw ? rel_diff(o[f], o[1]) : normalised_diff(o[f], o[1], D);
        const double ds = rel_diff(kv[f], kv[1]);
        const double tol = norm == Normalization::raw ? 1e-12 : 1e-10;
        std::printf("  %-9s vs recurrent: output %.2e%s, final state %.2e\n", to_string(forms[f]), d,
                    norm == Normalization::raw ? " (relative)" : " (after RMS normalisation)", ds);
        ok = ok && d < tol && ds < 1e-12;
      }
      // Decode 16 more tokens from the chunkwise prefill's state; compare with a recurrent pass over all of them.
      const int64_t extra = 16;
      Tensor<double> q2({B, T + extra, H, D}), k2({B, T + extra, H, D}), v2({B, T + extra, H, D});
      std::copy(q.storage().begin(), q.storage().end(), q2.storage().begin());
      std::copy(k.storage().begin(), k.storage().end(), k2.storage().begin());
      std::copy(v.storage().begin(), v.storage().end(), v2.storage().begin());
      for (int64_t i = q.numel(); i < q2.numel(); ++i)
        q2[i] = normal(rng), k2[i] = normal(rng) / std::sqrt(double(D)), v2[i] = normal(rng);
      Tensor<double> o_full({B, T + extra, H, D});
      retention_forward(cpu, Form::recurrent, cfg, RetentionInputs<double>{q2.cview(), k2.cview(), v2.cview(), {}, {}},
                        RetentionOutputs<double>{o_full.view(), {}, {}});
      Tensor<double> state = kv[2], sc = scale[2], os({B, H, D});
      double worst = 0;
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t n = T; n < T + extra; ++n) {
        const int64_t at = n * H * D;
        retention_recurrent_step(cpu, cfg, HostView<const double>(q2.data() + at, {B, H, D}),
                                 HostView<const double>(k2.data() + at, {B, H, D}),
                                 HostView<const double>(v2.data() + at, {B, H, D}), state.view(), sc.view(), os.view());
        for (int64_t i = 0; i < H * D; ++i)
          worst = std::max(worst, std::abs(os[i] - o_full[at + i]) / (std::abs(o_full[at + i]) + 1e-3));
      }
      std::printf("  chunkwise prefill + %lld decoding steps (%.1f us/step) vs one recurrent pass: %.2e\n",
                  static_cast<long long>(extra), 1e6 * seconds_since(t0) / extra, worst);
      ok = ok && worst < 1e-9;
    }
    std::printf("\n%s\n", ok ? "the three forms agree" : "MISMATCH");
    return ok ? 0 : 1;
  });
}
