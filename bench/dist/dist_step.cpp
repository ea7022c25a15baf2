// Time per data-parallel training step, split into compute and communication; run under mpirun:
//   mpirun -np 4 --bind-to none -x OMP_NUM_THREADS=4 build/bench/dist/dist_step --model default
// Options: --model default|100m (train_lm's default model; 768 wide, 14 layers, about 100 M parameters),
// --batch B (global rows), --seq T, --steps N (timed, after 2 warm-up steps), --zero 0|1, --bucket-mb X.
// Prints one line (rank 0): the median step, its compute part (the step minus the time spent waiting for
// communication), the gradient wait left after the backward pass, the other waits (counts, loss and norm,
// ZeRO-1's parameter all-gather), a standalone all-reduce of the whole gradient (its time and bus bandwidth)
// and the share of that all-reduce hidden behind the backward pass, 1 - gradient wait / standalone time.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "retnet/dist/mpi.hpp"
#include "retnet/train/trainer.hpp"

using namespace retnet;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  dist::MpiContext mpi(&argc, &argv);
  dist::MpiCommunicator comm;
  return dist::run_guarded(comm, [&] {
    std::string model = "default";
    int64_t B = 16, T = 128, steps = 10, zero = 0;
    double bucket_mb = 25;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      require(i + 1 < argc, "dist_step: option ", a, " needs a value");
      const std::string v = argv[++i];
      if (a == "--model")
        model = v;
      else if (a == "--batch")
        B = std::stoll(v);
      else if (a == "--seq")
        T = std::stoll(v);
      else if (a == "--steps")
        steps = std::stoll(v);
      else if (a == "--zero")
        zero = std::stoll(v);
      else if (a == "--bucket-mb")
        bucket_mb = std::stod(v);
      else
        fail("dist_step: unknown option ", a);
    }
    require(B > 0 && T > 0 && steps > 0, "dist_step: --batch, --seq and --steps must be positive");
    ModelConfig c;  // the library default is 768 wide with a 1280-wide GLU FFN
    c.vocab_size = 256;
    c.activation_fn = "swish";
    if (model == "default") {  // train_lm's default model
      c.decoder_layers = 4, c.decoder_embed_dim = 128, c.decoder_retention_heads = 2;
      c.decoder_value_embed_dim = 256, c.decoder_ffn_embed_dim = 256, c.recurrent_chunk_size = 64;
    } else {
      require(model == "100m", "dist_step: --model ", model, " is not default or 100m");
      c.decoder_layers = 14, c.recurrent_chunk_size = 64;
    }
    Model<float> m(c);
    m.init_torchscale(1);
    TrainerConfig tc;
    tc.dist.comm = &comm;
    tc.dist.zero_stage = static_cast<int>(zero);
    tc.dist.bucket_bytes = static_cast<int64_t>(bucket_mb * (1 << 20));
    Trainer<float> tr(m, tc);
    const dist::RowRange rows = dist::shard_rows(B, comm);
    std::vector<int64_t> x(static_cast<size_t>(rows.count * T)), y(x.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<int64_t>((i * 31 + 7) % 256), y[i] = (x[i] + 1) % 256;
    std::vector<double> step_s, grad_wait, other_wait;
    for (int64_t s = 0; s < steps + 2; ++s) {
      comm.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      tr.step(HostView<const int64_t>(x.data(), {rows.count, T}), HostView<const int64_t>(y.data(), {rows.count, T}));
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (s < 2) continue;
      step_s.push_back(el);
      grad_wait.push_back(tr.data_parallel().last_waits().gradients);
      other_wait.push_back(tr.data_parallel().last_waits().other);
    }
    // the same gradient volume all-reduced alone
    const int64_t n = m.param_table().total();
    std::vector<float> buf(static_cast<size_t>(n), 1.0f);
    std::vector<double> ar_s;
    for (int k = 0; k < 5; ++k) {
      comm.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      comm.all_reduce(buf.data(), n);
      ar_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const int P = comm.size();
    const double step = median(step_s), gw = median(grad_wait), ow = median(other_wait), ar = median(ar_s);
    const double busbw = P > 1 ? 4.0 * static_cast<double>(n) * 2.0 * (P - 1) / P / ar / 1e9 : 0.0;
    const double hidden = P > 1 ? std::clamp(1.0 - gw / ar, 0.0, 1.0) : 0.0;
    const char* threads = std::getenv("OMP_NUM_THREADS");
    dist::print_root(comm,
                     "model %s params %lld ranks %d threads/rank %s zero %lld bucket %.0f MB batch %lldx%lld | step "
                     "%.1f ms compute %.1f ms grad-wait %.2f ms other-wait %.2f ms | all-reduce alone %.2f ms "
                     "(bus %.2f GB/s) hidden %.0f %%\n",
                     model.c_str(), static_cast<long long>(n), P, threads ? threads : "?", static_cast<long long>(zero),
                     bucket_mb, static_cast<long long>(B), static_cast<long long>(T), step * 1e3,
                     (step - gw - ow) * 1e3, gw * 1e3, ow * 1e3, ar * 1e3, busbw, hidden * 100);
    return 0;
  });
}
