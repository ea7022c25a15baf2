// The whole model on the GPU (Model<float, Cuda>, Trainer<float, Cuda>) against the same templates on the CPU:
// logits, loss and every parameter gradient in all three forms, with dropout and segments; a 50-step loss curve;
// an optimizer state moved from the GPU to the CPU continuing the same curve; bit-identical repeated runs.
#include <cuda_runtime.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "gpu_test.hpp"
#include "model_reference.hpp"
#include "retnet/cuda.cuh"

namespace {

using retnet::Cuda;
using retnet::Form;
using retnet::HostView;
using retnet::ModelConfig;
using retnet_test::ModelCase;

using retnet_test::have_gpu;

// One stream and cuBLAS handle for the whole program.
const Cuda& gpu() {
  static const Cuda ctx = [] {
    Cuda c;
    RETNET_CUDA_CHECK(cudaStreamCreate(&c.stream));
    RETNET_CUBLAS_CHECK(cublasCreate(&c.cublas));
    return c;
  }();
  return ctx;
}

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

retnet::Model<float, Cuda> gpu_model(const ModelCase& c) {
  retnet::Model<float, Cuda> m(c.cfg, gpu());
  m.params_from_host(c.params.data(), static_cast<int64_t>(c.params.size()));
  return m;
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
          auto m = gpu_model(c);
          if (!dropout && !segment) {
            const retnet::Tensor<float> logits =
                m.forward(HostView<const int64_t>(c.tokens.data(), {c.batch, c.length}), form);
            CHECK(rel_err(logits.storage(), retnet_test::ref_logits(c, form)) < 1e-5);
          }
          retnet::GradContext<float, Cuda> ctx;
          retnet::Buffer<float, Cuda> grads(gpu(), m.param_count());
          const int64_t count = retnet::count_targets(c.targets.data(), c.batch * c.length);
          const retnet::DropoutKey key{9, 4, 0};
          const retnet::LossSum l =
              retnet::loss_and_grad(m, ctx, c.tokens.data(), c.targets.data(), c.batch, c.length, form, grads.data(),
                                    1.0 / static_cast<double>(count), segment, dropout ? &key : nullptr);
          const retnet_test::RefLossGrad ref = retnet_test::ref_loss_grad(c, form, segment, dropout ? 4 : -1, 9);
          CHECK(l.mean() == Approx(ref.loss).epsilon(1e-5));
          check_grads(m.param_table(), grads.to_host(), ref.grads, 1e-4);
        }
      }
    }
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
