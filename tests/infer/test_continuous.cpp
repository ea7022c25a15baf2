// Continuous batching and the row-wise state calls on the CPU: the same tokens as infer::generate whatever the slot
// count, per-prompt lengths and stop tokens, prefill_rows and reset_rows against whole-state prefill, and bad input.
#include <catch2/catch.hpp>
#include <random>

#include "retnet/infer/continuous.hpp"
#include "retnet/retnet.hpp"
#include "test_util.hpp"

using namespace retnet;
using retnet::test::error_of;

namespace {

ModelConfig cont_config() {
  ModelConfig c;
  c.decoder_embed_dim = 16;
  c.decoder_value_embed_dim = 24;
  c.decoder_retention_heads = 2;
  c.decoder_ffn_embed_dim = 20;
  c.decoder_layers = 2;
  c.vocab_size = 30;
  c.recurrent_chunk_size = 4;
  c.activation_fn = "swish";
  return c;
}

void randomise(Model<double>& m, uint64_t seed) {
  m.init_torchscale(seed);
  std::mt19937_64 g(seed + 1);
  std::normal_distribution<double> n(0.0, 0.1);
  for (const auto& p : m.param_table().entries())
    for (int64_t i = 0; i < p.numel(); ++i) m.params()[p.offset + i] += n(g);
}

infer::ContinuousOptions slots_of(int64_t slots, std::vector<int64_t> max_new = {}) {
  infer::ContinuousOptions o;
  o.slots = slots;
  o.max_new = std::move(max_new);
  return o;
}

}  // namespace

TEST_CASE("continuous batching gives infer::generate's tokens for any slot count", "[infer][continuous]") {
  Model<double> m(cont_config());
  randomise(m, 31);
  const std::vector<std::vector<int64_t>> prompts{
      {1, 2, 3, 4, 5}, {7}, {8, 9, 10}, {11, 12, 13, 14, 15, 16, 17, 18, 19}, {2, 2}};
  for (const SamplingOptions so : {SamplingOptions{.temperature = 0}, SamplingOptions{.temperature = 0.9, .seed = 4},
                                   SamplingOptions{.temperature = 1.2, .top_k = 5, .top_p = 0.9, .seed = 8}}) {
    const infer::GenerateOptions opt{.max_new_tokens = 10, .sampling = so};
    const auto want = infer::generate(m, prompts, opt);
    for (int64_t slots : {1, 2, 5, 9}) {
      std::vector<int64_t> count(prompts.size(), 0);
      const auto got = infer::generate_continuous(m, prompts, opt, slots_of(slots),
                                                  [&](int64_t p, int64_t) { ++count[static_cast<size_t>(p)]; });
      INFO("slots " << slots << " temperature " << so.temperature);
      CHECK(got == want);
      for (size_t p = 0; p < prompts.size(); ++p) CHECK(count[p] == 10);
    }
  }
  // Per-prompt lengths (0 skips a prompt) and a stop token: each sequence is a prefix of its unlimited one.
  const infer::GenerateOptions greedy{.max_new_tokens = 10, .sampling = {.temperature = 0}};
  const auto full = infer::generate(m, prompts, greedy);
  const auto part = infer::generate_continuous(m, prompts, greedy, slots_of(2, {3, 0, 10, 1, 7}));
  const std::vector<size_t> len{3, 0, 10, 1, 7};
  for (size_t p = 0; p < prompts.size(); ++p)
    CHECK(part[p] == std::vector<int64_t>(full[p].begin(), full[p].begin() + static_cast<std::ptrdiff_t>(len[p])));
  const int64_t stop = full[0][1];
  infer::GenerateOptions stopping = greedy;
  stopping.stop_token = stop;
  CHECK(infer::generate_continuous(m, prompts, stopping, slots_of(2)) == infer::generate(m, prompts, stopping));
}

TEST_CASE("prefill_rows and reset_rows work on a state's rows alone", "[infer][continuous]") {
  Model<double> m(cont_config());
  randomise(m, 32);
  const int64_t V = m.config().vocab_size;
  const std::vector<int64_t> a{1, 2, 3, 4, 5, 6}, b{9, 8, 7, 6, 5, 4};
  std::vector<int64_t> both(a);
  both.insert(both.end(), b.begin(), b.end());
  auto whole = m.make_state(2);
  const Tensor<double> lw = m.prefill(HostView<const int64_t>(both.data(), {2, 6}), whole);
  auto rows = m.make_state(3);
  m.prefill_rows(HostView<const int64_t>(b.data(), {1, 6}), rows, 2);
  m.prefill_rows(HostView<const int64_t>(a.data(), {1, 6}), rows, 0);
  CHECK(rows.positions == std::vector<int64_t>{6, 0, 6});
  const int64_t kv_row = whole.kv[0].numel() / 2;
  for (size_t l = 0; l < whole.kv.size(); ++l)
    for (int64_t i = 0; i < kv_row; ++i) {
      CHECK(rows.kv[l][i] == Approx(whole.kv[l][i]).epsilon(1e-12));
      CHECK(rows.kv[l][2 * kv_row + i] == Approx(whole.kv[l][kv_row + i]).epsilon(1e-12));
      CHECK(rows.kv[l][kv_row + i] == 0);
    }
  for (int64_t v = 0; v < V; ++v) {
    CHECK(rows.logits()[v] == Approx(lw[v]).epsilon(1e-12));
    CHECK(rows.logits()[2 * V + v] == Approx(lw[V + v]).epsilon(1e-12));
  }
  // Continuing a row's prompt in two pieces equals one piece.
  auto split = m.make_state(1);
  m.prefill_rows(HostView<const int64_t>(a.data(), {1, 2}), split, 0);
  m.prefill_rows(HostView<const int64_t>(a.data() + 2, {1, 4}), split, 0);
  for (int64_t i = 0; i < kv_row; ++i) CHECK(split.kv[0][i] == Approx(whole.kv[0][i]).epsilon(1e-10));
  // reset_rows clears a row back to a new sequence.
  m.reset_rows(rows, 2, 1);
  CHECK(rows.positions == std::vector<int64_t>{6, 0, 0});
  for (int64_t i = 0; i < kv_row; ++i) CHECK(rows.kv[0][2 * kv_row + i] == 0);
  // step_enqueue with the ids in the state's buffer equals step().
  auto s1 = m.make_state(2), s2 = m.make_state(2);
  m.prefill(HostView<const int64_t>(both.data(), {2, 6}), s1);
  m.prefill(HostView<const int64_t>(both.data(), {2, 6}), s2);
  const std::vector<int64_t> next{3, 4};
  const Tensor<double> l1 = m.step(HostView<const int64_t>(next.data(), {2}), s1);
  s2.tokens()[0] = 3, s2.tokens()[1] = 4;
  m.step_enqueue(s2);
  for (int64_t i = 0; i < 2 * V; ++i) CHECK(s2.logits()[i] == l1[i]);
  CHECK(s2.device_positions()[0] == 7);

  CHECK(error_of([&] {
          m.prefill_rows(HostView<const int64_t>(a.data(), {1, 6}), rows, 3);
        }).find("rows [3, 4)") != std::string::npos);
  CHECK(error_of([&] { m.reset_rows(rows, -1, 1); }).find("rows [-1, 0)") != std::string::npos);
  Model<double>::State none;
  CHECK(error_of([&] { m.step(HostView<const int64_t>(next.data(), {2}), none); }).find("not made by make_state") !=
        std::string::npos);
  const infer::GenerateOptions g{};
  CHECK(error_of([&] { infer::generate_continuous(m, {{1, 30}}, g); }).find("token 30") != std::string::npos);
  CHECK(error_of([&] { infer::generate_continuous(m, {{1}}, g, slots_of(0)); }).find("slots = 0") != std::string::npos);
  CHECK(error_of([&] {
          infer::generate_continuous(m, {{1}}, g, slots_of(1, {1, 2}));
        }).find("2 max_new values") != std::string::npos);
  infer::ContinuousOptions pen = slots_of(1);
  pen.repetition_penalty = 1.2;
  CHECK(error_of([&] { infer::generate_continuous(m, {{1}}, g, pen); }).find("repetition_penalty") !=
        std::string::npos);
}
