// Data parallelism over MPI against one process. Every test case is collective and runs with any world size:
// without mpirun (world size 1, the MPI code path alone) and under mpirun with 2 and 3 ranks (uneven splits of
// the global batch). Each rank also trains the single-process reference itself (SingleProcess communicator on
// the whole global batch) and compares.
#define CATCH_CONFIG_RUNNER
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "retnet/dist/checkpoint.hpp"
#include "retnet/dist/mpi.hpp"
#include "retnet/train/trainer.hpp"

using namespace retnet;

namespace {

dist::MpiCommunicator* g_comm = nullptr;
dist::MpiCommunicator& comm() { return *g_comm; }

ModelConfig cfg(double dropout = 0.0) {
  ModelConfig c;
  c.decoder_embed_dim = 16;
  c.decoder_retention_heads = 2;
  c.decoder_value_embed_dim = 16;
  c.decoder_ffn_embed_dim = 24;
  c.decoder_layers = 3;
  c.vocab_size = 13;
  c.recurrent_chunk_size = 4;
  c.dropout = dropout;
  c.share_decoder_input_output_embed = false;  // an output projection at the buffer's front
  return c;
}

constexpr int64_t kB = 5, kT = 10;  // 5 rows: 3 + 2 on two ranks, 2 + 2 + 1 on three

// The global batch of step s, a pure function of s; with ignored targets so that ranks count different tokens.
void global_batch(int64_t step, int64_t V, std::vector<int64_t>& x, std::vector<int64_t>& y) {
  std::mt19937_64 g(1234567ULL + static_cast<uint64_t>(step));
  x.resize(static_cast<size_t>(kB * kT));
  y.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = static_cast<int64_t>(g() % static_cast<uint64_t>(V));
    y[i] = g() % 7 == 0 ? kIgnoreIndex : (x[i] * 2 + 1) % V;
  }
}

template <class T>
TrainerConfig tcfg(dist::Communicator* c, int zero = 0, int64_t bucket_bytes = dist::kDefaultBucketBytes) {
  TrainerConfig t;
  t.adamw.lr = 5e-3;
  t.schedule = LrSchedule{5, 50, LrDecay::cosine, 0.1};
  t.grad_clip = 0.5;  // clips in most steps: the norm must agree everywhere
  t.dropout_seed = 9;
  t.dist.comm = c;
  t.dist.zero_stage = zero;
  t.dist.bucket_bytes = bucket_bytes;
  return t;
}

// Steps [from, to) of a run; `shard`: feed only this rank's rows of each global batch.
template <class T>
std::vector<double> train(Trainer<T>& tr, int64_t from, int64_t to, bool shard) {
  std::vector<double> losses;
  std::vector<int64_t> x, y;
  const int64_t V = tr.model().config().vocab_size;
  const dist::RowRange rows = shard ? dist::shard_rows(kB, tr.data_parallel().comm()) : dist::RowRange{0, kB};
  for (int64_t s = from; s < to; ++s) {
    global_batch(s, V, x, y);
    const StepStats st = tr.step(HostView<const int64_t>(x.data() + rows.begin * kT, {rows.count, kT}),
                                 HostView<const int64_t>(y.data() + rows.begin * kT, {rows.count, kT}));
    losses.push_back(st.loss);
  }
  return losses;
}

template <class T>
void check_curves(const std::vector<double>& got, const std::vector<double>& want, double rel) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]) / std::abs(want[i]));
  INFO("worst relative loss difference " << worst << " (rank " << comm().rank() << " of " << comm().size() << ")");
  CHECK(worst <= rel);
}

template <class T>
double max_param_diff(const Model<T>& a, const Model<T>& b) {
  double worst = 0;
  const int64_t n = a.param_table().total();
  for (int64_t i = 0; i < n; ++i)
    worst = std::max(worst, std::abs(static_cast<double>(a.params()[i]) - static_cast<double>(b.params()[i])));
  return worst;
}

// Every rank holds bitwise the same parameters as rank 0.
template <class T>
bool same_on_all_ranks(const Model<T>& m) {
  const int64_t n = m.param_table().total();
  std::vector<T> root(m.params(), m.params() + n);
  comm().broadcast(root.data(), n);
  int64_t differ = std::memcmp(root.data(), m.params(), sizeof(T) * static_cast<size_t>(n)) != 0;
  comm().all_reduce(&differ, 1);
  return differ == 0;
}

std::filesystem::path shared_tmp_dir() {
  int64_t id = getpid();
  comm().broadcast(&id, 1);
  const auto dir = std::filesystem::temp_directory_path() / ("retnet_dist_test_" + std::to_string(id));
  if (comm().rank() == 0) std::filesystem::create_directories(dir);
  comm().barrier();
  return dir;
}

template <class T>
void curve_matches_one_process(double rel, double param_tol, double dropout, int zero) {
  Model<T> ref(cfg(dropout)), par(cfg(dropout));
  ref.init_torchscale(3);
  par.init_torchscale(3);
  Trainer<T> tr_ref(ref, tcfg<T>(nullptr)), tr_par(par, tcfg<T>(&comm(), zero, 4096));
  const auto want = train(tr_ref, 0, 50, false);
  const auto got = train(tr_par, 0, 50, true);
  check_curves<T>(got, want, rel);
  INFO("max parameter difference " << max_param_diff(par, ref));
  CHECK(max_param_diff(par, ref) <= param_tol);
  CHECK(same_on_all_ranks(par));
}

}  // namespace

TEST_CASE("collectives: values from every rank", "[dist][mpi]") {
  const int P = comm().size(), r = comm().rank();
  std::vector<double> a{1.0 + r, 10.0 * r};
  comm().all_reduce(a.data(), 2);
  CHECK(a[0] == P + P * (P - 1) / 2.0);
  CHECK(a[1] == 10.0 * P * (P - 1) / 2.0);
  int64_t mx = 7 * r;
  comm().all_reduce(&mx, 1, dist::ReduceOp::max);
  CHECK(mx == 7 * (P - 1));
  // reduce_scatter: rank r gets the sums of elements [3r, 3r + 3)
  std::vector<float> send(static_cast<size_t>(3 * P)), recv(3);
  for (size_t i = 0; i < send.size(); ++i) send[i] = static_cast<float>(i + r);
  comm().reduce_scatter(send.data(), recv.data(), 3);
  for (int i = 0; i < 3; ++i)
    CHECK(recv[static_cast<size_t>(i)] == static_cast<float>(P * (3 * r + i) + P * (P - 1) / 2));
  // all_gather, separate buffers and in place
  std::vector<int64_t> mine{r, -r}, all(static_cast<size_t>(2 * P));
  comm().all_gather(mine.data(), all.data(), 2);
  for (int q = 0; q < P; ++q)
    CHECK((all[static_cast<size_t>(2 * q)] == q && all[static_cast<size_t>(2 * q + 1)] == -q));
  std::vector<double> inplace(static_cast<size_t>(P), -1.0);
  inplace[static_cast<size_t>(r)] = 0.5 * r;
  comm().all_gather(inplace.data() + r, inplace.data(), 1);
  for (int q = 0; q < P; ++q) CHECK(inplace[static_cast<size_t>(q)] == 0.5 * q);
  std::vector<float> b(5, static_cast<float>(r));
  comm().broadcast(b.data(), 5, P - 1);
  for (float v : b) CHECK(v == static_cast<float>(P - 1));
  comm().barrier();
  CHECK(comm().describe().find("MPI rank " + std::to_string(r)) == 0);
}

TEST_CASE("collectives reject bad arguments before communicating", "[dist][mpi]") {
  double v = 0;
  CHECK_THROWS_AS(comm().all_reduce(&v, -1), Error);
  CHECK_THROWS_WITH(comm().broadcast(&v, 1, comm().size()), Catch::Contains("root"));
  CHECK_THROWS_WITH(dist::MpiCommunicator(MPI_COMM_WORLD, -1.0), Catch::Contains("timeout"));
}

TEST_CASE("data parallel training follows one process (double, 1e-12)", "[dist][mpi]") {
  curve_matches_one_process<double>(1e-12, 1e-12, 0.0, 0);
}

TEST_CASE("data parallel training with dropout follows one process (global row masks)", "[dist][mpi]") {
  curve_matches_one_process<double>(1e-12, 1e-12, 0.1, 0);
}

TEST_CASE("data parallel training follows one process (float, 1e-6)", "[dist][mpi]") {
  curve_matches_one_process<float>(1e-6, 1e-5, 0.0, 0);
}

TEST_CASE("ZeRO-1 gives the parameters of plain data parallelism", "[dist][mpi][zero]") {
  Model<double> plain(cfg()), zero(cfg());
  plain.init_torchscale(4);
  zero.init_torchscale(4);
  // small buckets: many of them, the front one padded to a multiple of the world size
  Trainer<double> tp(plain, tcfg<double>(&comm(), 0, 1000)), tz(zero, tcfg<double>(&comm(), 1, 1000));
  const auto lp = train(tp, 0, 50, true), lz = train(tz, 0, 50, true);
  check_curves<double>(lz, lp, 1e-12);
  INFO("max parameter difference " << max_param_diff(zero, plain));
  CHECK(max_param_diff(zero, plain) <= 1e-12);
  CHECK(same_on_all_ranks(zero));
}

TEST_CASE("checkpoints resume across world sizes", "[dist][mpi][checkpoint]") {
  const auto dir = shared_tmp_dir();
  for (int zero : {0, 1}) {
    DYNAMIC_SECTION("zero stage " << zero) {
      Model<double> ref(cfg(0.1));
      ref.init_torchscale(5);
      Trainer<double> tr_ref(ref, tcfg<double>(nullptr));
      const auto want = train(tr_ref, 0, 50, false);

      // P ranks save at step 25; one process resumes (every rank does it alone)
      const std::string from_p = (dir / ("from_p_" + std::to_string(zero) + ".safetensors")).string();
      {
        Model<double> m(cfg(0.1));
        m.init_torchscale(5);
        Trainer<double> tr(m, tcfg<double>(&comm(), zero, 2000));
        const auto first = train(tr, 0, 25, true);
        dist::save_checkpoint(from_p, tr, 25);
        check_curves<double>(first, std::vector<double>(want.begin(), want.begin() + 25), 1e-12);
      }
      {
        Model<double> m(cfg(0.1));
        Trainer<double> tr(m, tcfg<double>(nullptr));
        const auto info = load_training_checkpoint(from_p, tr);
        CHECK(info.step == 25);
        check_curves<double>(train(tr, 25, 50, false), std::vector<double>(want.begin() + 25, want.end()), 1e-12);
      }
      // one process saves at step 25; P ranks resume (rank 0 reads, the others receive)
      const std::string from_1 = (dir / ("from_1_" + std::to_string(zero) + ".safetensors")).string();
      {
        Model<double> m(cfg(0.1));
        m.init_torchscale(5);
        Trainer<double> tr(m, tcfg<double>(nullptr));
        train(tr, 0, 25, false);
        if (comm().rank() == 0) save_training_checkpoint(from_1, tr, 25);
        comm().barrier();
      }
      {
        Model<double> m(cfg(0.1));
        Trainer<double> tr(m, tcfg<double>(&comm(), zero, 2000));
        const auto info = dist::load_checkpoint(from_1, tr);
        CHECK(info.step == 25);
        CHECK(info.data_position == 25);
        check_curves<double>(train(tr, 25, 50, true), std::vector<double>(want.begin() + 25, want.end()), 1e-12);
        CHECK(max_param_diff(m, ref) <= 1e-12);
      }
    }
  }
  comm().barrier();
  if (comm().rank() == 0) std::filesystem::remove_all(dir);
}

TEST_CASE("a bad checkpoint is the same error on every rank", "[dist][mpi][checkpoint]") {
  Model<double> m(cfg());
  Trainer<double> tr(m, tcfg<double>(&comm()));
  CHECK_THROWS_WITH(dist::load_checkpoint("/nonexistent/retnet.safetensors", tr),
                    Catch::Contains("/nonexistent/retnet.safetensors"));
  CHECK_THROWS_AS(dist::read_checkpoint_info(comm(), "/nonexistent/retnet.safetensors"), Error);
}

int main(int argc, char** argv) {
  dist::MpiContext mpi(&argc, &argv);
  dist::MpiCommunicator c;
  g_comm = &c;
  Catch::Session session;
  const int rc = session.run(argc, argv);
  // every rank's verdict decides the exit code of each
  int64_t failed = rc != 0;
  c.all_reduce(&failed, 1);
  g_comm = nullptr;
  return failed ? 1 : 0;
}
