// Hostile and concurrent input to the readers: files replaced while they are read, flipped bytes, directories
// and devices where files are expected, sizes that overflow or would allocate terabytes.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>
#include <vector>

#include "retnet/io/config_json.hpp"
#include "retnet/io/npy.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/retnet.hpp"
#include "retnet/train/checkpoint.hpp"
#include "test_util.hpp"

using namespace retnet;
using retnet::test::error_of;
using retnet::test::temp_path;

namespace {

bool has(const std::string& err, const std::string& what) {
  if (err.find(what) != std::string::npos) return true;
  UNSCOPED_INFO("message: " << err);
  return false;
}

const char* const kNames[8] = {"t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"};

// Version k of a file: several tensors all filled with k, and k in the metadata.
io::SafetensorsWriter version(int k) {
  io::SafetensorsWriter w;
  const std::vector<float> v(4096, static_cast<float>(k));
  for (const char* name : kNames) w.add(name, {64, 64}, v.data());
  w.set_metadata("version", std::to_string(k));
  return w;
}

ModelConfig tiny() {
  ModelConfig c;
  c.decoder_embed_dim = 8;
  c.decoder_retention_heads = 2;
  c.decoder_value_embed_dim = 8;
  c.decoder_ffn_embed_dim = 8;
  c.decoder_layers = 1;
  c.vocab_size = 11;
  c.recurrent_chunk_size = 4;
  return c;
}

}  // namespace

TEST_CASE("a safetensors file replaced while it is read is read whole from one version") {
  const std::string path = temp_path("replaced.safetensors");
  version(0).write(path);
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int k = 1; !stop.load(); ++k) version(k).write(path);
  });
  int loads = 0, torn = 0;
  std::vector<float> buf(4096);
  const auto t0 = std::chrono::steady_clock::now();
  while (loads < 300 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3)) {
    const auto f = io::SafetensorsFile::open(path);
    const float want = static_cast<float>(std::stoi(f.metadata().at("version")));
    for (const char* name : kNames) {
      std::this_thread::yield();  // gives the writer a chance to replace the file between tensors
      f.read(name, buf.data(), {64, 64});
      for (float x : buf)
        if (x != want) {
          ++torn;
          break;
        }
    }
    ++loads;
  }
  stop = true;
  writer.join();
  INFO(loads << " loads");
  CHECK(loads > 10);
  CHECK(torn == 0);
}

TEST_CASE("tensor checksums catch flipped data bytes; files without them still load") {
  const std::string path = temp_path("sums.safetensors");
  io::SafetensorsWriter w = version(3);
  w.set_checksums(true);
  w.write(path);
  std::vector<float> buf(4096);
  io::SafetensorsFile::open(path).read("t5", buf.data(), {64, 64});
  CHECK(buf[17] == 3.0f);

  std::string bytes = w.serialize();
  bytes[bytes.size() - 3] ^= 0x10;  // inside t7, the last tensor
  const auto bad = io::SafetensorsFile::from_bytes(bytes, "flipped");
  CHECK_NOTHROW(bad.read("t0", buf.data(), {64, 64}));
  CHECK(has(error_of([&] { bad.read("t7", buf.data(), {64, 64}); }), "flipped: tensor 't7' is corrupted"));

  const auto plain = io::SafetensorsFile::from_bytes(version(4).serialize());
  CHECK(plain.metadata().count(io::kChecksumKey) == 0);
  CHECK_NOTHROW(plain.read("t7", buf.data(), {64, 64}));

  // A checksum table naming a tensor the file lacks, or holding a malformed sum, is rejected at open.
  io::SafetensorsWriter lie;
  lie.add("a", {1}, buf.data());
  lie.set_metadata(io::kChecksumKey, "{\"b\":\"0000000000000000\"}");
  CHECK(has(error_of([&] { io::SafetensorsFile::from_bytes(lie.serialize()); }), "names 'b'"));
  lie.set_metadata(io::kChecksumKey, "{\"a\":\"xyz\"}");
  CHECK(has(error_of([&] { io::SafetensorsFile::from_bytes(lie.serialize()); }), "not 16 hex digits"));
}

TEST_CASE("directories and devices where a file is expected are named in the error") {
  const std::string dir = temp_path("a_directory");
  std::filesystem::create_directories(dir);
  CHECK(has(error_of([&] { io::SafetensorsFile::open(dir); }), dir + ": is a directory, expected a safetensors"));
  CHECK(has(error_of([&] { io::load_config(dir); }), dir + ": is a directory, expected a configuration file"));
  CHECK(has(error_of([&] { io::read_npy<float>(dir); }), dir + ": is a directory, expected a .npy file"));
  // /dev/zero never ends: it must be refused, not read until memory runs out.
  CHECK(has(error_of([&] { io::SafetensorsFile::open("/dev/zero"); }), "/dev/zero: is not a regular file"));
  CHECK(has(error_of([&] { io::load_config("/dev/zero"); }), "/dev/zero: is not a regular file"));
  CHECK(has(error_of([&] { io::read_npy<float>("/dev/zero"); }), "/dev/zero: is not a regular file"));
}

TEST_CASE("sizes past int64 or past the configuration limits are errors, not allocations") {
  const int64_t big = int64_t{1} << 40;
  CHECK(has(error_of([&] { (void)Shape({big, big}).numel(); }), "overflows"));
  CHECK(has(error_of([&] { Tensor<float> t(Shape{big, 4}); }), "more than the limit"));
  CHECK(has(error_of([&] { (void)checked_mul(big, big, "x"); }), "x: size"));
  CHECK(checked_mul(3, 4, "x") == 12);

  auto json_with = [](const char* field, const std::string& value) {
    nlohmann::json j = io::config_to_json(tiny());
    j[field] = nlohmann::json::parse(value);
    return j.dump();
  };
  CHECK(has(error_of([&] { io::config_from_json_string(json_with("decoder_embed_dim", "1099511627776")); }),
            "'decoder_embed_dim' = 1099511627776 exceeds the supported maximum"));
  CHECK(has(error_of([&] { io::config_from_json_string(json_with("vocab_size", "4611686018427387904")); }),
            "'vocab_size' = 4611686018427387904 exceeds"));
  CHECK(has(error_of([&] { io::config_from_json_string(json_with("decoder_layers", "1099511627776")); }),
            "'decoder_layers' = 1099511627776 exceeds"));
  CHECK(has(error_of([&] { io::config_from_json_string(json_with("decoder_retention_heads", "1099511627776")); }),
            "'decoder_retention_heads' = 1099511627776 exceeds"));
  // Each size within its limit, the product not: refused from the parameter estimate.
  nlohmann::json j = io::config_to_json(tiny());
  j["decoder_embed_dim"] = 65536;
  j["decoder_value_embed_dim"] = 65536;
  j["decoder_retention_heads"] = 64;
  j["decoder_layers"] = 4096;
  CHECK(has(error_of([&] { io::config_from_json_string(j.dump()); }), "parameters, more than the supported maximum"));
  CHECK(io::estimated_parameter_count(tiny()) > 0);

  // A .npy header claiming a huge shape over a small file: refused from the header, before reading data.
  const std::string npy = temp_path("huge.npy");
  {
    std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1024), }";
    dict.append(64 - (10 + dict.size() + 1) % 64, ' ');
    dict += '\n';
    std::string bytes = "\x93NUMPY\x01";
    bytes += '\0';
    bytes += static_cast<char>(dict.size() & 0xFF);
    bytes += static_cast<char>(dict.size() >> 8);
    std::ofstream(npy, std::ios::binary) << bytes << dict;
  }
  CHECK(has(error_of([&] { io::read_npy<float>(npy); }), "array too large"));
}

TEST_CASE("a training checkpoint whose own configuration is hostile is refused before allocating") {
  Model<float> m(tiny());
  Trainer<float> tr(m, TrainerConfig{});
  const std::string path = temp_path("hostile.ckpt.safetensors");
  save_training_checkpoint(path, tr, 0);
  auto f = io::SafetensorsFile::open(path);
  CHECK(read_training_checkpoint_info(f).config.decoder_embed_dim == 8);
  CHECK(f.metadata().count(io::kChecksumKey) == 1);

  // Same tensors, the metadata's config claiming dim 2^40.
  io::SafetensorsWriter w;
  std::vector<float> buf;
  for (const auto& name : f.names()) {
    buf.assign(static_cast<size_t>(f.shape(name).numel()), 0.0f);
    f.read(name, buf.data(), f.shape(name));
    w.add(name, f.shape(name), buf.data());
  }
  for (const auto& [k, v] : f.metadata())
    if (k != io::kChecksumKey) w.set_metadata(k, v);
  nlohmann::json cfg = nlohmann::json::parse(f.metadata().at("config"));
  cfg["decoder_embed_dim"] = int64_t{1} << 40;
  w.set_metadata("config", cfg.dump());
  const auto hostile = io::SafetensorsFile::from_bytes(w.serialize(), "hostile");
  CHECK(has(error_of([&] { read_training_checkpoint_info(hostile); }), "exceeds the supported maximum"));
  CHECK(has(error_of([&] { load_training_checkpoint(hostile, tr); }), "exceeds the supported maximum"));
}

TEST_CASE("in-memory readers match the file readers") {
  Tensor<int64_t> t(Shape{2, 3});
  for (int64_t i = 0; i < 6; ++i) t[i] = i * 7 - 3;
  const std::string bytes = io::npy_bytes(t.cview());
  CHECK(io::read_npy_bytes<int64_t>(bytes).storage() == t.storage());
  CHECK(has(error_of([&] { io::read_npy_bytes<int64_t>(bytes.substr(0, bytes.size() - 1), "cut.npy"); }),
            "cut.npy: data has 47 bytes"));
}
