// The communicator interface and the data-parallel helpers in one process: row sharding, the bucket plan, the
// single-process communicator, the layer hook, ZeRO-1 with one rank and the rank-0 checkpoint helpers.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <random>
#include <vector>

#include "retnet/dist/checkpoint.hpp"
#include "retnet/dist/data_parallel.hpp"
#include "retnet/train/trainer.hpp"

using namespace retnet;

namespace {

ModelConfig cfg(bool tied = true) {
  ModelConfig c;
  c.decoder_embed_dim = 16;
  c.decoder_retention_heads = 2;
  c.decoder_value_embed_dim = 16;
  c.decoder_ffn_embed_dim = 24;
  c.decoder_layers = 3;
  c.vocab_size = 13;
  c.recurrent_chunk_size = 4;
  c.share_decoder_input_output_embed = tied;
  return c;
}

template <class T>
std::vector<double> train(Trainer<T>& tr, int64_t from, int64_t to, int64_t B = 4, int64_t Tn = 8) {
  std::vector<double> out;
  std::vector<int64_t> x(static_cast<size_t>(B * Tn)), y(x.size());
  for (int64_t s = from; s < to; ++s) {
    std::mt19937_64 g(77 + static_cast<uint64_t>(s));
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<int64_t>(g() % 13), y[i] = (x[i] * 5 + 2) % 13;
    out.push_back(tr.step(HostView<const int64_t>(x.data(), {B, Tn}), HostView<const int64_t>(y.data(), {B, Tn})).loss);
  }
  return out;
}

TrainerConfig tcfg(int zero = 0, int64_t bucket_bytes = dist::kDefaultBucketBytes) {
  TrainerConfig t;
  t.adamw.lr = 5e-3;
  t.schedule = LrSchedule{3, 20, LrDecay::cosine, 0.1};
  t.grad_clip = 0.5;
  t.dist.zero_stage = zero;
  t.dist.bucket_bytes = bucket_bytes;
  return t;
}

}  // namespace

TEST_CASE("split_rows covers the rows once, sizes differing by at most one", "[dist]") {
  for (int64_t total : {0, 1, 5, 7, 64})
    for (int64_t parts : {1, 2, 3, 4, 8}) {
      int64_t next = 0;
      for (int64_t i = 0; i < parts; ++i) {
        const dist::RowRange r = dist::split_rows(total, parts, i);
        CHECK(r.begin == next);
        CHECK((r.count == total / parts || r.count == total / parts + 1));
        next = r.end();
      }
      CHECK(next == total);
    }
  CHECK(dist::split_rows(5, 2, 0).count == 3);
  CHECK_THROWS_WITH(dist::split_rows(5, 0, 0), Catch::Contains("parts = 0"));
  CHECK_THROWS_WITH(dist::split_rows(5, 2, 2), Catch::Contains("index = 2"));
  CHECK_THROWS_WITH(dist::split_rows(-1, 2, 0), Catch::Contains("total = -1"));
  CHECK(dist::shard_rows(9, dist::single_process()).count == 9);
}

TEST_CASE("bucket plan: contiguous from the end, stages never rise towards the front", "[dist]") {
  for (bool tied : {true, false})
    for (int world : {1, 2, 3}) {
      Model<float> m(cfg(tied));
      const ParamTable& t = m.param_table();
      for (bool zero : {false, true}) {
        const dist::BucketPlan plan(t, 3, world, 700, zero);
        int64_t end = t.total(), stage = std::numeric_limits<int64_t>::max(), owned = 0;
        for (const dist::Bucket& b : plan.buckets()) {
          CHECK(b.begin + b.count == end);
          CHECK(b.stage <= stage);
          if (world > 1 && b.begin > 0) CHECK(b.count % world == 0);  // only the front bucket may be uneven
          stage = b.stage, end = b.begin;
          if (zero) {
            CHECK(b.owned == owned);
            owned += b.slice;
            int64_t covered = 0;
            for (int r = 0; r < world; ++r) covered += plan.owned_range(b, r).count;
            CHECK(covered == b.count);
          }
        }
        CHECK(end == 0);
        CHECK(plan.buckets().back().stage == -1);  // the embedding's bucket waits for the end
      }
      // the layer-2 tensors may go once layer 2 is done, layer 0's only after layer 0
      CHECK(dist::backward_stage("layers.2.ffn.fc1.weight", 3) == 2);
      CHECK(dist::backward_stage("layer_norm.weight", 3) == 3);
      CHECK(dist::backward_stage("embed_tokens.weight", 3) == -1);
      CHECK(dist::backward_stage("output_projection.weight", 3) == -1);
      CHECK_THROWS_WITH(dist::backward_stage("layers.5.ffn.fc1.weight", 3), Catch::Contains("layer 5 of 3"));
    }
  Model<float> m(cfg());
  CHECK_THROWS_WITH(dist::BucketPlan(m.param_table(), 3, 0, 100, false), Catch::Contains("world size 0"));
  CHECK_THROWS_WITH(dist::BucketPlan(m.param_table(), 3, 1, 0, false), Catch::Contains("bucket size 0"));
}

TEST_CASE("Model::backward reports each layer once its gradients are final", "[dist]") {
  Model<double> m(cfg());
  m.init_torchscale(1);
  const int64_t B = 2, Tn = 6, V = 13;
  typename Model<double>::Workspace ws(m, B, Tn);
  std::vector<int64_t> x{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, y(x);
  for (auto& v : y) v = (v + 1) % V;
  std::vector<double> g(static_cast<size_t>(m.param_table().total()), 0.0), seen;
  std::vector<int64_t> order;
  m.forward_train(x.data(), Form::chunkwise, ws);
  cross_entropy_forward_backward(cpu, ws.logits(), y.data(), B * Tn, V, ws.dlogits(), 1.0 / 12);
  // snapshot at each call; the final gradient must already be there for the reported layer
  std::vector<std::vector<double>> snaps;
  m.backward(ws, g.data(), {}, {}, [&](int64_t l) {
    order.push_back(l);
    snaps.push_back(g);
  });
  CHECK(order == std::vector<int64_t>{2, 1, 0});
  for (size_t k = 0; k < order.size(); ++k)
    for (const ParamInfo& p : m.param_table().entries())
      if (dist::backward_stage(p.name, 3) >= order[k])
        for (int64_t i = 0; i < p.numel(); ++i)
          REQUIRE(snaps[k][static_cast<size_t>(p.offset + i)] == g[static_cast<size_t>(p.offset + i)]);
}

TEST_CASE("the single-process communicator copies and leaves sums alone", "[dist]") {
  dist::SingleProcess one;
  std::vector<double> a{1, 2, 3}, b(3);
  one.all_reduce(a.data(), 3);
  CHECK(a == std::vector<double>{1, 2, 3});
  one.reduce_scatter(a.data(), b.data(), 3);
  CHECK(b == a);
  std::vector<int64_t> c{4}, d{0};
  one.all_gather(c.data(), d.data(), 1);
  CHECK(d[0] == 4);
  CHECK(one.gather_values(std::vector<double>{2.5}) == std::vector<double>{2.5});
  CHECK_THROWS_WITH(one.broadcast(a.data(), 3, 1), Catch::Contains("root 1"));
  CHECK_THROWS_WITH(one.all_reduce(a.data(), -2), Catch::Contains("count -2"));
  CHECK(dist::run_guarded(one, [] { return 7; }) == 7);
  CHECK(dist::run_guarded(one, []() -> int { fail("broken"); }) == 1);
}

TEST_CASE("an explicit single-process communicator is the default trainer, bit for bit", "[dist]") {
  Model<float> a(cfg()), b(cfg());
  a.init_torchscale(2);
  b.init_torchscale(2);
  TrainerConfig tb = tcfg(0, 512);
  tb.dist.comm = &dist::single_process();
  Trainer<float> ta(a, tcfg()), trb(b, tb);
  CHECK(train(ta, 0, 10) == train(trb, 0, 10));
  CHECK(std::memcmp(a.params(), b.params(), sizeof(float) * static_cast<size_t>(a.param_table().total())) == 0);
}

TEST_CASE("ZeRO-1 on one rank equals plain AdamW", "[dist][zero]") {
  Model<double> a(cfg(false)), b(cfg(false));
  a.init_torchscale(2);
  b.init_torchscale(2);
  Trainer<double> ta(a, tcfg()), tz(b, tcfg(1, 800));
  const auto la = train(ta, 0, 15), lz = train(tz, 0, 15);
  for (size_t i = 0; i < la.size(); ++i) CHECK(std::abs(la[i] - lz[i]) <= 1e-12 * std::abs(la[i]));
  double worst = 0;
  for (int64_t i = 0; i < a.param_table().total(); ++i)
    worst = std::max(worst, std::abs(a.params()[i] - b.params()[i]));
  CHECK(worst <= 1e-12);
  // the gathered moments are the plain optimizer's
  tz.data_parallel().gather_optimizer_state(tz.optimizer());
  for (int64_t i = 0; i < a.param_table().total(); ++i) {
    REQUIRE(std::abs(tz.optimizer().exp_avg()[i] - ta.optimizer().exp_avg()[i]) <= 1e-12);
    REQUIRE(std::abs(tz.optimizer().exp_avg_sq()[i] - ta.optimizer().exp_avg_sq()[i]) <= 1e-12);
  }
}

TEST_CASE("bad data-parallel settings are rejected", "[dist]") {
  Model<float> m(cfg());
  TrainerConfig t = tcfg();
  t.dist.zero_stage = 2;
  CHECK_THROWS_WITH(Trainer<float>(m, t), Catch::Contains("zero_stage = 2"));
  t = tcfg();
  t.dist.bucket_bytes = 0;
  CHECK_THROWS_WITH(Trainer<float>(m, t), Catch::Contains("bucket_bytes = 0"));
}

TEST_CASE("rank-0 checkpoints with ZeRO-1 resume the uninterrupted run", "[dist][zero][checkpoint]") {
  const auto path = std::filesystem::temp_directory_path() / "retnet_test_dist_zero.safetensors";
  Model<double> ref(cfg());
  ref.init_torchscale(3);
  Trainer<double> tr_ref(ref, tcfg(1, 600));
  const auto want = train(tr_ref, 0, 20);
  {
    Model<double> m(cfg());
    m.init_torchscale(3);
    Trainer<double> tr(m, tcfg(1, 600));
    train(tr, 0, 10);
    dist::save_checkpoint(path.string(), tr, 10 * 4);
  }
  Model<double> m(cfg());
  Trainer<double> tr(m, tcfg(1, 600));
  const auto info = dist::load_checkpoint(path.string(), tr);
  CHECK(info.step == 10);
  CHECK(info.data_position == 40);
  CHECK(dist::read_checkpoint_info(dist::single_process(), path.string()).step == 10);
  const auto got = train(tr, 10, 20);  // the checkpoint rounds nothing, the summation order may differ
  for (size_t i = 0; i < got.size(); ++i) CHECK(std::abs(got[i] - want[10 + i]) <= 1e-12 * std::abs(want[10 + i]));
  std::filesystem::remove(path);
  CHECK_THROWS_WITH(dist::load_checkpoint(path.string(), tr), Catch::Contains(path.string()));
}
