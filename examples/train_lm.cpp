// train_lm: trains a byte-level RetNet language model on the CPU and writes a sample at the end.
//
//   train_lm [--data FILE] [--steps N] [--batch B] [--seq T] [--layers L] [--dim D] [--heads H]
//            [--value-dim V] [--ffn F] [--chunk C] [--lr LR] [--warmup W] [--decay cosine|linear|constant]
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
// before anything is allocated when it exceeds the machine's.
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

namespace {

using retnet::fail;
using retnet::require;
using retnet_examples::UsageError;

constexpr int64_t kMaxData = int64_t{1} << 32;  // bytes of --data

struct Options {
  std::string data, out = "train_lm_out", resume, prompt = "The ", form = "chunkwise", decay = "cosine";
  bool do_resume = false;
  int64_t steps = 300, batch = 16, seq = 128, layers = 4, dim = 128, heads = 2, value_dim = 256, ffn = 256, chunk = 64,
          warmup = 30, accum = 1, segment = 0, ckpt_every = 200, eval_every = 100, max_new = 400, top_k = 0;
  double lr = 3e-3, weight_decay = 0.05, clip = 1.0, temperature = 0.7, top_p = 1.0, dropout = 0.0;
  uint64_t seed = 1234;
};

Options parse(int argc, char** argv) {
  Options o;
  CLI::App app("Trains a byte-level RetNet language model on the CPU and writes a sample at the end.", "train_lm");
  retnet_examples::setup_app(app);
  using retnet::io::ConfigLimits;
  using retnet_examples::finite_in;
  auto range = [](int64_t lo, int64_t hi) { return CLI::Range(lo, hi); };
  const int64_t big = int64_t{1} << 40;
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
  return o;
}

retnet::Form parse_form(const std::string& s) {
  if (s == "parallel") return retnet::Form::parallel;
  if (s == "recurrent") return retnet::Form::recurrent;
  return retnet::Form::chunkwise;
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
double estimate_memory(const Options& o, const retnet::ModelConfig& c, int64_t data_bytes) {
  const double P = static_cast<double>(retnet::io::estimated_parameter_count(c));
  const double L = static_cast<double>(c.decoder_layers), d = static_cast<double>(c.decoder_embed_dim);
  const double vd = static_cast<double>(c.decoder_value_embed_dim), f = static_cast<double>(c.decoder_ffn_embed_dim);
  const double tokens = static_cast<double>(o.batch) / static_cast<double>(o.accum) * static_cast<double>(o.seq);
  double act = tokens * (L * (6 * d + 4 * vd + 4 * f) + 3 * static_cast<double>(c.vocab_size));
  if (o.form == "parallel")
    act += static_cast<double>(o.batch) / static_cast<double>(o.accum) *
           static_cast<double>(c.decoder_retention_heads) * static_cast<double>(o.seq) * static_cast<double>(o.seq) * L;
  return 4.0 * (4.0 * P + act) + 9.0 * static_cast<double>(data_bytes);
}

std::string fmt_time(double s) {
  const int64_t t = static_cast<int64_t>(s + 0.5);
  char b[32];
  std::snprintf(b, sizeof b, "%02lld:%02lld", static_cast<long long>(t / 60), static_cast<long long>(t % 60));
  return b;
}

// Batch for step s: B random windows of the training split, a pure function of (seed, s).
void make_batch(const std::vector<int64_t>& text, int64_t train_end, uint64_t seed, int64_t step, int64_t B, int64_t T,
                std::vector<int64_t>& x, std::vector<int64_t>& y) {
  std::mt19937_64 g(seed ^ (0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(step + 1)));
  x.resize(static_cast<size_t>(B * T));
  y.resize(x.size());
  const uint64_t range = static_cast<uint64_t>(train_end - T - 1);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t o = static_cast<int64_t>(g() % range);
    for (int64_t t = 0; t < T; ++t) {
      x[static_cast<size_t>(b * T + t)] = text[static_cast<size_t>(o + t)];
      y[static_cast<size_t>(b * T + t)] = text[static_cast<size_t>(o + t + 1)];
    }
  }
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

int main(int argc, char** argv) {
  using namespace retnet;
  return retnet_examples::guarded_main("train_lm", [&] {
    const Options o = parse(argc, argv);
    // ---- data
    const std::string raw = o.data.empty() ? retnet_examples::default_corpus() : read_data(o.data);
    const int64_t n = static_cast<int64_t>(raw.size());
    const int64_t train_end = n - std::max<int64_t>(n / 10, o.seq + 2);
    require(train_end > o.seq + 2, "the text has ", n, " bytes; it needs more than ", 2 * (o.seq + 2), " for --seq ",
            o.seq, " (10 % is held out)");

    // ---- output directory: locked before anything in it is read or written
    const std::string ckpt = o.out + "/checkpoint.safetensors", best_path = o.out + "/best.safetensors",
                      csv_path = o.out + "/loss.csv";
    lock_output_dir(o.out);
    if (const int stale = remove_stale_temporaries(o.out))
      std::printf("removed %d temporary file(s) an interrupted run left in %s\n", stale, o.out.c_str());

    // ---- model
    ModelConfig cfg;
    cfg.vocab_size = 256;
    cfg.decoder_embed_dim = o.dim;
    cfg.decoder_retention_heads = o.heads;
    cfg.decoder_value_embed_dim = o.value_dim;
    cfg.decoder_ffn_embed_dim = o.ffn;
    cfg.decoder_layers = o.layers;
    cfg.recurrent_chunk_size = o.chunk;
    cfg.activation_fn = "swish";
    cfg.dropout = o.dropout;
    const std::string resume_path = o.resume.empty() ? ckpt : o.resume;
    // One open file for the whole resume: the configuration and the tensors come from the same checkpoint.
    std::optional<io::SafetensorsFile> resume_file;
    if (o.do_resume) {
      resume_file = io::SafetensorsFile::open(resume_path);
      cfg = read_training_checkpoint_info(*resume_file).config;  // the checkpoint's model wins
      require(cfg.vocab_size == 256, resume_path, ": vocab_size ", cfg.vocab_size,
              " is not a byte-level model (train_lm trains vocab_size 256)");
    }
    io::check_config_limits(cfg, "model");
    cfg.validate();
    retnet_examples::require_memory(estimate_memory(o, cfg, n), "this run (model, batch " + std::to_string(o.batch) +
                                                                    " x seq " + std::to_string(o.seq) + ", data)");
    std::vector<int64_t> text(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) text[i] = static_cast<unsigned char>(raw[i]);
    Model<float> model(cfg);
    model.init_torchscale(o.seed);
    TrainerConfig tc;
    tc.adamw.lr = o.lr;
    tc.adamw.weight_decay = o.weight_decay;
    tc.schedule = LrSchedule{o.warmup, o.steps, lr_decay_from_string(o.decay), 0.1};
    tc.grad_clip = o.clip;
    tc.accumulation_steps = o.accum;
    tc.form = parse_form(o.form);
    tc.segment_length = o.segment;
    tc.dropout_seed = o.seed;
    Trainer<float> trainer(model, tc);

    io::save_config(cfg, o.out + "/config.json");
    int64_t start = 0;
    if (o.do_resume) {
      const TrainingCheckpointInfo info = load_training_checkpoint(*resume_file, trainer);
      start = info.step;
      resume_file.reset();
      std::printf("resumed from %s at step %lld\n", resume_path.c_str(), static_cast<long long>(start));
    }
    // The best checkpoint so far (a resumed run continues the comparison).
    double best_val = INFINITY;
    int64_t best_step = 0;
    if (o.do_resume && std::filesystem::exists(best_path)) {
      try {
        const auto bf = io::SafetensorsFile::open(best_path);
        best_val = std::stod(bf.metadata().at("val_loss"));
        best_step = std::stoll(bf.metadata().at("step"));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "train_lm: warning: ignoring %s (%s); it will be replaced\n", best_path.c_str(), e.what());
      }
    }
    if (start >= o.steps) {
      std::printf("train_lm: the checkpoint is at step %lld and --steps is %lld: nothing left to train\n",
                  static_cast<long long>(start), static_cast<long long>(o.steps));
    }
    int64_t params = 0;
    for (const auto& p : model.param_table().entries()) params += p.numel();
    std::printf(
        "train_lm: %lld bytes of text (%s), model %lld parameters (d %lld, %lld layers, %lld heads), "
        "batch %lld x %lld, %lld steps, form %s%s\n",
        static_cast<long long>(n), o.data.empty() ? "embedded corpus" : o.data.c_str(), static_cast<long long>(params),
        static_cast<long long>(cfg.decoder_embed_dim), static_cast<long long>(cfg.decoder_layers),
        static_cast<long long>(cfg.decoder_retention_heads), static_cast<long long>(o.batch),
        static_cast<long long>(o.seq), static_cast<long long>(o.steps), o.form.c_str(),
        cfg.dropout > 0 ? (", dropout " + std::to_string(cfg.dropout)).c_str() : "");

    // held-out loss on fixed windows
    auto eval = [&]() {
      const int64_t T = o.seq, B = std::min<int64_t>(8, (n - train_end - 1) / T);
      if (B <= 0) return std::nan("");
      std::vector<int64_t> x(static_cast<size_t>(B * T)), y(x.size());
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t) {
          x[static_cast<size_t>(b * T + t)] = text[static_cast<size_t>(train_end + b * T + t)];
          y[static_cast<size_t>(b * T + t)] = text[static_cast<size_t>(train_end + b * T + t + 1)];
        }
      const Tensor<float> lg = model.forward(HostView<const int64_t>(x.data(), {B, T}), tc.form);
      return cross_entropy_forward_backward(cpu, lg.data(), y.data(), B * T, 256).mean();
    };

    if (start > 0) trim_loss_csv(csv_path, start);
    std::FILE* csv = std::fopen(csv_path.c_str(), start > 0 ? "ab" : "wb");
    require(csv != nullptr, csv_path, ": cannot open for writing: ", std::strerror(errno));
    if (start == 0) std::fputs("step,loss,val_loss,lr,grad_norm,tokens_per_s,elapsed_s\n", csv);
    // Rows reach the disk before the checkpoint that covers them, so a resumed run finds them all.
    auto sync_csv = [&] {
      require(std::fflush(csv) == 0, csv_path, ": write failed: ", std::strerror(errno));
      ::fsync(::fileno(csv));
    };
    const bool tty = isatty(1);
    std::vector<int64_t> x, y;
    const auto t0 = std::chrono::steady_clock::now();
    double ema = 0, first_loss = 0;
    int64_t tokens = 0;
    for (int64_t s = start; s < o.steps; ++s) {
      make_batch(text, train_end, o.seed, s, o.batch, o.seq, x, y);
      const StepStats st = trainer.step(HostView<const int64_t>(x.data(), {o.batch, o.seq}),
                                        HostView<const int64_t>(y.data(), {o.batch, o.seq}));
      tokens += st.tokens;
      ema = s == start ? st.loss : 0.9 * ema + 0.1 * st.loss;
      if (s == start) first_loss = st.loss;
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double tps = el > 0 ? static_cast<double>(tokens) / el : 0.0;
      const double eta = el / static_cast<double>(s + 1 - start) * static_cast<double>(o.steps - s - 1);
      double val = std::nan("");
      const bool last = s + 1 == o.steps;
      if ((o.eval_every > 0 && (s + 1) % o.eval_every == 0) || last) val = eval();
      std::fprintf(csv, "%lld,%g,%s,%g,%g,%g,%g\n", static_cast<long long>(s + 1), st.loss,
                   std::isnan(val) ? "" : std::to_string(val).c_str(), st.lr, st.grad_norm, tps, el);
      if (tty) {
        const int width = 30, done = static_cast<int>(width * (s + 1) / o.steps);
        std::printf("\r[%s%s] step %lld/%lld  loss %.3f  %.0f tok/s  ETA %s ", std::string(done, '#').c_str(),
                    std::string(width - done, '.').c_str(), static_cast<long long>(s + 1),
                    static_cast<long long>(o.steps), ema, tps, fmt_time(eta).c_str());
        std::fflush(stdout);
      }
      if (!std::isnan(val) || (!tty && (s + 1) % 25 == 0)) {
        if (tty) std::printf("\n");
        std::printf("step %5lld/%lld  loss %.4f%s  lr %.2e  |g| %.2f  %.0f tok/s  elapsed %s  ETA %s\n",
                    static_cast<long long>(s + 1), static_cast<long long>(o.steps), ema,
                    std::isnan(val) ? "" : ("  val " + std::to_string(val)).c_str(), st.lr, st.grad_norm, tps,
                    fmt_time(el).c_str(), fmt_time(eta).c_str());
        std::fflush(stdout);
      }
      const int64_t position = (s + 1) * o.batch * o.seq;
      if (!std::isnan(val) && val < best_val) {
        best_val = val;
        best_step = s + 1;
        save_training_checkpoint(best_path, trainer, position, {{"val_loss", std::to_string(val)}});
      }
      if ((o.ckpt_every > 0 && (s + 1) % o.ckpt_every == 0) || last) {
        sync_csv();
        save_training_checkpoint(ckpt, trainer, position);
      }
    }
    sync_csv();
    std::fclose(csv);
    if (o.steps > start)
      std::printf("\nloss %.3f -> %.3f over steps %lld..%lld; checkpoint %s\n", first_loss, ema,
                  static_cast<long long>(start + 1), static_cast<long long>(o.steps), ckpt.c_str());
    if (best_step > 0)
      std::printf("best held-out loss %.4f at step %lld: %s\n", best_val, static_cast<long long>(best_step),
                  best_path.c_str());

    // ---- loss curve
    if (plot_loss(o.out)) std::printf("loss curve: %s/loss.png\n", o.out.c_str());

    // ---- sample: chunkwise prefill of the prompt, then one recurrent step per byte
    if (o.max_new > 0) {
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
        const int64_t next = sampler.sample(logits.data(), 256);
        out += static_cast<char>(next);
        logits = model.step(HostView<const int64_t>(&next, {1}), state);
      }
      std::printf("\n--- sample (temperature %.2f) ---\n%s\n---\n", o.temperature, printable(out).c_str());
    }
    return 0;
  });
}
