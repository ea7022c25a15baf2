// Generation on the GPU against the CPU: greedy tokens after prompts of different lengths decoded in one batch
// (with and without slot refills), the state after prefill, the graph-replayed step against the plain step,
// the sampling kernels' rules and reproducibility, state files across devices, and rejected inputs.
#include <cuda_runtime.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "generate_reference.hpp"
#include "gpu_test.hpp"
#include "model_reference.hpp"
#include "retnet/cuda.cuh"
#include "retnet/cuda/decode_graph.cuh"
#include "retnet/cuda/generate.cuh"
#include "retnet/cuda/sampling.cuh"
#include "retnet/infer/continuous.hpp"

namespace {

using namespace retnet;
using retnet_test::gpu;
using retnet_test::have_gpu;
using GpuModel = Model<float, Cuda>;

// Two layers, heads of 64, an odd vocabulary; a chunk of 32 so the 300-token prompt spans many chunks.
ModelConfig gen_config() {
  ModelConfig c;
  c.decoder_embed_dim = 128;
  c.decoder_value_embed_dim = 128;
  c.decoder_retention_heads = 2;
  c.decoder_ffn_embed_dim = 192;
  c.decoder_layers = 2;
  c.vocab_size = 97;
  c.recurrent_chunk_size = 32;
  c.activation_fn = "swish";
  return c;
}

std::vector<int64_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int64_t> d(0, vocab - 1);
  std::vector<int64_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = d(g);
  return t;
}

GpuModel gpu_model(const ModelConfig& cfg, const std::vector<float>& params) {
  GpuModel m(cfg, gpu());
  m.params_from_host(params.data(), static_cast<int64_t>(params.size()));
  return m;
}

// n device values of T, as floats on the host, once the work on the tests' stream is done (the stream does not
// synchronise with the legacy default stream that cudaMemcpy runs on).
template <class T>
std::vector<float> to_host(const T* d, int64_t n) {
  std::vector<T> h(static_cast<size_t>(n));
  RETNET_CUDA_CHECK(cudaStreamSynchronize(gpu().stream));
  RETNET_CUDA_CHECK(cudaMemcpy(h.data(), d, sizeof(T) * h.size(), cudaMemcpyDeviceToHost));
  return std::vector<float>(h.begin(), h.end());
}

// max |a - b| over max(1, max |b|).
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double scale = 1, d = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
    d = std::max(d, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  }
  return d / scale;
}

// Continuous batching options (no designated initializers: nvcc's front end rewrites them into positional ones,
// which -Wmissing-field-initializers rejects).
infer::ContinuousOptions slots_of(int64_t slots, std::vector<int64_t> max_new = {}, double penalty = 1.0) {
  infer::ContinuousOptions o;
  o.slots = slots;
  o.max_new = std::move(max_new);
  o.repetition_penalty = penalty;
  return o;
}

const std::vector<int64_t> kPromptLengths{1, 37, 300};

std::vector<std::vector<int64_t>> test_prompts(int64_t vocab) {
  std::vector<std::vector<int64_t>> p;
  for (size_t i = 0; i < kPromptLengths.size(); ++i) p.push_back(random_tokens(kPromptLengths[i], vocab, 100 + i));
  return p;
}

}  // namespace

TEST_CASE("GPU greedy generation equals the CPU's after prompts of 1, 37 and 300 tokens", "[cuda][generate]") {
  if (!have_gpu()) return;
  const ModelConfig cfg = gen_config();
  const std::vector<float> params = retnet_test::ref_init_params(cfg, 11);
  const auto prompts = test_prompts(cfg.vocab_size);
  const int64_t n = 64;
  const auto want = retnet_test::ref_greedy(cfg, params, prompts, n);
  GpuModel m = gpu_model(cfg, params);
  infer::GenerateOptions g;
  g.max_new_tokens = n;
  g.sampling.greedy = true;
  // 3 slots: all prompts in one batch at different positions; 2 slots: the third prompt takes a freed slot.
  for (int64_t slots : {3, 2, 1}) {
    const auto got = infer::generate_continuous(m, prompts, g, slots_of(slots));
    for (size_t p = 0; p < prompts.size(); ++p) {
      INFO("slots " << slots << ", prompt of " << prompts[p].size() << " tokens");
      CHECK(got[p] == want[p]);
    }
  }
}

TEST_CASE("GPU prefill leaves the CPU's state and logits", "[cuda][generate]") {
  if (!have_gpu()) return;
  const ModelConfig cfg = gen_config();
  const std::vector<float> params = retnet_test::ref_init_params(cfg, 12);
  const auto prompts = test_prompts(cfg.vocab_size);
  GpuModel m = gpu_model(cfg, params);
  const int64_t B = static_cast<int64_t>(prompts.size()), V = cfg.vocab_size, H = cfg.decoder_retention_heads;
  const int64_t kv_row = H * cfg.key_dim() * cfg.value_dim();
  auto st = m.make_state(B);
  // Rows prefilled one at a time, with different lengths, in the same state.
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[static_cast<size_t>(b)];
    m.prefill_rows(HostView<const int64_t>(p.data(), {1, static_cast<int64_t>(p.size())}), st, b);
  }
  const std::vector<float> logits = to_host(st.logits(), B * V);
  for (int64_t b = 0; b < B; ++b) {
    INFO("prompt of " << prompts[static_cast<size_t>(b)].size() << " tokens");
    CHECK(st.positions[static_cast<size_t>(b)] == static_cast<int64_t>(prompts[static_cast<size_t>(b)].size()));
    const auto ref = retnet_test::ref_prefill(cfg, params, prompts[static_cast<size_t>(b)]);
    for (size_t l = 0; l < ref.kv.size(); ++l) {
      const std::vector<float> kv = to_host(st.kv[l].data() + b * kv_row, kv_row);
      const std::vector<float> sc = to_host(st.scale[l].data() + b * H, H);
      CHECK(rel_diff(kv, ref.kv[l]) <= 1e-5);
      CHECK(rel_diff(sc, ref.scale[l]) <= 1e-5);
    }
    const std::vector<float> row(logits.begin() + b * V, logits.begin() + (b + 1) * V);
    CHECK(rel_diff(row, ref.logits) <= 1e-4);
  }
  // The whole-batch prefill (equal lengths) and its host copy of the logits.
  const auto p37 = random_tokens(2 * 37, V, 7);
  auto s2 = m.make_state(2);
  const Tensor<float> l2 = m.prefill(HostView<const int64_t>(p37.data(), {2, 37}), s2);
  for (int64_t b = 0; b < 2; ++b) {
    const std::vector<int64_t> one(p37.begin() + b * 37, p37.begin() + (b + 1) * 37);
    const auto ref = retnet_test::ref_prefill(cfg, params, one);
    const std::vector<float> row(l2.data() + b * V, l2.data() + (b + 1) * V);
    CHECK(rel_diff(row, ref.logits) <= 1e-4);
    CHECK(rel_diff(to_host(s2.kv[0].data() + b * kv_row, kv_row), ref.kv[0]) <= 1e-5);
  }
}

TEST_CASE("the graph-replayed decoding step gives the plain step's logits", "[cuda][generate]") {
  if (!have_gpu()) return;
  const ModelConfig cfg = gen_config();
  const std::vector<float> params = retnet_test::ref_init_params(cfg, 13);
  GpuModel m = gpu_model(cfg, params);
  const int64_t B = 3, V = cfg.vocab_size;
  auto plain = m.make_state(B), replayed = m.make_state(B);
  DecodeGraph<float> graph(m, replayed);  // sets the handle's workspace for both states' products
  const auto prompts = test_prompts(V);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[static_cast<size_t>(b)];
    const HostView<const int64_t> v(p.data(), {1, static_cast<int64_t>(p.size())});
    m.prefill_rows(v, plain, b);
    m.prefill_rows(v, replayed, b);
  }
  Buffer<int64_t, Cuda> ids(gpu(), B);
  for (int s = 0; s < 6; ++s) {
    const std::vector<int64_t> next = random_tokens(B, V, 300 + static_cast<uint64_t>(s));
    ids.copy_from_host(next.data(), B);
    m.step(DeviceView<const int64_t>(ids.data(), {B}), plain);
    RETNET_CUDA_CHECK(
        cudaMemcpyAsync(replayed.tokens(), next.data(), sizeof(int64_t) * B, cudaMemcpyHostToDevice, gpu().stream));
    graph.replay();
    const std::vector<float> a = to_host(plain.logits(), B * V), b = to_host(replayed.logits(), B * V);
    INFO("step " << s << (graph.captured() ? " (graph)" : " (direct)"));
    CHECK(rel_diff(b, a) <= 1e-6);
    CHECK(replayed.positions == plain.positions);
  }
  CHECK(graph.captured());
  std::vector<int64_t> dev_pos(static_cast<size_t>(B));
  RETNET_CUDA_CHECK(cudaStreamSynchronize(gpu().stream));
  RETNET_CUDA_CHECK(
      cudaMemcpy(dev_pos.data(), replayed.device_positions(), sizeof(int64_t) * B, cudaMemcpyDeviceToHost));
  CHECK(dev_pos == replayed.positions);
}

TEST_CASE("bf16 GPU decoding: prefill and steps within bf16 rounding of the CPU; the graph replays the plain step",
          "[cuda][generate][bf16]") {
  if (!have_gpu()) return;
  using bf16 = __nv_bfloat16;
  const ModelConfig cfg = gen_config();
  std::vector<float> params = retnet_test::ref_init_params(cfg, 16);
  for (float& p : params) p = __bfloat162float(__float2bfloat16_rn(p));  // both sides hold the same weights
  Model<bf16, Cuda> m(cfg, gpu());
  const std::vector<bf16> stored(params.begin(), params.end());
  m.params_from_host(stored.data(), static_cast<int64_t>(stored.size()));
  const int64_t B = 3, V = cfg.vocab_size, H = cfg.decoder_retention_heads;
  const int64_t kv_row = H * cfg.key_dim() * cfg.value_dim();
  const auto prompts = test_prompts(V);
  auto plain = m.make_state(B), replayed = m.make_state(B);
  DecodeGraph<bf16> graph(m, replayed);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[static_cast<size_t>(b)];
    const HostView<const int64_t> v(p.data(), {1, static_cast<int64_t>(p.size())});
    m.prefill_rows(v, plain, b);
    m.prefill_rows(v, replayed, b);
  }
  // The state stays in float: after prefill it is the CPU's within the rounding of bf16 activations.
  const std::vector<float> logits = to_host(plain.logits(), B * V);
  for (int64_t b = 0; b < B; ++b) {
    INFO("prompt of " << prompts[static_cast<size_t>(b)].size() << " tokens");
    const auto ref = retnet_test::ref_prefill(cfg, params, prompts[static_cast<size_t>(b)]);
    CHECK(rel_diff(to_host(plain.kv[0].data() + b * kv_row, kv_row), ref.kv[0]) <= 3e-2);
    CHECK(rel_diff(to_host(plain.kv.back().data() + b * kv_row, kv_row), ref.kv.back()) <= 3e-2);
    const std::vector<float> row(logits.begin() + b * V, logits.begin() + (b + 1) * V);
    CHECK(rel_diff(row, ref.logits) <= 5e-2);
  }
  Buffer<int64_t, Cuda> ids(gpu(), B);
  for (int s = 0; s < 4; ++s) {
    const std::vector<int64_t> next = random_tokens(B, V, 400 + static_cast<uint64_t>(s));
    ids.copy_from_host(next.data(), B);
    m.step(DeviceView<const int64_t>(ids.data(), {B}), plain);
    RETNET_CUDA_CHECK(
        cudaMemcpyAsync(replayed.tokens(), next.data(), sizeof(int64_t) * B, cudaMemcpyHostToDevice, gpu().stream));
    graph.replay();
    INFO("step " << s << (graph.captured() ? " (graph)" : " (direct)"));
    CHECK(to_host(replayed.logits(), B * V) == to_host(plain.logits(), B * V));
  }
  CHECK(graph.captured());
  // Greedy generation runs on bf16 weights and stops at the requested lengths.
  infer::GenerateOptions g;
  g.max_new_tokens = 20;
  g.sampling.greedy = true;
  const auto got = infer::generate_continuous(m, prompts, g, slots_of(2, {20, 5, 12}));
  CHECK(got[0].size() == 20);
  CHECK(got[1].size() == 5);
  CHECK(got[2].size() == 12);
  for (const auto& row : got)
    for (int64_t t : row) CHECK((t >= 0 && t < V));
}

TEST_CASE("GPU sampling: greedy ties, top-k, top-p, penalty, distribution and seeds", "[cuda][generate]") {
  if (!have_gpu()) return;
  const Cuda& ctx = gpu();
  auto run = [&](const std::vector<float>& row, int64_t rows, const SamplingOptions& o, double penalty = 1.0,
                 uint64_t seed = 5, int draws = 1, const std::vector<int64_t>& seen = {}) {
    const int64_t V = static_cast<int64_t>(row.size());
    std::vector<float> all;
    for (int64_t r = 0; r < rows; ++r) all.insert(all.end(), row.begin(), row.end());
    Buffer<float, Cuda> lg(ctx, rows * V);
    lg.copy_from_host(all.data(), rows * V);
    Buffer<int64_t, Cuda> tok(ctx, rows);
    DeviceSampler s(ctx, rows, V, o, penalty);
    for (int64_t r = 0; r < rows; ++r)
      s.reset_row(r, mix_seed(seed, static_cast<uint64_t>(r)), seen.data(), static_cast<int64_t>(seen.size()));
    std::vector<int64_t> out;
    for (int d = 0; d < draws; ++d) {
      s.sample(lg.data(), tok.data(), 0, rows);
      const int64_t* h = s.fetch(tok.data(), 0, rows);
      out.insert(out.end(), h, h + rows);
    }
    return out;
  };
  // Greedy: the lowest id among equal maxima, as the CPU Sampler.
  const std::vector<float> tie{1.f, 3.f, 2.f, 3.f, -1.f};
  CHECK(run(tie, 1, {.greedy = true})[0] == Sampler::argmax(tie.data(), 5));
  CHECK(run(tie, 1, {.temperature = 0})[0] == 1);
  std::vector<float> big(32000);
  std::mt19937_64 g(1);
  std::normal_distribution<float> nd(0.f, 2.f);
  for (auto& x : big) x = nd(g);
  big[20000] = big[777] = 50.f;
  CHECK(run(big, 2, {.greedy = true}) == std::vector<int64_t>{777, 777});
  // top_k = 1 is the arg-max.
  for (int64_t t : run(big, 64, {.temperature = 1.0, .top_k = 1})) CHECK(t == 777);
  // top-k and top-p draw only from the CPU Sampler's support, with its probabilities.
  std::vector<float> small(40);
  for (auto& x : small) x = nd(g);
  small[3] = small[9];  // a tie inside the support
  for (const SamplingOptions& o :
       {SamplingOptions{.temperature = 0.7, .top_k = 5}, SamplingOptions{.temperature = 1.3, .top_p = 0.6},
        SamplingOptions{.temperature = 1.0, .top_k = 8, .top_p = 0.9}, SamplingOptions{.temperature = 1.0}}) {
    const std::vector<double> p = Sampler(o).distribution(small.data(), 40);
    const int64_t rows = 4000;
    const auto drawn = run(small, rows, o, 1.0, 21);
    std::vector<double> freq(40, 0.0);
    for (int64_t t : drawn) {
      REQUIRE(t >= 0);
      REQUIRE(t < 40);
      freq[static_cast<size_t>(t)] += 1.0 / rows;
    }
    for (size_t i = 0; i < 40; ++i) {
      INFO("temperature " << o.temperature << " top_k " << o.top_k << " top_p " << o.top_p << " token " << i);
      if (p[i] == 0) CHECK(freq[i] == 0);
      CHECK(std::abs(freq[i] - p[i]) <= 5 * std::sqrt(p[i] * (1 - p[i]) / rows) + 1e-9);
    }
  }
  // Seeded: the same seeds give the same tokens; each row's stream advances per draw.
  const SamplingOptions so{.temperature = 0.9, .top_k = 50, .top_p = 0.95};
  const auto a = run(big, 8, so, 1.0, 3, 20), b = run(big, 8, so, 1.0, 3, 20), c = run(big, 8, so, 1.0, 4, 20);
  CHECK(a == b);
  CHECK(a != c);
  // Repetition penalty: a seen maximum loses to the next logit.
  const std::vector<float> pen{0.f, 5.f, 4.f, -1.f};
  CHECK(run(pen, 1, {.greedy = true}, 2.0, 0, 1, {1})[0] == 2);
  CHECK(run(pen, 1, {.greedy = true}, 2.0, 0, 1, {2})[0] == 1);
  // Non-finite logits are reported on the host.
  const std::vector<float> nan{0.f, std::nanf(""), 1.f};
  CHECK_THROWS_WITH(run(nan, 1, {.greedy = true}), Catch::Contains("row 0") && Catch::Contains("not finite"));
}

TEST_CASE("seeded GPU generation reproduces itself; states move between devices", "[cuda][generate]") {
  if (!have_gpu()) return;
  const ModelConfig cfg = gen_config();
  const std::vector<float> params = retnet_test::ref_init_params(cfg, 14);
  GpuModel m = gpu_model(cfg, params);
  const auto prompts = test_prompts(cfg.vocab_size);
  infer::GenerateOptions g;
  g.max_new_tokens = 40;
  g.sampling = {.temperature = 0.8, .top_k = 40, .top_p = 0.95, .seed = 9};
  const auto a = infer::generate_continuous(m, prompts, g, slots_of(2, {40, 10, 25}));
  const auto b = infer::generate_continuous(m, prompts, g, slots_of(2, {40, 10, 25}));
  CHECK(a == b);
  CHECK(a[1].size() == 10);
  CHECK(a[2].size() == 25);
  const auto c = infer::generate_continuous(m, prompts, g, slots_of(2, {40, 10, 25}, 1.3));
  CHECK(c == infer::generate_continuous(m, prompts, g, slots_of(2, {40, 10, 25}, 1.3)));

  // A device state saved, restored on the GPU and on the CPU: the same next logits.
  auto st = m.make_state(3);
  for (int64_t b2 = 0; b2 < 3; ++b2) {
    const auto& p = prompts[static_cast<size_t>(b2)];
    m.prefill_rows(HostView<const int64_t>(p.data(), {1, static_cast<int64_t>(p.size())}), st, b2);
  }
  const std::string path = (std::filesystem::temp_directory_path() / "retnet_gpu_state.safetensors").string();
  infer::save_state(st, path);
  auto back = infer::load_state(m, path);
  CHECK(back.positions == st.positions);
  const std::vector<int64_t> next{1, 2, 3};
  const Tensor<float> l1 = m.step(HostView<const int64_t>(next.data(), {3}), st);
  const Tensor<float> l2 = m.step(HostView<const int64_t>(next.data(), {3}), back);
  CHECK(l1.storage() == l2.storage());
  CHECK(rel_diff(retnet_test::ref_step_from_file(cfg, params, path, next), l1.storage()) <= 1e-4);
  std::filesystem::remove(path);
}

TEST_CASE("GPU generation rejects bad inputs on the host", "[cuda][generate]") {
  if (!have_gpu()) return;
  const ModelConfig cfg = gen_config();
  GpuModel m = gpu_model(cfg, retnet_test::ref_init_params(cfg, 15));
  auto st = m.make_state(2);
  const std::vector<int64_t> bad{1, 97};
  CHECK_THROWS_WITH(m.step(HostView<const int64_t>(bad.data(), {2}), st), Catch::Contains("token id 97"));
  CHECK_THROWS_WITH(m.step(HostView<const int64_t>(bad.data(), {1}), st), Catch::Contains("batch 2"));
  const std::vector<int64_t> p{1, 2, 3};
  CHECK_THROWS_WITH(m.prefill_rows(HostView<const int64_t>(p.data(), {1, 3}), st, 2), Catch::Contains("rows [2, 3)"));
  CHECK_THROWS_WITH(m.prefill_rows(HostView<const int64_t>(bad.data(), {1, 2}), st, 0), Catch::Contains("token id 97"));
  CHECK_THROWS_WITH(DeviceSampler(gpu(), 2, 97, {.top_p = 0}), Catch::Contains("top_p = 0"));
  CHECK_THROWS_WITH(DeviceSampler(gpu(), 2, 97, {}, -1.0), Catch::Contains("repetition_penalty = -1"));
  CHECK_THROWS_WITH(DeviceSampler(gpu(), 0, 97, {}), Catch::Contains("rows = 0"));
  infer::GenerateOptions g;
  CHECK_THROWS_WITH(infer::generate_continuous(m, {{1, 200}}, g), Catch::Contains("token 200"));
  CHECK_THROWS_WITH(infer::generate_continuous(m, {{1}}, g, slots_of(0)), Catch::Contains("slots = 0"));
  CHECK_THROWS_WITH(infer::generate_continuous(m, {{1}, {}}, g), Catch::Contains("prompt 1 is empty"));
  Model<float, Cuda>::State none;
  CHECK_THROWS_WITH(m.step(HostView<const int64_t>(p.data(), {0}), none), Catch::Contains("not made by make_state"));
}
