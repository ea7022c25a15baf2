#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <functional>

#include "retnet/io/config_json.hpp"
#include "retnet/io/npy.hpp"
#include "test_util.hpp"

using namespace retnet;
using retnet::test::error_of;
using retnet::test::temp_path;

namespace {

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

const std::string data_dir = std::string(RETNET_TEST_DATA_DIR) + "/torchscale/";

}  // namespace

TEST_CASE("torchscale's RetNetConfig dictionaries load, with inert fields reported") {
  io::ConfigReport report;
  const ModelConfig g = io::load_config(data_dir + "gelu.config.json", &report);
  CHECK(g.decoder_embed_dim == 16);
  CHECK(g.decoder_value_embed_dim == 24);
  CHECK(g.decoder_retention_heads == 2);
  CHECK(g.decoder_ffn_embed_dim == 32);
  CHECK(g.decoder_layers == 2);
  CHECK(g.vocab_size == 40);
  CHECK(g.recurrent_chunk_size == 4);
  CHECK(g.activation_fn == "gelu");
  CHECK(g.layernorm_eps == 1e-6);
  CHECK(g.no_scale_embedding);
  CHECK_FALSE(g.layernorm_embedding);
  CHECK_FALSE(g.share_decoder_input_output_embed);
  CHECK(report.unknown.empty());
  CHECK(std::find(report.ignored.begin(), report.ignored.end(), "fsdp") != report.ignored.end());
  CHECK(std::find(report.ignored.begin(), report.ignored.end(), "dropout") == report.ignored.end());  // read
  CHECK(g.dropout == 0.0);
  const ModelConfig s = io::load_config(data_dir + "swish.config.json");
  CHECK(s.activation_fn == "swish");
  CHECK(s.share_decoder_input_output_embed);
  CHECK_FALSE(s.no_scale_embedding);
  CHECK(s.layernorm_embedding);
  CHECK(s.decoder_retention_heads == 4);
}

TEST_CASE("config JSON round trip and field errors") {
  ModelConfig c;
  c.vocab_size = 256;
  c.decoder_layers = 3;
  c.ffn_type = "mlp";
  c.decay_schedule = DecaySchedule::custom;
  c.decoder_retention_heads = 2;
  c.decoder_embed_dim = 8;
  c.decoder_value_embed_dim = 12;
  c.decays = {0.5, 0.75};
  c.retention_normalization = Normalization::raw;
  const std::string path = temp_path("c.json");
  io::save_config(c, path);
  io::ConfigReport rep;
  const ModelConfig r = io::load_config(path, &rep);
  CHECK(r.vocab_size == 256);
  CHECK(r.decoder_layers == 3);
  CHECK(r.ffn_type == "mlp");
  CHECK(r.decay_schedule == DecaySchedule::custom);
  CHECK(r.decays == std::vector<double>{0.5, 0.75});
  CHECK(r.retention_normalization == Normalization::raw);
  CHECK(rep.unknown.empty());

  auto err = [](const std::string& text) { return error_of([&] { io::config_from_json_string(text); }); };
  auto has = [](const std::string& e, const std::string& what) {
    INFO(e);
    return e.find(what) != std::string::npos;
  };
  CHECK(has(err(R"({"vocab_size": "many"})"), "field 'vocab_size' must be an integer"));
  CHECK(has(err(R"({"vocab_size": 10.5})"), "field 'vocab_size' must be an integer"));
  CHECK(has(err(R"({"vocab_size": 10, "no_scale_embedding": 1})"), "field 'no_scale_embedding' must be true or false"));
  CHECK(has(err(R"({"vocab_size": 10, "activation_fn": "relu"})"), "activation_fn = 'relu'"));
  CHECK(has(err(R"({"vocab_size": -1})"), "vocab_size = -1"));
  CHECK(has(err(R"({})"), "vocab_size"));
  CHECK(has(err(R"({"vocab_size": 10, "deepnorm": true})"), "'deepnorm' = true is not supported"));
  CHECK(has(err(R"({"vocab_size": 10, "moe_freq": 2})"), "moe_freq"));
  CHECK(has(err(R"({"vocab_size": 10, "decoder_retention_heads": 5})"), "not divisible"));
  CHECK(has(err(R"({"vocab_size": 10,)"), "invalid JSON"));
  CHECK(has(err(R"([1])"), "must be a JSON object"));
  CHECK(has(err(R"({"vocab_size": 10, "decay_schedule": "fast"})"), "decay_schedule"));
  io::ConfigReport rep2;
  const ModelConfig z =
      io::config_from_json_string(R"({"vocab_size": 10, "fsdp": false, "my_field": 3, "decoder_layers": null})", &rep2);
  CHECK(z.decoder_layers == ModelConfig{}.decoder_layers);
  CHECK(rep2.unknown == std::vector<std::string>{"my_field"});
  CHECK(rep2.ignored == std::vector<std::string>{"fsdp"});
  CHECK(has(error_of([&] { io::load_config(path + ".missing"); }), "cannot open"));
}

TEST_CASE("npy round trip and validation") {
  const std::string path = temp_path("a.npy");
  Tensor<float> f({2, 3, 4});
  for (int64_t i = 0; i < f.numel(); ++i) f[i] = 0.5f * static_cast<float>(i) - 3.0f;
  io::write_npy(path, f);
  const Tensor<float> g = io::read_npy<float>(path);
  CHECK(g.shape() == Shape{2, 3, 4});
  CHECK(g.storage() == f.storage());
  const Tensor<double> gd = io::read_npy<double>(path);
  CHECK(gd[5] == static_cast<double>(f[5]));
  CHECK(slurp(path).size() % 64 == 24 * 4 % 64);  // header padded to 64 bytes

  Tensor<int64_t> t({5});
  for (int64_t i = 0; i < 5; ++i) t[i] = i * 1000000000000LL;
  io::write_npy(path, t);
  CHECK(slurp(path).find("'shape': (5,)") != std::string::npos);
  CHECK(io::read_npy<int64_t>(path).storage() == t.storage());
  CHECK(error_of([&] { io::read_npy<int32_t>(path); }).find("does not fit") != std::string::npos);
  CHECK(error_of([&] { io::read_npy<float>(path); }).find("not floating point") != std::string::npos);

  const Tensor<int64_t> tok = io::read_npy<int64_t>(data_dir + "tokens.npy");  // written by numpy
  CHECK(tok.shape() == Shape{2, 11});
  const Tensor<double> lg = io::read_npy<double>(data_dir + "gelu.logits_parallel.npy");
  CHECK(lg.shape() == Shape{2, 11, 40});

  const std::string good = slurp(data_dir + "tokens.npy");
  auto has = [](const std::string& e, const std::string& what) {
    INFO(e);
    return e.find(what) != std::string::npos;
  };
  auto err_of_bytes = [&](const std::string& b) {
    spit(path, b);
    return error_of([&] { io::read_npy<int64_t>(path); });
  };
  CHECK(has(err_of_bytes(good.substr(0, good.size() - 1)), "truncated"));
  CHECK(has(err_of_bytes("hello"), "bad magic"));
  std::string fortran = good;
  fortran.replace(fortran.find("False"), 5, "True ");
  CHECK(has(err_of_bytes(fortran), "Fortran"));
  std::string big = good;
  big.replace(big.find("<i8"), 3, ">i8");
  CHECK(has(err_of_bytes(big), "big-endian"));
  for (size_t n = 0; n < good.size(); ++n) CHECK_FALSE(err_of_bytes(good.substr(0, n)).empty());
}

TEST_CASE("config JSON reads and writes the dropout rates") {
  ModelConfig c;
  c.vocab_size = 30;
  c.dropout = 0.1;
  c.activation_dropout = 0.25;
  c.drop_path_rate = 0.05;
  const nlohmann::json j = io::config_to_json(c);
  CHECK(j.at("dropout").get<double>() == 0.1);
  CHECK(j.at("activation_dropout").get<double>() == 0.25);
  CHECK(j.at("drop_path_rate").get<double>() == 0.05);
  const std::string path = temp_path("dropout.json");
  io::save_config(c, path);
  io::ConfigReport rep;
  const ModelConfig r = io::load_config(path, &rep);
  CHECK(r.dropout == 0.1);
  CHECK(r.activation_dropout == 0.25);
  CHECK(r.drop_path_rate == 0.05);
  CHECK(rep.unknown.empty());
  for (const std::string f : {"dropout", "activation_dropout", "drop_path_rate"})
    CHECK(std::find(rep.ignored.begin(), rep.ignored.end(), f) == rep.ignored.end());
  // files without them (older ones of ours, hand-written ones) still load, with rates 0
  const ModelConfig plain = io::config_from_json_string(R"({"vocab_size": 10})");
  CHECK(plain.dropout == 0.0);
  CHECK(plain.activation_dropout == 0.0);
  CHECK(plain.drop_path_rate == 0.0);
  const std::string e1 = error_of([] { io::config_from_json_string(R"({"vocab_size": 10, "dropout": 1.0})"); });
  CHECK(e1.find("dropout = 1") != std::string::npos);
  const std::string e2 = error_of([] { io::config_from_json_string(R"({"vocab_size": 10, "drop_path_rate": -0.5})"); });
  CHECK(e2.find("drop_path_rate = -0.5") != std::string::npos);
  const std::string e3 =
      error_of([] { io::config_from_json_string(R"({"vocab_size": 10, "activation_dropout": "high"})"); });
  CHECK(e3.find("field 'activation_dropout' must be a number") != std::string::npos);
}
