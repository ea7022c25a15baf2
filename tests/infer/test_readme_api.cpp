// The README's "What a user writes" section, compiled and run on a tiny model, so the README stays true.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>

#include "retnet/io/config_json.hpp"
#include "retnet/retnet.hpp"
#include "retnet/train/checkpoint.hpp"

TEST_CASE("README: load, forward, prefill, step, train") {
  const auto dir = std::filesystem::temp_directory_path() / ("retnet_readme_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {
    retnet::ModelConfig c;
    c.decoder_embed_dim = 16;
    c.decoder_value_embed_dim = 32;
    c.decoder_retention_heads = 2;
    c.decoder_ffn_embed_dim = 24;
    c.decoder_layers = 2;
    c.vocab_size = 20;
    c.recurrent_chunk_size = 4;
    c.layernorm_eps = 0;  // the three forms then agree exactly (docs/SEMANTICS.md)
    retnet::io::save_config(c, (dir / "config.json").string());
    retnet::Model<float> seed_model(c);
    seed_model.init_torchscale(7);
    retnet::io::save_weights(seed_model, (dir / "model.safetensors").string());
  }

  auto cfg = retnet::io::load_config((dir / "config.json").string());
  retnet::Model<float> model(cfg);
  retnet::io::load_weights(model, (dir / "model.safetensors").string());

  const int64_t batch = 2, T = 9;
  std::vector<int64_t> ids(batch * T);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>((i * 7 + 3) % 20);
  retnet::HostView<const int64_t> tokens(ids.data(), {batch, T});

  auto logits = model.forward(tokens, retnet::Form::chunkwise);
  REQUIRE(logits.shape() == retnet::Shape{batch, T, 20});

  // Prefill all but the last token, then one recurrent step gives the last position's logits.
  std::vector<int64_t> prompt_ids, last_ids;
  for (int64_t b = 0; b < batch; ++b) {
    prompt_ids.insert(prompt_ids.end(), ids.begin() + b * T, ids.begin() + b * T + T - 1);
    last_ids.push_back(ids[static_cast<size_t>(b * T + T - 1)]);
  }
  auto state = model.make_state(batch);
  auto last = model.prefill(retnet::HostView<const int64_t>(prompt_ids.data(), {batch, T - 1}), state);
  auto next = model.step(retnet::HostView<const int64_t>(last_ids.data(), {batch}), state);
  REQUIRE(last.shape() == retnet::Shape{batch, 20});
  auto parallel = model.forward(tokens, retnet::Form::parallel);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t v = 0; v < 20; ++v) CHECK(next[b * 20 + v] == Approx(parallel[(b * T + T - 1) * 20 + v]).margin(1e-4));

  retnet::Trainer<float> trainer(model, {.adamw = {.lr = 3e-3, .weight_decay = 0.05}});
  std::vector<int64_t> targets(ids.begin() + 1, ids.end());
  targets.push_back(0);
  retnet::HostView<const int64_t> tgt(targets.data(), {batch, T});
  const double first = trainer.step(tokens, tgt).loss;
  double later = first;
  for (int i = 0; i < 30; ++i) later = trainer.step(tokens, tgt).loss;
  CHECK(std::isfinite(first));
  CHECK(later < first);
  std::filesystem::remove_all(dir);
}
