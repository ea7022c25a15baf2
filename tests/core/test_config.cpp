#include <catch2/catch.hpp>
#include <cmath>

#include "retnet/retnet.hpp"
#include "test_util.hpp"

using namespace retnet;
using retnet::test::error_of;
using retnet::test::temp_path;

TEST_CASE("torchscale decay schedule is 1 - 2^(-5-h)") {
  RetentionConfig cfg(RetentionOptions{.heads = 3});
  REQUIRE(cfg.gammas().size() == 3);
  CHECK(cfg.gammas()[0] == Approx(1.0 - 1.0 / 32));
  CHECK(cfg.gammas()[2] == Approx(1.0 - 1.0 / 128));
  CHECK(cfg.log_gammas()[1] == Approx(std::log(1.0 - 1.0 / 64)));
}

TEST_CASE("paper decay schedule spans 1/32 .. 1/512") {
  RetentionConfig cfg(RetentionOptions{.heads = 8, .decay_schedule = DecaySchedule::paper});
  CHECK(cfg.gammas().front() == Approx(0.96875));
  CHECK(cfg.gammas()[1] == Approx(0.97897).epsilon(1e-5));
  CHECK(cfg.gammas().back() == Approx(1.0 - 1.0 / 512));
}

TEST_CASE("custom decays are taken as given and validated") {
  RetentionConfig cfg(RetentionOptions{.heads = 2, .decay_schedule = DecaySchedule::custom, .decays = {0.5, 0.9}});
  CHECK(cfg.gammas()[1] == 0.9);
  auto bad = [](std::vector<double> d) {
    return error_of(
        [&] { RetentionConfig c(RetentionOptions{.heads = 2, .decay_schedule = DecaySchedule::custom, .decays = d}); });
  };
  CHECK_THAT(bad({0.5, 1.0}), Catch::Contains("decay of head 1 = 1") && Catch::Contains("(0, 1)"));
  CHECK_THAT(bad({0.0, 0.5}), Catch::Contains("decay of head 0 = 0"));
  CHECK_THAT(bad({-0.2, 0.5}), Catch::Contains("decay of head 0 = -0.2"));
  CHECK_THAT(bad({0.5}), Catch::Contains("decays has 1 values"));
  CHECK_THAT(bad({0.5, NAN}), Catch::Contains("decay of head 1"));
}

TEST_CASE("invalid sizes name the field and the value") {
  auto err = [](RetentionOptions o) { return error_of([&] { RetentionConfig c(o); }); };
  CHECK_THAT(err({.heads = 0}), Catch::Contains("heads = 0"));
  CHECK_THAT(err({.key_dim = -4}), Catch::Contains("key_dim = -4"));
  CHECK_THAT(err({.value_dim = 0}), Catch::Contains("value_dim = 0"));
  CHECK_THAT(err({.chunk_size = 0}), Catch::Contains("chunk_size = 0"));
  CHECK_THAT(err({.key_dim = 7}), Catch::Contains("key_dim = 7") && Catch::Contains("even"));
  CHECK_THAT(err({.eps = -1.0}), Catch::Contains("eps = -1"));
  CHECK_THAT(err({.decays = {0.5}}), Catch::Contains("DecaySchedule::custom"));
}

TEST_CASE("rotation angles follow torchscale's linspace exponents") {
  auto theta = rotation_angles(8);
  REQUIRE(theta.size() == 4);
  CHECK(theta[0] == 1.0);
  CHECK(theta[3] == Approx(1e-4));
  CHECK(theta[1] == Approx(std::pow(10000.0, -1.0 / 3)));
}

TEST_CASE("rotation rotates interleaved pairs and its inverse undoes it") {
  RotationTable<double> table(4, 5, 1);  // position 5
  double x[4] = {1.0, 2.0, -3.0, 0.5};
  double y[4] = {1.0, 2.0, -3.0, 0.5};
  rotate_row(y, table.sin.data(), table.cos.data(), 2);
  const double a = 5.0 * 1.0;
  CHECK(y[0] == Approx(1.0 * std::cos(a) - 2.0 * std::sin(a)));
  CHECK(y[1] == Approx(2.0 * std::cos(a) + 1.0 * std::sin(a)));
  rotate_row(y, table.sin.data(), table.cos.data(), 2, /*inverse=*/true);
  for (int i = 0; i < 4; ++i) CHECK(y[i] == Approx(x[i]));
}

TEST_CASE("checked mode reports the op, tensor and position of a non-finite value") {
  Tensor<float> t(Shape{2, 3});
  t[4] = std::numeric_limits<float>::infinity();
  CHECK_THAT(error_of([&] { check_finite("my_op", "q", t.cview()); }),
             Catch::Contains("my_op") && Catch::Contains("q") && Catch::Contains("[1, 1]"));
}

TEST_CASE("ParamTable aligns offsets and rejects duplicates") {
  ParamTable table;
  table.add("a", {3, 5});
  const auto& b = table.add("b", {7});
  CHECK(b.offset == 16);
  CHECK(table.total() == 23);
  CHECK(table.at("a").numel() == 15);
  CHECK_THROWS_AS(table.add("a", {1}), Error);
  CHECK_THROWS_WITH(table.at("zz"), Catch::Contains("zz"));
}

TEST_CASE("ModelConfig validation names the bad field") {
  ModelConfig c;
  c.vocab_size = 256;
  CHECK_NOTHROW(c.validate());
  c.decoder_retention_heads = 3;
  CHECK_THROWS_WITH(c.validate(),
                    Catch::Contains("decoder_embed_dim = 768") || Catch::Contains("decoder_value_embed_dim = 1280"));
  c.decoder_retention_heads = 4;
  c.activation_fn = "relu";
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("activation_fn = 'relu'"));
}
