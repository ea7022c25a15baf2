// The public fla RetNet 1.35B configuration (fla-hub/retnet-1.3B-100B: hidden 2048, 24 layers, 8 heads of key 256
// and value 512, SwiGLU 2816, untied 32000 vocabulary) on the CPU, with random weights in fla's on-disk format.
// One-shot measurements, not a Google Benchmark program (results: bench/results/fla_1.3b_cpu.md):
//
//   fla_load_cpu write DIR            random weights (seed 1) saved as fla's BF16 model directory (config.json,
//                                     model.safetensors; 267 tensors); nothing is done when DIR already exists
//   fla_load_cpu measure DIR [--cold] in a fresh process: load DIR as `generate --model DIR` does (config, model,
//                                     weights) with the file in the page cache (read once first) or, with --cold,
//                                     evicted from it (posix_fadvise DONTNEED, no root needed); peak resident memory
//                                     after loading and after making the bf16 inference copy; DRAM read bandwidth;
//                                     batch-1 greedy decoding (128-token prompt, then timed recurrent steps) with
//                                     bf16 weights, then with the float parameters, each against its ceiling.
//
// Run with OMP_NUM_THREADS set to the cores on an otherwise idle machine.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "retnet/infer/generate.hpp"
#include "retnet/io/fla_format.hpp"
#include "retnet/retnet.hpp"

namespace {

using namespace retnet;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int64_t kParams = 1'351'727'104;  // fla-hub/retnet-1.3B-100B
constexpr size_t kTensors = 267;
constexpr int64_t kPrompt = 128, kWarmupSteps = 2, kTimedSteps = 32;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The hub's config.json fields, through the same reader `generate --model` uses.
io::FlaConfig hub_config() {
  const nlohmann::json j = {{"model_type", "retnet"},
                            {"hidden_size", 2048},
                            {"num_hidden_layers", 24},
                            {"num_heads", 8},
                            {"expand_k", 1},
                            {"expand_v", 2},
                            {"hidden_ratio", 2},
                            {"intermediate_size", 2816},
                            {"hidden_act", "swish"},
                            {"vocab_size", 32000},
                            {"tie_word_embeddings", false},
                            {"norm_eps", 1e-6},
                            {"bos_token_id", 1},
                            {"eos_token_id", 2}};
  io::FlaConfig info = io::fla_config_from_json(j, "fla-hub/retnet-1.3B-100B");
  require(io::fla_tensor_names(info.config).size() == kTensors, "expected ", kTensors, " tensors");
  return info;
}

// Peak resident memory of this process so far (ru_maxrss) and now (/proc/self/statm), in GB.
double peak_rss_gb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) * 1024 * 1e-9;
}
double rss_gb() {
  long pages = 0, resident = 0;
  std::ifstream("/proc/self/statm") >> pages >> resident;
  return double(resident) * double(sysconf(_SC_PAGESIZE)) * 1e-9;
}

// Fraction of the file's pages in the page cache (mincore over a mapping that is never touched).
double cached_fraction(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  require(fd >= 0, path, ": cannot open");
  const size_t size = size_t(fs::file_size(path)), page = size_t(sysconf(_SC_PAGESIZE));
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  require(map != MAP_FAILED, path, ": mmap failed");
  std::vector<unsigned char> in((size + page - 1) / page);
  require(::mincore(map, size, in.data()) == 0, path, ": mincore failed");
  ::munmap(map, size);
  ::close(fd);
  return double(std::count_if(in.begin(), in.end(), [](unsigned char c) { return c & 1; })) / double(in.size());
}

// Puts the file into the page cache (one read through) or drops its clean pages from it.
void warm(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  require(fd >= 0, path, ": cannot open");
  std::vector<char> buf(size_t(64) << 20);
  while (::read(fd, buf.data(), buf.size()) > 0) {
  }
  ::close(fd);
}
void evict(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  require(fd >= 0 && ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0, path, ": posix_fadvise failed");
  ::close(fd);
}

// Main-memory read bandwidth, GB/s: the best of 5 passes over 1 GiB on the OpenMP threads. chained: each thread
// adds 16 floats at a time into one sum (BM_stream_read's kernel in bench_model_cpu), a chain of dependent float
// additions the compiler may not reorder; otherwise 64 independent sums, which the compiler vectorises.
double read_bandwidth_gbs(bool chained) {
  std::vector<float> buf(size_t(1) << 28, 1.0f);
  const int64_t n = int64_t(buf.size());
  double best = 0, sink = 0;
  for (int rep = 0; rep < 6; ++rep) {
    const auto t0 = Clock::now();
    double total = 0;
    if (chained) {
#pragma omp parallel for reduction(+ : total) schedule(static)
      for (int64_t i = 0; i < n; i += 16) {
        float s = 0;
        for (int j = 0; j < 16; ++j) s += buf[size_t(i + j)];
        total += s;
      }
    } else {
#pragma omp parallel reduction(+ : total)
      {
        float acc[64] = {};
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i += 64)
          for (int j = 0; j < 64; ++j) acc[j] += buf[size_t(i + j)];
        for (float a : acc) total += a;
      }
    }
    const double s = seconds_since(t0);
    sink += total;
    if (rep > 0) best = std::max(best, double(n) * 4 * 1e-9 / s);  // rep 0 warms up
  }
  require(sink > 0, "read_bandwidth_gbs: nothing was read");
  return best;
}

// GB/s of memset into 1 GiB of fresh memory (every page faulted in and zeroed by the kernel first, as the model's
// parameters and bf16 copy are), with 4 KiB pages or with MADV_HUGEPAGE (2 MiB pages where the kernel has them),
// and of memset into the same memory again (no faults).
void first_touch() {
  const size_t n = size_t(1) << 30;
  for (bool huge : {false, true}) {
    void* p = std::aligned_alloc(size_t(2) << 20, n);
    require(p != nullptr, "first_touch: out of memory");
    if (huge) ::madvise(p, n, MADV_HUGEPAGE);
    auto t0 = Clock::now();
    std::memset(p, 1, n);
    const double first = seconds_since(t0);
    t0 = Clock::now();
    std::memset(p, 2, n);
    const double again = seconds_since(t0);
    std::free(p);
    std::printf("fresh memory (%s): first write %.2f GB/s, second write %.2f GB/s (1 GiB, one thread)\n",
                huge ? "MADV_HUGEPAGE" : "4 KiB pages", double(n) * 1e-9 / first, double(n) * 1e-9 / again);
  }
}

// Bytes the weights contribute to one decoded token at batch 1: every matrix but the embedding (q, k, v, g, o, the
// three FFN matrices of each layer and lm_head) in full, at 2 (bf16) or 4 (float) bytes per value; the norm weights
// (float) and one embedding row (float, gathered, not streamed).
double weight_bytes_per_token(const Model<float>& model, bool bf16) {
  double matrices = 0, floats = double(model.config().decoder_embed_dim);
  for (const ParamInfo& p : model.param_table().entries()) {
    if (p.name == "embed_tokens.weight") continue;
    (p.shape.rank() == 2 ? matrices : floats) += double(p.numel());
  }
  return matrices * (bf16 ? 2 : 4) + floats * 4;
}

// Greedy generation as `generate` runs it (chunkwise prefill of the prompt, then recurrent steps); the token
// callback timestamps each token, so step k's time is the gap between tokens k-1 and k (its sampling included).
void decode(Model<float>& model, bool bf16, double bandwidth_gbs) {
  std::mt19937_64 g(7);
  std::vector<int64_t> prompt(kPrompt);
  for (auto& t : prompt) t = int64_t(3 + g() % uint64_t(model.config().vocab_size - 3));
  infer::GenerateOptions opt;
  opt.max_new_tokens = 1 + kWarmupSteps + kTimedSteps;
  opt.sampling.greedy = true;
  std::vector<Clock::time_point> at;
  const auto t0 = Clock::now();
  infer::generate(model, {prompt}, opt, [&](int64_t, int64_t) { at.push_back(Clock::now()); });
  std::vector<double> ms;
  for (size_t k = 1 + kWarmupSteps; k < at.size(); ++k)
    ms.push_back(std::chrono::duration<double, std::milli>(at[k] - at[k - 1]).count());
  const double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / double(ms.size());
  std::sort(ms.begin(), ms.end());
  const double prefill = std::chrono::duration<double>(at[0] - t0).count();
  const double bytes = weight_bytes_per_token(model, bf16), ceiling = bandwidth_gbs * 1e9 / bytes;
  // The recurrent state, read and written once per step: layers x heads x key dim x value dim floats.
  const ModelConfig& c = model.config();
  const double state = 4.0 * double(c.decoder_layers * c.decoder_retention_heads * c.key_dim() * c.value_dim());
  std::printf(
      "decode %s: prefill of %lld tokens %.2f s (%.1f tokens/s); %zu steps: %.1f ms/token (median %.1f, "
      "min %.1f, max %.1f), %.2f tokens/s\n",
      bf16 ? "bf16" : "float", static_cast<long long>(kPrompt), prefill, double(kPrompt) / prefill, ms.size(), mean,
      ms[ms.size() / 2], ms.front(), ms.back(), 1e3 / mean);
  std::printf(
      "  weights %.3f GB/token (%.1f GB/s at the mean step), state %.3f GB read and written; ceiling %.2f "
      "tokens/s (bandwidth / weights), reached %.0f %%\n",
      bytes * 1e-9, bytes * 1e-9 / (mean * 1e-3), state * 1e-9, ceiling, 100 * 1e3 / mean / ceiling);
}

int write_dir(const std::string& dir) {
  const io::FlaConfig info = hub_config();
  if (fs::exists(dir)) {
    std::printf("%s exists; nothing written\n", dir.c_str());
    return 0;
  }
  auto t0 = Clock::now();
  Model<float> model(info.config);
  require(model.param_count() == kParams, "the model has ", model.param_count(), " parameters, expected ", kParams);
  model.init_torchscale(1);
  std::printf("%lld parameters initialised in %.1f s\n", static_cast<long long>(model.param_count()),
              seconds_since(t0));
  t0 = Clock::now();
  io::save_fla(model, dir, "BF16", info.bos_token_id, info.eos_token_id);
  const auto bytes = fs::file_size(fs::path(dir) / "model.safetensors");
  std::printf("wrote %s/model.safetensors: %llu bytes (%.3f GB, %.4f bytes per parameter) in %.1f s\n", dir.c_str(),
              static_cast<unsigned long long>(bytes), double(bytes) * 1e-9, double(bytes) / double(kParams),
              seconds_since(t0));
  std::printf("peak RSS %.2f GB (the parameters, their copy in save_fla, the BF16 tensors and the file image)\n",
              peak_rss_gb());
  return 0;
}

int measure(const std::string& dir, bool cold) {
  const std::string file = (fs::path(dir) / "model.safetensors").string();
  const double file_gb = double(fs::file_size(file)) * 1e-9;
  if (cold) {
    evict(file);
    evict((fs::path(dir) / "config.json").string());
  } else {
    warm(file);
  }
  std::printf("%s: %.3f GB, %.0f %% in the page cache before loading (%s)\n", file.c_str(), file_gb,
              100 * cached_fraction(file), cold ? "evicted" : "read once first");

  // What generate --model DIR does: recognise fla's config.json, read it, build the model, read the weights.
  const auto t0 = Clock::now();
  require(io::is_fla_model_dir(dir), dir, ": not an fla model directory");
  const io::FlaConfig info = io::load_fla_config((fs::path(dir) / "config.json").string());
  const double t_config = seconds_since(t0);
  Model<float> model(info.config);  // allocates and zeroes 4 bytes per parameter
  const double t_alloc = seconds_since(t0) - t_config;
  io::load_fla_weights(model, dir, info);
  const double t_load = seconds_since(t0), t_read = t_load - t_config - t_alloc;
  require(model.param_count() == kParams, "loaded ", model.param_count(), " parameters, expected ", kParams);
  std::printf(
      "load %.2f s (config %.3f s, allocate %.2f s, read and convert %.2f s): %.2f GB/s of file overall, "
      "%.2f GB/s in the read phase\n",
      t_load, t_config, t_alloc, t_read, file_gb / t_load, file_gb / t_read);
  std::printf("after load: peak RSS %.2f GB, RSS %.2f GB (%.2f bytes per parameter)\n", peak_rss_gb(), rss_gb(),
              rss_gb() * 1e9 / double(kParams));
  const auto t1 = Clock::now();
  model.set_inference_weights(WeightPrecision::bf16);
  std::printf("bf16 copy made in %.2f s; peak RSS %.2f GB, RSS %.2f GB (%.2f bytes per parameter)\n", seconds_since(t1),
              peak_rss_gb(), rss_gb(), rss_gb() * 1e9 / double(kParams));

  first_touch();
  const double chained = read_bandwidth_gbs(true), bw = read_bandwidth_gbs(false);
  std::printf(
      "DRAM read bandwidth %.2f GB/s (independent sums; %.2f GB/s with one chained sum per thread), best of "
      "5 passes over 1 GiB, OMP_NUM_THREADS=%s\n",
      bw, chained, std::getenv("OMP_NUM_THREADS") ? std::getenv("OMP_NUM_THREADS") : "unset");
  decode(model, true, bw);
  model.set_inference_weights(WeightPrecision::float32);  // frees the bf16 copy
  decode(model, false, bw);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each line as soon as it is measured
  try {
    const std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() == 2 && a[0] == "write") return write_dir(a[1]);
    if ((a.size() == 2 || (a.size() == 3 && a[2] == "--cold")) && a[0] == "measure")
      return measure(a[1], a.size() == 3);
    std::fprintf(stderr, "usage: fla_load_cpu write DIR | fla_load_cpu measure DIR [--cold]\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fla_load_cpu: %s\n", e.what());
    return 1;
  }
}
