// A data-parallel training run in which rank 1 fails at step 3: "kill" (SIGKILL, as an OOM killer would),
// "hang" (stops taking part, as a deadlocked or stalled rank would) or "throw" (a retnet::Error). The other
// ranks carry on into their next collective; check_failure.cmake checks that the job still ends, non-zero,
// with a message naming the failure.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "retnet/dist/mpi.hpp"
#include "retnet/train/trainer.hpp"

using namespace retnet;

int main(int argc, char** argv) {
  dist::MpiContext mpi(&argc, &argv);
  dist::MpiCommunicator comm;
  const std::string mode = argc > 1 ? argv[1] : "";
  return dist::run_guarded(comm, [&] {
    require(mode == "kill" || mode == "hang" || mode == "throw", "dist_fail_worker: mode '", mode,
            "' is not kill, hang or throw");
    ModelConfig c;
    c.decoder_embed_dim = 16, c.decoder_retention_heads = 2, c.decoder_value_embed_dim = 16;
    c.decoder_ffn_embed_dim = 16, c.decoder_layers = 2, c.vocab_size = 11, c.recurrent_chunk_size = 4;
    Model<float> m(c);
    m.init_torchscale(1);
    TrainerConfig tc;
    tc.dist.comm = &comm;
    Trainer<float> tr(m, tc);
    const int64_t B = 4, T = 8;
    const dist::RowRange rows = dist::shard_rows(B, comm);
    std::vector<int64_t> x(static_cast<size_t>(rows.count * T)), y(x.size());
    for (size_t i = 0; i < x.size(); ++i)
      x[i] = static_cast<int64_t>(i % 11), y[i] = static_cast<int64_t>((i + 1) % 11);
    for (int64_t s = 0; s < 1000; ++s) {
      if (s == 3 && comm.rank() == 1) {
        std::fprintf(stderr, "dist_fail_worker: rank 1 fails now (%s)\n", mode.c_str());
        std::fflush(stderr);
        if (mode == "kill") std::raise(SIGKILL);
        if (mode == "hang") std::this_thread::sleep_for(std::chrono::hours(1));
        fail("injected failure on rank 1");
      }
      const StepStats st = tr.step(HostView<const int64_t>(x.data(), {rows.count, T}),
                                   HostView<const int64_t>(y.data(), {rows.count, T}));
      dist::print_root(comm, "step %lld loss %.4f\n", static_cast<long long>(s), st.loss);
    }
    return 0;
  });
}
