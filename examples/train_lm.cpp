// train_lm: trains a byte-level RetNet language model on the CPU or a GPU and writes a sample at the end.
//
//   train_lm [--device cpu|cuda] [--precision float|bf16] [--tf32] [--zero 0|1] [--bucket-mb MB] [--data FILE]
//            [--steps N] [--batch B] [--seq T] [--layers L] [--dim D] [--heads H] [--value-dim V] [--ffn F] [--chunk C]
//            [--lr LR] [--warmup W] [--decay cosine|linear|constant]
//            [--weight-decay WD] [--clip C] [--accum A] [--segment S] [--form chunkwise|parallel|recurrent]
//            [--dropout P] [--seed S] [--out DIR] [--ckpt-every N] [--eval-every N] [--resume [FILE]]
//            [--max-new N] [--temperature T] [--top-k K] [--top-p P] [--prompt TEXT]
//
// train_lm --help lists the options with their defaults and limits. Errors are one line on stderr (exit 2: bad
// command line, 1: anything else). Without --data it trains on the public-domain text embedded in
// examples/corpus.hpp. Writes into DIR: loss.csv (flushed at every checkpoint; on --resume, rows past the
// checkpoint's step are dropped), loss.png (when gnuplot is installed; run without a shell), config.json,
// checkpoint.safetensors (parameters with torchscale's names + AdamW state; loads as a model file too) and
// best.safetensors (the checkpoint with the lowest held-out loss so far; its metadata names the step and loss).
// DIR is locked (DIR/.lock) for the run: a second train_lm on the same DIR is refused. Temporary files a killed
// run left behind are removed when the next run takes the lock.
// --resume continues from the checkpoint with exactly the losses an uninterrupted run would have had: batch s
// is a pure function of (seed, s). --dropout P (default 0) sets torchscale's `dropout` (embedding, retention
// and FFN outputs) for training; the held-out loss and the sample run without it. Its masks are a pure function
// of (seed, step) too. Sizes are bounded (see --help) and the memory a run needs is estimated and refused
// before anything is allocated when it exceeds the machine's (and, with --device cuda, the GPU's).
//
// Under mpirun (builds with MPI) the ranks train data parallel: each takes its rows of every global batch, so the
// losses follow the one-process run with the same --batch; --zero 1 shards the AdamW moments, --bucket-mb sets
// the gradient buckets. Rank 0 alone prints and writes. --device cuda trains on the current GPU, or under mpirun on
// one GPU per rank through NCCL (builds with MPI and NCCL; --zero 1 then shards the optimizer update); the training
// loop is train_loop.hpp for both devices; checkpoints are the same files on both devices and for any number of
// ranks, so either resumes the other's.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "cli.hpp"
#include "corpus.hpp"
#include "retnet/infer/sampler.hpp"
#include "retnet/io/config_json.hpp"
#include "retnet/retnet.hpp"
#include "retnet/train/checkpoint.hpp"
#include "train_loop.hpp"
#if RETNET_TRAIN_LM_MPI
#include "retnet/dist/mpi.hpp"
#endif

namespace {

using retnet::fail;
using retnet::require;
using retnet_examples::UsageError;

constexpr int64_t kMaxData = int64_t{1} << 32;  // bytes of --data

using retnet_examples::train_lm::Options;

Options parse(int argc, char** argv) {
  Options o;
  CLI::App app("Trains a byte-level RetNet language model on the CPU or a GPU and writes a sample at the end.",
               "train_lm");
  retnet_examples::setup_app(app);
  using retnet::io::ConfigLimits;
  using retnet_examples::finite_in;
  auto range = [](int64_t lo, int64_t hi) { return CLI::Range(lo, hi); };
  const int64_t big = int64_t{1} << 40;
  app.add_option("--device", o.device, "where to train: cpu, or cuda (the current GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_flag("--tf32", o.tf32, "GPU float matrix products in TF32 (faster, about 1e-3 relative); --device cuda only");
  app.add_option("--precision", o.precision,
                 "GPU storage of parameters and activations: float, or bf16 (gradients, master weights and state stay "
                 "float); --device cuda only")
      ->check(CLI::IsMember({"float", "bf16"}));
  app.add_option("--zero", o.zero, "data parallel (mpirun): 1 shards the AdamW moments over the ranks (ZeRO-1)")
      ->check(range(0, 1));
  app.add_option("--bucket-mb", o.bucket_mb, "data parallel (mpirun): gradient bucket size in MiB")
      ->check(finite_in(1e-4, 1 << 20));
  app.add_option("--data", o.data, "training text (a regular file, read as bytes; default: the embedded corpus)");
  app.add_option("--out", o.out, "output directory");
  auto* resume =
      app.add_option("--resume", o.resume, "continue from a checkpoint (default: DIR/checkpoint.safetensors)")
          ->expected(0, 1);
  app.add_option("--steps", o.steps, "optimizer steps in all (with --resume: including the checkpoint's)")
      ->check(range(1, big));
  app.add_option("--batch", o.batch, "sequences per step")->check(range(1, int64_t{1} << 20));
  app.add_option("--seq", o.seq, "tokens per sequence")->check(range(1, int64_t{1} << 20));
  app.add_option("--layers", o.layers, "decoder layers")->check(range(1, ConfigLimits::max_layers));
  app.add_option("--dim", o.dim, "embedding width")->check(range(1, ConfigLimits::max_embed_dim));
  app.add_option("--heads", o.heads, "retention heads")->check(range(1, ConfigLimits::max_heads));
  app.add_option("--value-dim", o.value_dim, "total value width")->check(range(1, ConfigLimits::max_value_embed_dim));
  app.add_option("--ffn", o.ffn, "FFN width")->check(range(1, ConfigLimits::max_ffn_embed_dim));
  app.add_option("--chunk", o.chunk, "chunk size of the chunkwise form")->check(range(1, ConfigLimits::max_chunk_size));
  app.add_option("--form", o.form, "retention form for training")
      ->check(CLI::IsMember({"chunkwise", "parallel", "recurrent"}));
  app.add_option("--lr", o.lr, "peak learning rate")->check(finite_in(0, 1e3));
  app.add_option("--warmup", o.warmup, "warm-up steps")->check(range(0, big));
  app.add_option("--decay", o.decay, "learning-rate decay")->check(CLI::IsMember({"cosine", "linear", "constant"}));
  app.add_option("--weight-decay", o.weight_decay, "AdamW weight decay")->check(finite_in(0, 1e3));
  app.add_option("--clip", o.clip, "gradient-norm clip (0: off)")->check(finite_in(0, 1e9));
  app.add_option("--accum", o.accum, "micro-batches per step (divides --batch)")->check(range(1, int64_t{1} << 20));
  app.add_option("--segment", o.segment, "truncated backpropagation segment length (0: whole sequence)")
      ->check(range(0, int64_t{1} << 20));
  app.add_option("--dropout", o.dropout, "dropout rate for training")->check(finite_in(0, 1, true));
  app.add_option("--seed", o.seed, "random seed (data order, initialisation, dropout, sampling)");
  app.add_option("--ckpt-every", o.ckpt_every, "steps between checkpoints (0: only at the end)")->check(range(0, big));
  app.add_option("--eval-every", o.eval_every, "steps between held-out evaluations (0: only at the end)")
      ->check(range(0, big));
  app.add_option("--max-new,--sample-len", o.max_new, "bytes to sample at the end (0: none)")
      ->check(range(0, int64_t{1} << 24));
  app.add_option("--temperature", o.temperature, "sampling temperature (0: greedy)")->check(finite_in(0, 1e6));
  app.add_option("--top-k", o.top_k, "sample among the k most likely bytes (0: all)")->check(range(0, 256));
  app.add_option("--top-p", o.top_p, "nucleus sampling mass, in (0, 1]")->check(finite_in(1e-9, 1));
  app.add_option("--prompt", o.prompt, "prompt of the sample");
  retnet_examples::parse_args(app, retnet_examples::args_of(argc, argv));
  o.do_resume = resume->count() > 0;
  if (o.batch % o.accum != 0)
    throw UsageError("--batch " + std::to_string(o.batch) + " is not divisible by --accum " + std::to_string(o.accum));
  if (o.tf32 && o.device != "cuda")
    throw UsageError("--tf32 applies to --device cuda only (--device is " + o.device + ")");
  if (o.precision != "float" && o.device != "cuda")
    throw UsageError("--precision " + o.precision + " applies to --device cuda only (--device is " + o.device + ")");
  if (o.tf32 && o.precision != "float")
    throw UsageError("--tf32 applies to --precision float only (bf16 products always run on the tensor cores)");
  return o;
}

// Reads --data: a regular file of at most kMaxData bytes.
std::string read_data(const std::string& path) {
  int64_t size = 0;
  const int fd = retnet::io::detail::open_regular_file(path, "a text file for --data", size);
  std::string raw;
  bool ok = size <= kMaxData;
  if (ok) {
    raw.resize(static_cast<size_t>(size));
    ok = retnet::io::detail::pread_all(fd, raw.data(), raw.size(), 0);
  }
  ::close(fd);
  require(size <= kMaxData, "--data ", path, ": ", size, " bytes is more than the supported ", kMaxData);
  require(ok, "--data ", path, ": read failed: ", std::strerror(errno));
  return raw;
}

std::string printable(const std::string& s) {
  // Control bytes and invalid UTF-8 (an undertrained byte model emits both) become '?'.
  std::string r;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 128) {
      r += (c == '\n' || c == '\t' || (c >= 32 && c != 127)) ? static_cast<char>(c) : '?';
      ++i;
      continue;
    }
    const size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(s[i + k]) >> 6) == 2;
    if (ok) {
      r.append(s, i, len);
      i += len;
    } else {
      r += '?';
      ++i;
    }
  }
  return r;
}

}  // namespace

namespace retnet_examples::train_lm {

// Creates DIR (and its parents) and takes an exclusive lock on DIR/.lock for the rest of the process (the
// kernel drops it when the process ends, however it ends).
void lock_output_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  require(!ec, "--out ", dir, ": cannot create the output directory: ", ec.message());
  require(std::filesystem::is_directory(dir, ec), "--out ", dir, ": is not a directory");
  const std::string lock = dir + "/.lock";
  const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  require(fd >= 0, "--out ", dir, ": cannot create the lock file ", lock, ": ", std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    ::close(fd);
    require(e != EWOULDBLOCK, "--out ", dir, ": another train_lm run is using this directory (", lock,
            " is locked); wait for it or choose another --out");
    fail("--out ", dir, ": cannot lock ", lock, ": ", std::strerror(e));
  }
  // fd stays open on purpose: the lock lives as long as the process.
}

// Removes temporary files of interrupted writes (atomic writes go through NAME.tmp.*); safe under the lock.
int remove_stale_temporaries(const std::string& dir) {
  int removed = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    for (const char* stem :
         {"checkpoint.safetensors.tmp.", "best.safetensors.tmp.", "config.json.tmp.", "loss.csv.tmp."})
      if (name.rfind(stem, 0) == 0 && e.is_regular_file(ec)) {
        removed += std::filesystem::remove(e.path(), ec) ? 1 : 0;
        break;
      }
  }
  return removed;
}

// loss.csv on resume: keeps the header and the complete rows of steps up to `upto` (a killed run may have
// written rows past its last checkpoint, or half a row), written back atomically.
void trim_loss_csv(const std::string& path, int64_t upto) {
  std::ifstream in(path, std::ios::binary);
  std::string out = "step,loss,val_loss,lr,grad_norm,tokens_per_s,elapsed_s\n";
  if (in) {
    const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    size_t pos = 0;
    for (size_t nl; (nl = text.find('\n', pos)) != std::string::npos; pos = nl + 1) {
      const std::string row = text.substr(pos, nl - pos);
      if (std::count(row.begin(), row.end(), ',') != 6) continue;
      char* end = nullptr;
      const long long step = std::strtoll(row.c_str(), &end, 10);
      if (end == row.c_str() || *end != ',' || step < 1 || step > upto) continue;
      out += row + '\n';
    }
  }
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream o(tmp, std::ios::binary | std::ios::trunc);
    o << out;
    o.flush();
    require(o.good(), tmp, ": write failed");
  }
  require(std::rename(tmp.c_str(), path.c_str()) == 0, path, ": cannot replace: ", std::strerror(errno));
}

// Plots loss.csv into loss.png with gnuplot when it is installed. gnuplot runs in DIR on fixed relative
// names, without a shell, so no path reaches a command line or the gnuplot script.
bool plot_loss(const std::string& dir) {
  {
    std::ofstream g(dir + "/loss.gp", std::ios::trunc);
    g << "set terminal pngcairo size 900,500\nset output 'loss.png'\nset datafile separator ','\n"
         "set key autotitle columnhead\nset xlabel 'step'\nset ylabel 'loss (nats/byte)'\nset grid\n"
         "plot 'loss.csv' using 1:2 with lines title 'train', 'loss.csv' using 1:3 with linespoints title "
         "'held-out'\n";
    if (!g.good()) return false;
  }
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return false;
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) {
      ::dup2(null, 1);
      ::dup2(null, 2);
    }
    if (::chdir(dir.c_str()) == 0) ::execlp("gnuplot", "gnuplot", "loss.gp", static_cast<char*>(nullptr));
    ::_exit(127);  // no gnuplot: no plot
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Rough memory need of a run in bytes (double: cannot wrap): parameters, gradients and the two AdamW moments;
// per token of a step, a few activations of each layer's widths and the logits; the parallel form's
// [T, T] score matrices; the text (a byte and an int64 per byte).
double estimate_memory(const Options& o, const retnet::ModelConfig& c, int64_t batch, int64_t data_bytes) {
  const double P = static_cast<double>(retnet::io::estimated_parameter_count(c));
  const double L = static_cast<double>(c.decoder_layers), d = static_cast<double>(c.decoder_embed_dim);
  const double vd = static_cast<double>(c.decoder_value_embed_dim), f = static_cast<double>(c.decoder_ffn_embed_dim);
  const double tokens = static_cast<double>(batch) / static_cast<double>(o.accum) * static_cast<double>(o.seq);
  double act = tokens * (L * (6 * d + 4 * vd + 4 * f) + 3 * static_cast<double>(c.vocab_size));
  if (o.form == "parallel")
    act += static_cast<double>(batch) / static_cast<double>(o.accum) * static_cast<double>(c.decoder_retention_heads) *
           static_cast<double>(o.seq) * static_cast<double>(o.seq) * L;
  return 4.0 * (4.0 * P + act) + 9.0 * static_cast<double>(data_bytes);
}

std::string fmt_time(double s) {
  const int64_t t = static_cast<int64_t>(s + 0.5);
  char b[32];
  std::snprintf(b, sizeof b, "%02lld:%02lld", static_cast<long long>(t / 60), static_cast<long long>(t % 60));
  return b;
}

// Every offset is drawn whatever the rows kept, so the global batch does not depend on the number of ranks.
void make_batch(const std::vector<int64_t>& text, int64_t train_end, uint64_t seed, int64_t step, int64_t B, int64_t T,
                retnet::dist::RowRange rows, std::vector<int64_t>& x, std::vector<int64_t>& y) {
  std::mt19937_64 g(seed ^ (0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(step + 1)));
  x.resize(static_cast<size_t>(rows.count * T));
  y.resize(x.size());
  const uint64_t range = static_cast<uint64_t>(train_end - T - 1);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t o = static_cast<int64_t>(g() % range);
    if (b < rows.begin || b >= rows.end()) continue;
    const int64_t r = b - rows.begin;
    for (int64_t t = 0; t < T; ++t) {
      x[static_cast<size_t>(r * T + t)] = text[static_cast<size_t>(o + t)];
      y[static_cast<size_t>(r * T + t)] = text[static_cast<size_t>(o + t + 1)];
    }
  }
}

double mean_cross_entropy(const float* logits, const int64_t* targets, int64_t n, int64_t vocab) {
  return retnet::cross_entropy_forward_backward(retnet::cpu, logits, targets, n, vocab).mean();
}

// Chunkwise prefill of the prompt, then one recurrent step per byte.
std::string sample_text(const retnet::ModelConfig& cfg, const std::vector<float>& params, const Options& o) {
  using namespace retnet;
  Model<float> model(cfg);
  model.params_from_host(params.data(), static_cast<int64_t>(params.size()));
  std::vector<int64_t> prompt;
  for (unsigned char c : o.prompt) prompt.push_back(c);
  if (prompt.empty()) prompt.push_back('\n');
  auto state = model.make_state(1);
  Tensor<float> logits =
      model.prefill(HostView<const int64_t>(prompt.data(), {1, static_cast<int64_t>(prompt.size())}), state);
  Sampler sampler(
      SamplingOptions{.temperature = o.temperature, .top_k = o.top_k, .top_p = o.top_p, .seed = o.seed + 7});
  std::string out = o.prompt;
  for (int64_t i = 0; i < o.max_new; ++i) {
    const int64_t next = sampler.sample(logits.data(), cfg.vocab_size);
    out += static_cast<char>(next);
    logits = model.step(HostView<const int64_t>(&next, {1}), state);
  }
  return printable(out);
}

#if !RETNET_TRAIN_LM_CUDA
int train_cuda(const Options&, const std::vector<int64_t>&, retnet::dist::Communicator&) {
  retnet::fail(
      "--device cuda: this build of train_lm has no CUDA support (build it with RETNET_CUDA=ON where nvcc "
      "is installed)");
}
void require_device_memory(double, const std::string&) {}
#endif

}  // namespace retnet_examples::train_lm

int main(int argc, char** argv) {
  namespace tl = retnet_examples::train_lm;
  using namespace retnet;
#if RETNET_TRAIN_LM_MPI
  // Under mpirun: one rank per process. Started alone, a world of one.
  dist::MpiContext mpi(&argc, &argv);
  dist::MpiCommunicator mpi_comm;
  dist::Communicator& comm = mpi_comm;
#else
  dist::Communicator& comm = dist::single_process();
#endif
  // Every rank parses the same command line and reaches the same verdict on it: rank 0 reports it.
  return retnet_examples::guarded_main(
      "train_lm",
      [&] {
        const Options o = parse(argc, argv);
#if !RETNET_TRAIN_LM_NCCL
        if (o.device == "cuda")
          require(comm.size() == 1, "--device cuda trains in one process in this build (it has no NCCL); this job has ",
                  comm.size(), " ranks: run one process, or --device cpu, or build with RETNET_NCCL=ON and MPI");
#endif
        for (int r = 0; r < comm.size(); ++r) {
          const int64_t rows = dist::split_rows(o.batch, comm.size(), r).count;
          if (rows % o.accum != 0)
            throw UsageError("--batch " + std::to_string(o.batch) + " over " + std::to_string(comm.size()) +
                             " ranks gives rank " + std::to_string(r) + " " + std::to_string(rows) +
                             " rows, not divisible by --accum " + std::to_string(o.accum));
        }
        std::vector<int64_t> text;
        tl::agree(comm, [&] {
          const std::string raw = o.data.empty() ? retnet_examples::default_corpus() : read_data(o.data);
          const int64_t n = static_cast<int64_t>(raw.size());
          require(n - std::max<int64_t>(n / 10, o.seq + 2) > o.seq + 2, "the text has ", n,
                  " bytes; it needs more than ", 2 * (o.seq + 2), " for --seq ", o.seq, " (10 % is held out)");
          text.resize(raw.size());
          for (size_t i = 0; i < raw.size(); ++i) text[i] = static_cast<unsigned char>(raw[i]);
        });
        if (o.device == "cuda") return tl::train_cuda(o, text, comm);
        return tl::train<float>(o, text, cpu, comm, "cpu");
      },
      dist::is_root(comm));
}
