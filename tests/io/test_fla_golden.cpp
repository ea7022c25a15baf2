// Golden logits from fla itself (tests/fla/make_goldens.py, run on a GPU): every fixture of
// tests/data/fla/manifest.json loads through io::load_fla_weights and gives fla's float32 logits in all three forms.
// Missing fixtures fail the test: they are part of the repository.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "retnet/infer/generate.hpp"
#include "retnet/io/fla_format.hpp"
#include "retnet/retnet.hpp"

using namespace retnet;

TEST_CASE("fla golden logits: ours equal fla's in every form", "[io][fla][golden]") {
  const std::string root = std::string(RETNET_TEST_DATA_DIR) + "/fla";
  const std::string manifest = root + "/manifest.json";
  INFO("fixtures from tests/fla/make_goldens.py --fla FLA_SRC --out tests/data/fla (run on a GPU machine)");
  REQUIRE(std::filesystem::exists(manifest));
  nlohmann::json m;
  std::ifstream(manifest) >> m;
  std::vector<std::string> names = m.at("fixtures").get<std::vector<std::string>>();
  // Every configuration of the script, in float32 and bf16 storage.
  for (const char* want : {"plain", "grouped", "mqa_tied", "odd_unfused"})
    for (const std::string suffix : {"", "_bf16"}) {
      INFO(want << suffix);
      CHECK(std::find(names.begin(), names.end(), want + suffix) != names.end());
    }
  for (const std::string& name : names) {
    INFO(name);
    const std::string dir = root + "/" + name;
    const io::FlaConfig info = io::load_fla_config(dir + "/config.json");
    ModelConfig c = info.config;
    c.recurrent_chunk_size = 16;  // several chunks per sequence
    Model<float> model(c);
    io::load_fla_weights(model, dir, info);
    const auto g = io::SafetensorsFile::open(dir + "/golden.safetensors");
    const Shape is = g.shape("input_ids"), ls = g.shape("logits");
    REQUIRE(is.rank() == 2);
    REQUIRE(ls == Shape{is[0], is[1], c.vocab_size});
    std::vector<int64_t> ids(static_cast<size_t>(is.numel()));
    std::vector<float> want(static_cast<size_t>(ls.numel()));
    g.read("input_ids", ids.data(), is);
    g.read("logits", want.data(), ls);
    double scale = 0;
    for (float w : want) scale = std::max(scale, static_cast<double>(std::fabs(w)));
    REQUIRE(scale > 0.1);
    for (Form f : {Form::parallel, Form::chunkwise, Form::recurrent}) {
      const Tensor<float> got = infer::logits(model, HostView<const int64_t>(ids.data(), is), f);
      double err = 0;
      for (int64_t i = 0; i < got.numel(); ++i)
        err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[static_cast<size_t>(i)]));
      INFO(to_string(f) << ": max |ours - fla| = " << err << ", max |fla| = " << scale);
      CHECK(err <= 1e-5 * scale);
    }
  }
}
