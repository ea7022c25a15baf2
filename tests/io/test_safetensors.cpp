#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "retnet/io/safetensors.hpp"
#include "test_util.hpp"

using namespace retnet;
using retnet::test::error_of;
using retnet::test::temp_path;
using namespace retnet::io;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file with a hand-written header and `data_size` zero bytes after it.
std::string with_header(const std::string& header, size_t data_size) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data_size, '\0');
}

ParamTable small_table() {
  ParamTable t;
  t.add("embed_tokens.weight", {5, 4});
  t.add("layers.0.retention.q_proj.weight", {4, 4});
  t.add("layer_norm.weight", {4});
  return t;
}

}  // namespace

TEST_CASE("safetensors round trip keeps values, shapes, dtypes and metadata") {
  const std::string path = temp_path("roundtrip.safetensors");
  std::vector<float> a{1.5f, -2.25f, 3.0f, 0.0f, 1e-30f, -7.0f};
  std::vector<double> b{3.141592653589793, -1e300};
  std::vector<int64_t> c{1, -2, 1LL << 40};
  SafetensorsWriter w;
  w.add("a", {2, 3}, a.data());
  w.add("b", {2}, b.data());
  w.add("c", {3}, c.data());
  w.add("a_bf16", {2, 3}, a.data(), "BF16");
  w.add("a_f16", {2, 3}, a.data(), "F16");
  w.set_metadata("format", "pt");
  w.set_metadata("quote\"d", "line\nbreak");
  w.write(path);

  const auto f = SafetensorsFile::open(path);
  CHECK(f.names() == std::vector<std::string>{"a", "a_bf16", "a_f16", "b", "c"});
  CHECK(f.dtype("a") == "F32");
  CHECK(f.dtype("b") == "F64");
  CHECK(f.dtype("c") == "I64");
  CHECK(f.shape("a") == Shape{2, 3});
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.metadata().at("quote\"d") == "line\nbreak");

  std::vector<float> ra(6);
  f.read("a", ra.data(), {2, 3});
  CHECK(ra == a);
  std::vector<double> rad(6);
  f.read("a", rad.data(), {2, 3});
  for (size_t i = 0; i < 6; ++i) CHECK(rad[i] == static_cast<double>(a[i]));
  std::vector<double> rb(2);
  f.read("b", rb.data(), {2});
  CHECK(rb == b);
  std::vector<float> rbf(2);
  f.read("b", rbf.data(), {2});
  CHECK(rbf[0] == static_cast<float>(b[0]));
  std::vector<int64_t> rc(3);
  f.read("c", rc.data(), {3});
  CHECK(rc == c);
  std::vector<float> h(6);
  f.read("a_bf16", h.data(), {2, 3});
  CHECK(h[0] == 1.5f);
  CHECK(h[1] == -2.25f);
  CHECK(h[5] == -7.0f);
  f.read("a_f16", h.data(), {2, 3});
  CHECK(h[0] == 1.5f);
  CHECK(h[1] == -2.25f);
  CHECK(h[4] == 0.0f);  // 1e-30 underflows in F16
  CHECK(error_of([&] {
          f.read("a", ra.data(), {3, 2});
        }).find("has shape [2, 3], expected [3, 2]") != std::string::npos);
  CHECK(error_of([&] { f.read("nope", ra.data(), {1}); }).find("no tensor named 'nope'") != std::string::npos);
  CHECK(error_of([&] { f.read("a", rc.data(), {2, 3}); }).find("cannot be read as an integer") != std::string::npos);
  // the atomic write leaves no temporary files behind
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::path(path).parent_path()))
    files += e.path().string().find("roundtrip.safetensors") != std::string::npos;
  CHECK(files == 1);
}

TEST_CASE("half precision conversions are exact on representable values and round to nearest even") {
  for (float v : {0.0f, 1.0f, -1.0f, 0.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f, -3.140625f})
    CHECK(io::detail::f16_to_float(io::detail::float_to_f16(v)) == v);
  CHECK(io::detail::f16_to_float(io::detail::float_to_f16(1e6f)) == std::numeric_limits<float>::infinity());
  CHECK(std::isnan(io::detail::f16_to_float(io::detail::float_to_f16(std::nanf("")))));
  CHECK(io::detail::f16_to_float(io::detail::float_to_f16(1.0f + 1.0f / 2048)) == 1.0f);  // tie -> even
  CHECK(io::detail::f16_to_float(io::detail::float_to_f16(1.0f + 3.0f / 2048)) == 1.0f + 2.0f / 1024);
  for (float v : {0.0f, 1.0f, -2.5f, std::ldexp(1.0f, 100), std::ldexp(-1.0f, -120)})
    CHECK(io::detail::bf16_to_float(io::detail::float_to_bf16(v)) == v);
  CHECK(io::detail::bf16_to_float(io::detail::float_to_bf16(1.0f + 1.0f / 256)) == 1.0f);  // tie -> even
}

TEST_CASE("safetensors headers that lie are rejected with the file and the problem") {
  const std::string path = temp_path("bad.safetensors");
  auto open_error = [&](const std::string& header, size_t data) {
    spit(path, with_header(header, data));
    return error_of([&] { SafetensorsFile::open(path); });
  };
  auto has = [](const std::string& err, const std::string& what) {
    INFO(err);
    return err.find(what) != std::string::npos;
  };
  const std::string ok = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  CHECK(open_error(ok, 8).empty());
  CHECK(has(open_error(ok, 4), "reach past the end"));
  CHECK(has(open_error(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 16), "needs 12"));
  CHECK(has(open_error(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 16), "reversed"));
  CHECK(has(open_error(R"({"x":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype 'Q7'"));
  CHECK(has(open_error(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                       16),
            "duplicate tensor name 'x'"));
  CHECK(has(open_error(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                       16),
            "overlap"));
  CHECK(has(open_error(R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "non-negative integers"));
  CHECK(has(open_error(R"({"x":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8), "non-negative integers"));
  CHECK(has(open_error(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", 8), "invalid JSON"));
  CHECK(has(open_error(R"({"x":{"dtype":"F32","shape":[2]}})", 8), "data_offsets"));
  CHECK(has(open_error(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", 8), "unknown field"));
  CHECK(has(open_error(R"([1,2])", 8), "not a JSON object"));
  CHECK(has(open_error(R"({"__metadata__":{"a":1}})", 0), "metadata 'a' is not a string"));
  CHECK(has(open_error(R"({"x":{"dtype":"F32","shape":[1,1,1,1,1,1,1],"data_offsets":[0,4]}})", 4), "rank 7"));
  CHECK(has(open_error(R"({"x":{"dtype":"F32","shape":[99999999999,99999999999],"data_offsets":[0,8]}})", 8),
            "too large"));
  CHECK(has(open_error(std::string(70, '['), 0), "nesting"));
  // header length sanity
  spit(path, std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}");
  CHECK(has(error_of([&] { SafetensorsFile::open(path); }), "implausible"));
  spit(path, "abc");
  CHECK(has(error_of([&] { SafetensorsFile::open(path); }), "shorter than the 8-byte header length"));
  CHECK(has(error_of([&] { SafetensorsFile::open(path + ".missing"); }), "cannot open"));
  spit(path, with_header(ok, 8).substr(0, 20));
  CHECK(has(error_of([&] { SafetensorsFile::open(path); }), "truncated"));
}

TEST_CASE("safetensors reader survives truncations and byte flips of a valid file") {
  const std::string path = temp_path("fuzz_src.safetensors");
  const std::string bad = temp_path("fuzz.safetensors");
  const ParamTable table = small_table();
  std::vector<float> params(static_cast<size_t>(table.total()));
  for (size_t i = 0; i < params.size(); ++i) params[i] = 0.25f * static_cast<float>(i);
  SafetensorsWriter w;
  save_params(w, table, params.data());
  w.set_metadata("format", "pt");
  w.write(path);
  const std::string good = slurp(path);

  auto try_load = [&](const std::string& bytes) {
    spit(bad, bytes);
    std::vector<float> out(params.size(), -1.0f);
    const std::vector<float> before = out;
    try {
      const auto f = SafetensorsFile::open(bad);
      load_params(f, table, out.data());
      return 1;  // loaded (a flip inside the data, or a harmless one in the header)
    } catch (const Error&) {
      CHECK(out == before);  // never half-loaded
      return 0;
    }
  };
  // every truncation fails
  int loaded = 0;
  for (size_t n = 0; n < good.size(); ++n) loaded += try_load(good.substr(0, n));
  CHECK(loaded == 0);
  // byte flips anywhere: either an Error or a successful load; never a crash
  std::mt19937 rng(1234);
  int errors = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    std::string b = good;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      const size_t pos = rng() % (trial % 2 ? b.size() : std::min<size_t>(b.size(), 8 + 300));
      b[pos] = static_cast<char>(b[pos] ^ static_cast<char>(1 + rng() % 255));
    }
    errors += 1 - try_load(b);
  }
  CHECK(errors > 100);
  CHECK(try_load(good) == 1);
}

TEST_CASE("load_params is strict about names and shapes, scoped by prefix") {
  const std::string path = temp_path("params.safetensors");
  const ParamTable table = small_table();
  std::vector<double> p(static_cast<size_t>(table.total()));
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<double>(i) + 0.5;

  SECTION("round trip, with other groups under prefixes ending in '/'") {
    SafetensorsWriter w;
    save_params(w, table, p.data());
    std::vector<double> m(p.size(), 7.0);
    save_params(w, table, m.data(), "adam.m/");
    w.write(path);
    const auto f = SafetensorsFile::open(path);
    std::vector<double> q(p.size(), 0.0), r(p.size(), 0.0);
    load_params(f, table, q.data());
    for (const auto& e : table.entries())
      for (int64_t i = 0; i < e.numel(); ++i)
        CHECK(q[static_cast<size_t>(e.offset + i)] == p[static_cast<size_t>(e.offset + i)]);
    load_params(f, table, r.data(), "adam.m/");
    CHECK(r[static_cast<size_t>(table.at("layer_norm.weight").offset)] == 7.0);
    std::vector<float> fl(p.size());
    load_params(f, table, fl.data());  // F64 file into float
    CHECK(fl[1] == 1.5f);
  }
  SECTION("missing, unexpected and wrong-shape tensors are all listed") {
    SafetensorsWriter w;
    w.add("embed_tokens.weight", {4, 5}, p.data());
    w.add("layers.0.retention.q_proj.weight", {4, 4}, p.data());
    w.add("layers.0.retention.k_proj.weight", {4, 4}, p.data());
    w.write(path);
    const auto f = SafetensorsFile::open(path);
    std::vector<double> q(p.size(), 0.0);
    const std::string e = error_of([&] { load_params(f, table, q.data()); });
    CHECK(e.find(path) != std::string::npos);
    CHECK(e.find("missing: layer_norm.weight") != std::string::npos);
    CHECK(e.find("wrong shape: embed_tokens.weight [4, 5] (expected [5, 4])") != std::string::npos);
    CHECK(e.find("unexpected: layers.0.retention.k_proj.weight") != std::string::npos);
    CHECK(q == std::vector<double>(p.size(), 0.0));
  }
  SECTION("a non-float dtype is rejected before anything is written") {
    SafetensorsWriter w;
    std::vector<int64_t> ints(20, 1);
    w.add("embed_tokens.weight", {5, 4}, ints.data());
    w.add("layers.0.retention.q_proj.weight", {4, 4}, p.data());
    w.add("layer_norm.weight", {4}, p.data());
    w.write(path);
    std::vector<double> q(p.size(), 0.0);
    CHECK(error_of([&] { load_params(SafetensorsFile::open(path), table, q.data()); }).find("dtype I64") !=
          std::string::npos);
    CHECK(q == std::vector<double>(p.size(), 0.0));
  }
  SECTION("writer rejects duplicates and bad names") {
    SafetensorsWriter w;
    w.add("x", {1}, p.data());
    CHECK(error_of([&] { w.add("x", {1}, p.data()); }).find("added twice") != std::string::npos);
    CHECK(error_of([&] { w.add("__metadata__", {1}, p.data()); }).find("reserved") != std::string::npos);
    CHECK(error_of([&] { w.add("y", {1}, p.data(), "F8"); }).find("'F8'") != std::string::npos);
    CHECK(error_of([&] { w.write("/nonexistent_dir_retnet/x.safetensors"); }).find("cannot create") !=
          std::string::npos);
  }
}
