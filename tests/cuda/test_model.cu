// The whole model on the GPU (Model<float, Cuda>, Trainer<float, Cuda>) against the same templates on the CPU:
// logits, loss and every parameter gradient in all three forms, with dropout and segments; a 50-step loss curve;
// an optimizer state moved from the GPU to the CPU continuing the same curve; bit-identical repeated runs.
// bf16 storage (Model<__nv_bfloat16, Cuda>: float gradients, master weights and state) against the CPU within bf16
// rounding; it learns a recall task; its checkpoints are float checkpoints that resume on either precision.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "gpu_test.hpp"
#include "model_reference.hpp"
#include "retnet/cuda.cuh"
#include "retnet/train/checkpoint.hpp"

namespace {

using retnet::Cuda;
using retnet::Form;
using retnet::HostView;
using retnet::ModelConfig;
using retnet_test::ModelCase;

using retnet_test::gpu;
using retnet_test::have_gpu;
using bf16 = __nv_bfloat16;

// Two layers, heads of 64 (the GPU's retention supports 64, 128 and 256), an odd vocabulary, a ragged last chunk.
ModelConfig small_config(bool dropout, bool variant) {
  ModelConfig c;
  c.decoder_embed_dim = 128;
  c.decoder_value_embed_dim = 128;
  c.decoder_retention_heads = 2;
  c.decoder_ffn_embed_dim = 192;
  c.decoder_layers = 2;
  c.vocab_size = 97;
  c.recurrent_chunk_size = 32;
  if (variant) {  // the options beyond torchscale's defaults
    c.activation_fn = "gelu";
    c.ffn_type = "mlp";
    c.norm_type = "layernorm";
    c.layernorm_embedding = true;
    c.no_scale_embedding = false;
    c.share_decoder_input_output_embed = true;
  } else {
    c.activation_fn = "swish";
  }
  if (dropout) {
    c.dropout = 0.1;
    c.activation_dropout = 0.15;
    c.drop_path_rate = 0.2;
  }
  return c;
}

ModelCase make_case(const ModelConfig& cfg, int64_t batch, int64_t length, uint64_t seed) {
  ModelCase c;
  c.cfg = cfg;
  c.params = retnet_test::ref_init_params(cfg, seed);
  c.batch = batch;
  c.length = length;
  std::mt19937_64 gen(seed + 1);
  std::uniform_int_distribution<int64_t> tok(0, cfg.vocab_size - 1);
  for (int64_t i = 0; i < batch * length; ++i) c.tokens.push_back(tok(gen));
  for (int64_t i = 0; i < batch * length; ++i) c.targets.push_back(i % 7 == 3 ? retnet::kIgnoreIndex : tok(gen));
  return c;
}

// The case's model on the GPU, stored in T (bf16: the case's parameters rounded).
template <class T = float>
retnet::Model<T, Cuda> gpu_model(const ModelCase& c) {
  retnet::Model<T, Cuda> m(c.cfg, gpu());
  const std::vector<T> p(c.params.begin(), c.params.end());
  m.params_from_host(p.data(), static_cast<int64_t>(p.size()));
  return m;
}

// The case with its parameters rounded to bf16 (so the bf16 model and the reference hold the same values).
ModelCase rounded_to_bf16(ModelCase c) {
  for (float& p : c.params) p = __bfloat162float(__float2bfloat16_rn(p));
  return c;
}

template <class T>
std::vector<float> to_float(const std::vector<T>& v) {
  return std::vector<float>(v.begin(), v.end());
}

// Largest |a - b| over the largest |b|: a relative error on the tensor's own scale.
double rel_err(const std::vector<float>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double err = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return err / std::max(scale, 1e-30);
}

// Per parameter tensor, so a failure names the tensor.
void check_grads(const retnet::ParamTable& table, const std::vector<float>& got, const std::vector<double>& want,
                 double tol) {
  for (const retnet::ParamInfo& p : table.entries()) {
    const std::vector<float> g(got.begin() + p.offset, got.begin() + p.offset + p.numel());
    const std::vector<double> w(want.begin() + p.offset, want.begin() + p.offset + p.numel());
    INFO("gradient of " << p.name);
    CHECK(rel_err(g, w) < tol);
  }
}

struct Tolerances {
  double logits, loss, grads;
};
constexpr Tolerances kFloat{1e-5, 1e-5, 1e-4}, kBf16{2e-2, 1e-2, 5e-2};

// Case c on the GPU in storage T against the CPU in double, in `form`: the logits (whole sequences without dropout),
// the loss and every parameter gradient (segments of `segment` tokens when > 0; dropout with a fixed key).
template <class T>
void check_against_cpu(const ModelCase& c, Form form, int64_t segment, bool dropout, const Tolerances& tol) {
  auto m = gpu_model<T>(c);
  if (!dropout && !segment) {
    const retnet::Tensor<T> logits = m.forward(HostView<const int64_t>(c.tokens.data(), {c.batch, c.length}), form);
    CHECK(rel_err(to_float(logits.storage()), retnet_test::ref_logits(c, form)) < tol.logits);
  }
  retnet::GradContext<T, Cuda> ctx;
  retnet::Buffer<retnet::grad_t<T>, Cuda> grads(gpu(), m.param_count());
  const int64_t count = retnet::count_targets(c.targets.data(), c.batch * c.length);
  const retnet::DropoutKey key{9, 4, 0};
  const retnet::LossSum l =
      retnet::loss_and_grad(m, ctx, c.tokens.data(), c.targets.data(), c.batch, c.length, form, grads.data(),
                            1.0 / static_cast<double>(count), segment, dropout ? &key : nullptr);
  const retnet_test::RefLossGrad ref = retnet_test::ref_loss_grad(c, form, segment, dropout ? 4 : -1, 9);
  CHECK(l.mean() == Approx(ref.loss).epsilon(tol.loss));
  check_grads(m.param_table(), to_float(grads.to_host()), ref.grads, tol.grads);
}

}  // namespace

TEST_CASE("GPU model: logits, loss and parameter gradients match the CPU", "[model]") {
  if (!have_gpu()) return;
  for (const bool variant : {false, true}) {
    for (const bool dropout : {false, true}) {
      const ModelCase c = make_case(small_config(dropout, variant), 2, 77, 5 + variant + 2 * dropout);
      for (const Form form : {Form::chunkwise, Form::parallel, Form::recurrent}) {
        for (const int64_t segment : {int64_t(0), int64_t(30)}) {
          if (segment && form != Form::chunkwise) continue;
          INFO("variant " << variant << ", dropout " << dropout << ", form " << retnet::to_string(form) << ", segment "
                          << segment);
          check_against_cpu<float>(c, form, segment, dropout, kFloat);
        }
      }
    }
  }
}

TEST_CASE("GPU model with value heads of 512 (fla's default head shape, run as split heads) matches the CPU",
          "[model]") {
  if (!have_gpu()) return;
  ModelConfig cfg = small_config(false, false);
  cfg.decoder_retention_heads = 1;  // key heads of 128, value heads of 512
  cfg.decoder_value_embed_dim = 512;
  for (const auto norm : {retnet::Normalization::raw, retnet::Normalization::torchscale}) {
    cfg.retention_normalization = norm;
    const ModelCase c = make_case(cfg, 2, 50, 41);
    for (const Form form : {Form::chunkwise, Form::parallel, Form::recurrent}) {
      for (const int64_t segment : {int64_t(0), int64_t(20)}) {
        if (segment && form != Form::chunkwise) continue;
        INFO("normalisation " << static_cast<int>(norm) << ", form " << retnet::to_string(form) << ", segment "
                              << segment);
        // torchscale's chunkwise state normaliser spans the whole value head: refused for split heads
        if (norm == retnet::Normalization::torchscale && form == Form::chunkwise)
          CHECK_THROWS_WITH(check_against_cpu<float>(c, form, segment, false, kFloat), Catch::Contains("split heads"));
        else
          check_against_cpu<float>(c, form, segment, false, kFloat);
      }
    }
  }
}

TEST_CASE("GPU model with fla's semantics (grouped k/v heads, RoPE, group-norm weight, no normalisers) matches the CPU",
          "[model][fla]") {
  if (!have_gpu()) return;
  ModelConfig cfg = small_config(false, false);
  cfg.decoder_retention_heads = 4;
  cfg.decoder_key_embed_dim = 256;  // key heads of 64, wider than the hidden size
  cfg.decoder_value_embed_dim = 512;
  cfg.decoder_kv_heads = 2;
  cfg.rotation = "rope";
  cfg.group_norm_weight = true;
  cfg.retention_normalization = retnet::Normalization::raw;
  ModelCase c = make_case(cfg, 2, 45, 51);
  // a group-norm weight away from 1, so its gradient and its use both show
  std::mt19937_64 gen(3);
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  const retnet::Model<float, Cuda> layout(cfg, gpu());
  for (const retnet::ParamInfo& p : layout.param_table().entries())
    if (p.name.find("group_norm") != std::string::npos)
      for (int64_t i = 0; i < p.numel(); ++i) c.params[static_cast<size_t>(p.offset + i)] = u(gen);
  for (const Form form : {Form::chunkwise, Form::parallel, Form::recurrent}) {
    INFO("form " << retnet::to_string(form));
    check_against_cpu<float>(c, form, 0, false, kFloat);
  }
}

TEST_CASE("GPU trainer: 50 steps follow the CPU's loss curve; its optimizer state resumes on the CPU", "[model]") {
  if (!have_gpu()) return;
  const ModelCase c = make_case(small_config(true, false), 4, 64, 21);
  retnet_test::TrainOptions o;
  o.lr = 3e-3;
  o.warmup = 5;
  o.accumulation = 2;
  o.dropout_seed = 3;
  retnet_test::TrainState cpu_state{c.params, {}, {}, 0};
  const std::vector<double> want = retnet_test::ref_train(c, o, 50, cpu_state);

  auto m = gpu_model(c);
  const retnet::TrainerConfig tc = retnet_test::trainer_config(o);
  retnet::Trainer<float, Cuda> tr(m, tc);
  const HostView<const int64_t> x(c.tokens.data(), {c.batch, c.length}), y(c.targets.data(), {c.batch, c.length});
  std::vector<double> got;
  for (int s = 0; s < 50; ++s) got.push_back(tr.step(x, y).loss);
  for (size_t s = 0; s < got.size(); ++s) {
    INFO("step " << s);
    CHECK(std::abs(got[s] - want[s]) < 1e-3);
  }
  CHECK(got.back() < got.front() - 1.0);  // it learns

  // The GPU's parameters and moments, moved to a CPU trainer, give the GPU's next loss.
  retnet_test::TrainState moved{m.params_to_host(), tr.optimizer().exp_avg_buffer().to_host(),
                                tr.optimizer().exp_avg_sq_buffer().to_host(), tr.step_count()};
  const double next_gpu = tr.step(x, y).loss;
  const std::vector<double> next_cpu = retnet_test::ref_train(c, o, 1, moved);
  CHECK(std::abs(next_cpu[0] - next_gpu) < 1e-4);
}

TEST_CASE("GPU trainer: the same run gives the same bits twice", "[model]") {
  if (!have_gpu()) return;
  const ModelCase c = make_case(small_config(true, false), 2, 96, 33);
  auto run = [&] {
    auto m = gpu_model(c);
    retnet::TrainerConfig tc;
    tc.adamw.lr = 1e-3;
    tc.segment_length = 40;
    retnet::Trainer<float, Cuda> tr(m, tc);
    const HostView<const int64_t> x(c.tokens.data(), {c.batch, c.length}), y(c.targets.data(), {c.batch, c.length});
    for (int s = 0; s < 3; ++s) tr.step(x, y);
    return m.params_to_host();
  };
  const std::vector<float> a = run(), b = run();
  CHECK(a == b);
}

TEST_CASE("bf16 GPU model: logits, loss and parameter gradients match the CPU within bf16 rounding", "[model][bf16]") {
  if (!have_gpu()) return;
  for (const bool variant : {false, true}) {
    for (const bool dropout : {false, true}) {
      const ModelCase c = rounded_to_bf16(make_case(small_config(dropout, variant), 2, 77, 5 + variant + 2 * dropout));
      for (const Form form : {Form::chunkwise, Form::parallel, Form::recurrent}) {
        for (const int64_t segment : {int64_t(0), int64_t(30)}) {
          if (segment && form != Form::chunkwise) continue;
          INFO("variant " << variant << ", dropout " << dropout << ", form " << retnet::to_string(form) << ", segment "
                          << segment);
          check_against_cpu<bf16>(c, form, segment, dropout, kBf16);
        }
      }
    }
  }
}

TEST_CASE("bf16 GPU trainer: the CPU's loss curve within bf16 noise; float master weights; checkpoints",
          "[model][bf16]") {
  if (!have_gpu()) return;
  const ModelCase c = rounded_to_bf16(make_case(small_config(true, false), 4, 64, 21));
  retnet_test::TrainOptions o;
  o.lr = 3e-3;
  o.warmup = 5;
  o.accumulation = 2;
  o.dropout_seed = 3;
  retnet_test::TrainState cpu_state{c.params, {}, {}, 0};
  const std::vector<double> want = retnet_test::ref_train(c, o, 50, cpu_state);

  auto m = gpu_model<bf16>(c);
  const retnet::TrainerConfig tc = retnet_test::trainer_config(o);
  retnet::Trainer<bf16, Cuda> tr(m, tc);
  const HostView<const int64_t> x(c.tokens.data(), {c.batch, c.length}), y(c.targets.data(), {c.batch, c.length});
  std::vector<double> got;
  for (int s = 0; s < 50; ++s) got.push_back(tr.step(x, y).loss);
  for (size_t s = 0; s < got.size(); ++s) {
    INFO("step " << s << ": bf16 " << got[s] << ", CPU float " << want[s]);
    CHECK(std::abs(got[s] - want[s]) < 0.05 * std::max(1.0, want[s]));
  }
  CHECK(got.back() < got.front() - 1.0);

  // The parameters are the bf16 rounding of the float master weights.
  const std::vector<float> master = tr.optimizer().master_buffer().to_host();
  const std::vector<bf16> params = m.params_to_host();
  bool rounded = true;
  for (size_t i = 0; i < master.size(); ++i)
    rounded = rounded && __bfloat162float(params[i]) == __bfloat162float(__float2bfloat16_rn(master[i]));
  CHECK(rounded);

  // A checkpoint holds the master weights in float: a bf16 trainer resumes bit for bit, a float one within bf16
  // rounding of the activations.
  const std::string path =
      (std::filesystem::temp_directory_path() / ("retnet_bf16_ckpt_" + std::to_string(::getpid()))).string();
  retnet::save_training_checkpoint(path, tr, 7);
  const double next = tr.step(x, y).loss;
  {
    auto m2 = gpu_model<bf16>(make_case(c.cfg, 1, 1, 99));
    retnet::Trainer<bf16, Cuda> tr2(m2, tc);
    CHECK(retnet::load_training_checkpoint(path, tr2).data_position == 7);
    CHECK(tr2.step(x, y).loss == next);
    CHECK(to_float(m2.params_to_host()) == to_float(m.params_to_host()));
  }
  {
    retnet::Model<float, Cuda> mf(c.cfg, gpu());
    retnet::Trainer<float, Cuda> trf(mf, tc);
    retnet::load_training_checkpoint(path, trf);
    CHECK(std::abs(trf.step(x, y).loss - next) < 0.03 * std::max(1.0, next));
  }
  std::filesystem::remove(path);
}

TEST_CASE("bf16 GPU trainer learns to recall a token across 240+ positions", "[model][bf16]") {
  if (!have_gpu()) return;
  constexpr int64_t kSecrets = 8, kMarker = 8, kQuery = 9, kNoise0 = 10, kVocab = 32, kLen = 256, kAsk = 16;
  auto make = [&](std::mt19937_64& g, int64_t B, std::vector<int64_t>& xs, std::vector<int64_t>& ys) {
    xs.assign(static_cast<size_t>(B * kLen), 0);
    ys.assign(xs.size(), retnet::kIgnoreIndex);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t s = static_cast<int64_t>(g() % kSecrets);
      int64_t* r = xs.data() + b * kLen;
      r[0] = kMarker;
      r[1] = s;
      for (int64_t t = 2; t < kLen - kAsk; ++t) r[t] = kNoise0 + static_cast<int64_t>(g() % (kVocab - kNoise0));
      for (int64_t t = kLen - kAsk; t < kLen; ++t) {
        r[t] = kQuery;
        ys[static_cast<size_t>(b * kLen + t)] = s;
      }
    }
  };
  ModelConfig cfg;
  cfg.decoder_embed_dim = 256;
  cfg.decoder_retention_heads = 4;  // heads of 64; gammas 1-1/32 .. 1-1/256
  cfg.decoder_value_embed_dim = 256;
  cfg.decoder_ffn_embed_dim = 256;
  cfg.decoder_layers = 2;
  cfg.vocab_size = kVocab;
  cfg.recurrent_chunk_size = 64;
  retnet::Model<bf16, Cuda> m(cfg, gpu());
  m.init_torchscale(1);
  retnet::TrainerConfig tc;
  tc.adamw.lr = 2e-3;
  tc.adamw.weight_decay = 0.0;
  tc.schedule = retnet::LrSchedule{20, 600, retnet::LrDecay::cosine, 0.1};
  retnet::Trainer<bf16, Cuda> tr(m, tc);
  auto accuracy = [&] {
    std::mt19937_64 ge(99);
    std::vector<int64_t> xe, ye;
    make(ge, 32, xe, ye);
    const retnet::Tensor<bf16> lg = m.forward(HostView<const int64_t>(xe.data(), {32, kLen}), Form::chunkwise);
    int64_t ok = 0, n = 0;
    for (int64_t i = 0; i < 32 * kLen; ++i) {
      if (ye[static_cast<size_t>(i)] == retnet::kIgnoreIndex) continue;
      int64_t best = 0;
      for (int64_t v = 1; v < kVocab; ++v)
        if (__bfloat162float(lg.data()[i * kVocab + v]) > __bfloat162float(lg.data()[i * kVocab + best])) best = v;
      ok += best == ye[static_cast<size_t>(i)];
      ++n;
    }
    return static_cast<double>(ok) / static_cast<double>(n);
  };
  std::mt19937_64 g(7);
  std::vector<int64_t> xs, ys;
  double acc = 0;
  for (int64_t step = 0; step < 600; ++step) {
    make(g, 16, xs, ys);
    tr.step(HostView<const int64_t>(xs.data(), {16, kLen}), HostView<const int64_t>(ys.data(), {16, kLen}));
    if ((step + 1) % 50 == 0 && (acc = accuracy()) >= 0.98) break;
  }
  INFO("accuracy " << acc);
  CHECK(acc >= 0.95);
}
