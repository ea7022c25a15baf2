// AdamW, schedules, clipping, accumulation, determinism and checkpoint resume.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "retnet/train/checkpoint.hpp"
#include "retnet/train/trainer.hpp"
#include "test_util.hpp"

using namespace retnet;

namespace {

ModelConfig cfg() {
  ModelConfig c;
  c.decoder_embed_dim = 16;
  c.decoder_retention_heads = 2;
  c.decoder_value_embed_dim = 32;
  c.decoder_ffn_embed_dim = 24;
  c.decoder_layers = 2;
  c.vocab_size = 17;
  c.recurrent_chunk_size = 4;
  return c;
}

// batch for step s, a pure function of (seed, step): resuming needs only the step
void batch(uint64_t seed, int64_t step, int64_t B, int64_t T, int64_t V, std::vector<int64_t>& x,
           std::vector<int64_t>& y) {
  std::mt19937_64 g(seed * 1000003ULL + static_cast<uint64_t>(step));
  x.resize(static_cast<size_t>(B * T));
  y.resize(x.size());
  for (int64_t b = 0; b < B; ++b) {
    int64_t prev = static_cast<int64_t>(g() % static_cast<uint64_t>(V));
    for (int64_t t = 0; t < T; ++t) {
      x[static_cast<size_t>(b * T + t)] = prev;
      prev = (prev * 3 + 1 + static_cast<int64_t>(g() % 2)) % V;  // learnable-ish sequence
      y[static_cast<size_t>(b * T + t)] = prev;
    }
  }
}

template <class T>
std::vector<double> run(Trainer<T>& tr, int64_t from, int64_t to, int64_t B = 4, int64_t Tn = 12) {
  std::vector<double> losses;
  std::vector<int64_t> x, y;
  for (int64_t s = from; s < to; ++s) {
    batch(5, s, B, Tn, tr.model().config().vocab_size, x, y);
    losses.push_back(
        tr.step(HostView<const int64_t>(x.data(), {B, Tn}), HostView<const int64_t>(y.data(), {B, Tn})).loss);
  }
  return losses;
}

TrainerConfig tcfg() {
  TrainerConfig t;
  t.adamw.lr = 3e-3;
  t.schedule = LrSchedule{3, 20, LrDecay::cosine, 0.1};
  t.grad_clip = 1.0;
  return t;
}

}  // namespace

TEST_CASE("AdamW matches the reference update with bias correction and decoupled decay", "[train]") {
  ParamTable table;
  table.add("w", {2, 2});
  table.add("norm.weight", {2});
  AdamWConfig c;
  c.lr = 0.1;
  c.beta1 = 0.9;
  c.beta2 = 0.99;
  c.eps = 1e-8;
  c.weight_decay = 0.5;
  AdamW<double> opt(table, c);
  std::vector<double> p(static_cast<size_t>(table.total()), 1.0), g(p.size(), 0.0);
  const int64_t nw = table.at("norm.weight").offset;
  for (int64_t i = 0; i < 4; ++i) g[static_cast<size_t>(i)] = 0.1 * double(i + 1);
  g[static_cast<size_t>(nw)] = -0.2;
  double m = 0, v = 0, ref = 1.0, refn = 1.0, mn = 0, vn = 0;
  for (int t = 1; t <= 3; ++t) {
    opt.step(p.data(), g.data(), c.lr);
    m = 0.9 * m + 0.1 * 0.3, v = 0.99 * v + 0.01 * 0.09;
    ref = ref * (1 - c.lr * c.weight_decay) -
          c.lr * (m / (1 - std::pow(0.9, t))) / (std::sqrt(v / (1 - std::pow(0.99, t))) + 1e-8);
    mn = 0.9 * mn + 0.1 * -0.2, vn = 0.99 * vn + 0.01 * 0.04;
    refn = refn - c.lr * (mn / (1 - std::pow(0.9, t))) / (std::sqrt(vn / (1 - std::pow(0.99, t))) + 1e-8);
  }
  CHECK(p[2] == Approx(ref).epsilon(1e-12));
  CHECK(p[static_cast<size_t>(nw)] == Approx(refn).epsilon(1e-12));  // no decay on norm weights
}

TEST_CASE("a batch without rows or positions is refused", "[train]") {
  ModelConfig c = retnet::test::small_model_config();
  Model<double> m(c);
  Trainer<double> tr(m, {});
  std::vector<int64_t> none;
  for (const Shape s : {Shape{0, 4}, Shape{2, 0}}) {
    HostView<const int64_t> x(none.data(), s);
    REQUIRE_THROWS_WITH(tr.step(x, x), Catch::Contains("at least one row and one position"));
  }
}

TEST_CASE("learning-rate schedule: warm-up then cosine or linear decay", "[train]") {
  LrSchedule s{10, 110, LrDecay::cosine, 0.1};
  CHECK(s.factor(0) == Approx(0.1));
  CHECK(s.factor(9) == Approx(1.0));
  CHECK(s.factor(10) == Approx(1.0));
  CHECK(s.factor(60) == Approx(0.55));
  CHECK(s.factor(110) == Approx(0.1));
  CHECK(s.factor(500) == Approx(0.1));
  LrSchedule l{0, 100, LrDecay::linear, 0.0};
  CHECK(l.factor(25) == Approx(0.75));
  CHECK(LrSchedule{5, 100, LrDecay::constant, 0.0}.factor(50) == 1.0);
}

TEST_CASE("gradient accumulation equals the full-batch gradient", "[train]") {
  Model<double> m(cfg());
  m.init_torchscale(1);
  TrainerConfig a = tcfg(), b = tcfg();
  b.accumulation_steps = 2;
  Trainer<double> ta(m, a), tb(m, b);
  std::vector<int64_t> x, y;
  batch(1, 0, 4, 10, 17, x, y);
  y[3] = kIgnoreIndex;
  HostView<const int64_t> xv(x.data(), {4, 10}), yv(y.data(), {4, 10});
  const LossSum la = ta.compute_gradients(xv, yv), lb = tb.compute_gradients(xv, yv);
  CHECK(la.sum == Approx(lb.sum).epsilon(1e-12));
  CHECK(la.count == 39);
  for (int64_t i = 0; i < ta.grads().size(); ++i)
    REQUIRE(ta.grads().data()[i] == Approx(tb.grads().data()[i]).margin(1e-14));
}

TEST_CASE("training is deterministic, the loss falls, and clipping bounds the update", "[train]") {
  auto once = [] {
    Model<float> m(cfg());
    m.init_torchscale(2);
    Trainer<float> tr(m, tcfg());
    return run(tr, 0, 20);
  };
  const auto a = once(), b = once();
  CHECK(a == b);
  CHECK(a.back() < a.front() - 0.5);
  Model<double> m(cfg());
  m.init_torchscale(2);
  TrainerConfig t = tcfg();
  t.grad_clip = 1e-3;
  Trainer<double> tr(m, t);
  std::vector<int64_t> x, y;
  batch(1, 0, 2, 8, 17, x, y);
  const StepStats st = tr.step(HostView<const int64_t>(x.data(), {2, 8}), HostView<const int64_t>(y.data(), {2, 8}));
  CHECK(st.grad_norm > 1e-3);
  CHECK(st.lr == Approx(3e-3 / 3));
}

TEST_CASE("resuming from a training checkpoint continues with the same losses", "[train][checkpoint]") {
  const auto dir = std::filesystem::temp_directory_path() / ("retnet_ckpt_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "train.safetensors").string();
  TrainerConfig t = tcfg();
  t.segment_length = 5;  // also exercises segmented training
  std::vector<double> full;
  {
    Model<float> m(cfg());
    m.init_torchscale(3);
    Trainer<float> tr(m, t);
    full = run(tr, 0, 12);
  }
  std::vector<double> resumed;
  {
    Model<float> m(cfg());
    m.init_torchscale(3);
    Trainer<float> tr(m, t);
    resumed = run(tr, 0, 5);
    save_training_checkpoint(path, tr, /*data_position=*/5 * 4 * 12, {{"note", "test"}});
  }
  {
    Model<float> m(cfg());  // fresh parameters: everything must come from the file
    Trainer<float> tr(m, t);
    const TrainingCheckpointInfo info = load_training_checkpoint(path, tr);
    CHECK(info.step == 5);
    CHECK(info.data_position == 240);
    CHECK(info.metadata.at("note") == "test");
    const auto rest = run(tr, info.step, 12);
    resumed.insert(resumed.end(), rest.begin(), rest.end());
  }
  CHECK(resumed == full);
  // a different configuration is rejected and leaves the model untouched
  ModelConfig other = cfg();
  other.decoder_ffn_embed_dim = 32;
  Model<float> m(other);
  Trainer<float> tr(m, t);
  CHECK_THROWS_AS(load_training_checkpoint(path, tr), Error);
  CHECK(m.params()[0] == 0.f);
  // a truncated file is rejected
  {
    const auto size = std::filesystem::file_size(path);
    std::filesystem::resize_file(path, size - 10);
    Model<float> m2(cfg());
    Trainer<float> tr2(m2, t);
    CHECK_THROWS_AS(load_training_checkpoint(path, tr2), Error);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("with dropout, accumulation equals the full batch and resuming continues with the same losses",
          "[train][checkpoint][dropout]") {
  ModelConfig c = cfg();
  c.dropout = 0.1, c.activation_dropout = 0.1, c.drop_path_rate = 0.2;
  // micro-batches see the masks of the full batch (masks follow global rows)
  {
    Model<double> m(c);
    m.init_torchscale(1);
    TrainerConfig b = tcfg();
    b.accumulation_steps = 2;
    Trainer<double> ta(m, tcfg()), tb(m, b);
    std::vector<int64_t> x, y;
    batch(1, 0, 4, 10, 17, x, y);
    HostView<const int64_t> xv(x.data(), {4, 10}), yv(y.data(), {4, 10});
    const LossSum la = ta.compute_gradients(xv, yv), lb = tb.compute_gradients(xv, yv);
    CHECK(la.sum == Approx(lb.sum).epsilon(1e-12));
    for (int64_t i = 0; i < ta.grads().size(); ++i)
    REQUIRE(ta.grads().data()[i] == Approx(tb.grads().data()[i]).margin(1e-14));
  }
  const std::string path = retnet::test::temp_path("dropout_train.safetensors");
  TrainerConfig t = tcfg();
  t.segment_length = 5;
  t.accumulation_steps = 2;
  t.dropout_seed = 99;
  auto train = [&](const ModelConfig& mc, const TrainerConfig& tc, int64_t steps) {
    Model<float> m(mc);
    m.init_torchscale(3);
    Trainer<float> tr(m, tc);
    return run(tr, 0, steps);
  };
  const std::vector<double> full = train(c, t, 10);
  std::vector<double> resumed;
  {
    Model<float> m(c);
    m.init_torchscale(3);
    Trainer<float> tr(m, t);
    resumed = run(tr, 0, 4);
    save_training_checkpoint(path, tr, 0);
  }
  {
    Model<float> m(c);
    Trainer<float> tr(m, t);
    const TrainingCheckpointInfo info = load_training_checkpoint(path, tr);
    CHECK(info.config.dropout == 0.1);
    CHECK(info.config.drop_path_rate == 0.2);
    const auto rest = run(tr, info.step, 10);
    resumed.insert(resumed.end(), rest.begin(), rest.end());
  }
  CHECK(resumed == full);
  // dropout is really on: the losses differ from the run without it and depend on the seed
  CHECK(train(cfg(), t, 10) != full);
  TrainerConfig other_seed = t;
  other_seed.dropout_seed = 100;
  CHECK(train(c, other_seed, 10) != full);
}
