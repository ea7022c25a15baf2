// train_lm: trains a byte-level RetNet language model on the CPU and writes a sample at the end.
//
//   train_lm [--data FILE] [--steps N] [--batch B] [--seq T] [--layers L] [--dim D] [--heads H]
//            [--value-dim V] [--ffn F] [--chunk C] [--lr LR] [--warmup W] [--decay cosine|linear|constant]
//            [--weight-decay WD] [--clip C] [--accum A] [--segment S] [--form chunkwise|parallel|recurrent]
//            [--dropout P] [--seed S] [--out DIR] [--ckpt-every N] [--eval-every N] [--resume [FILE]]
//            [--sample-len N] [--temperature T] [--prompt TEXT]
//
// Without --data it trains on the public-domain text embedded in examples/corpus.hpp. Writes DIR/loss.csv
// (and DIR/loss.png when gnuplot is installed), DIR/config.json, DIR/checkpoint.safetensors (parameters
// with torchscale's names + AdamW state; loads as a model file too). --resume continues from the checkpoint
// with exactly the losses an uninterrupted run would have had: batch s is a pure function of (seed, s).
// --dropout P (default 0) sets torchscale's `dropout` (embedding, retention and FFN outputs) for training;
// the held-out loss and the sample run without it. Its masks are a pure function of (seed, step) too.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "corpus.hpp"
#include "retnet/io/config_json.hpp"
#include "retnet/retnet.hpp"
#include "retnet/train/checkpoint.hpp"

namespace {

struct Options {
  std::string data, out = "train_lm_out", resume, prompt = "The ", form = "chunkwise", decay = "cosine";
  bool do_resume = false;
  int64_t steps = 300, batch = 16, seq = 128, layers = 4, dim = 128, heads = 2, value_dim = 256, ffn = 256, chunk = 64,
          warmup = 30, accum = 1, segment = 0, ckpt_every = 200, eval_every = 100, sample_len = 400;
  double lr = 3e-3, weight_decay = 0.05, clip = 1.0, temperature = 0.7, dropout = 0.0;
  uint64_t seed = 1234;
};

[[noreturn]] void usage(const std::string& msg) {
  std::cerr << "train_lm: " << msg << "\n(see the comment at the top of examples/train_lm.cpp for the options)\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage("option " + a + " needs a value");
      return argv[++i];
    };
    auto num = [&]() {
      const std::string v = val();
      try {
        size_t used = 0;
        const long long n = std::stoll(v, &used);
        if (used != v.size() || n < 0) throw 0;
        return static_cast<int64_t>(n);
      } catch (...) {
        usage("option " + a + " expects a non-negative integer, got '" + v + "'");
      }
    };
    auto real = [&]() {
      const std::string v = val();
      try {
        size_t used = 0;
        const double d = std::stod(v, &used);
        if (used != v.size()) throw 0;
        return d;
      } catch (...) {
        usage("option " + a + " expects a number, got '" + v + "'");
      }
    };
    if (a == "--data")
      o.data = val();
    else if (a == "--out")
      o.out = val();
    else if (a == "--prompt")
      o.prompt = val();
    else if (a == "--form")
      o.form = val();
    else if (a == "--decay")
      o.decay = val();
    else if (a == "--resume") {
      o.do_resume = true;
      if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) o.resume = argv[++i];
    } else if (a == "--steps")
      o.steps = num();
    else if (a == "--batch")
      o.batch = num();
    else if (a == "--seq")
      o.seq = num();
    else if (a == "--layers")
      o.layers = num();
    else if (a == "--dim")
      o.dim = num();
    else if (a == "--heads")
      o.heads = num();
    else if (a == "--value-dim")
      o.value_dim = num();
    else if (a == "--ffn")
      o.ffn = num();
    else if (a == "--chunk")
      o.chunk = num();
    else if (a == "--warmup")
      o.warmup = num();
    else if (a == "--accum")
      o.accum = num();
    else if (a == "--segment")
      o.segment = num();
    else if (a == "--ckpt-every")
      o.ckpt_every = num();
    else if (a == "--eval-every")
      o.eval_every = num();
    else if (a == "--sample-len")
      o.sample_len = num();
    else if (a == "--seed")
      o.seed = static_cast<uint64_t>(num());
    else if (a == "--lr")
      o.lr = real();
    else if (a == "--weight-decay")
      o.weight_decay = real();
    else if (a == "--clip")
      o.clip = real();
    else if (a == "--temperature")
      o.temperature = real();
    else if (a == "--dropout")
      o.dropout = real();
    else if (a == "--help" || a == "-h")
      usage("help");
    else
      usage("unknown option " + a);
  }
  return o;
}

retnet::Form parse_form(const std::string& s) {
  if (s == "chunkwise") return retnet::Form::chunkwise;
  if (s == "parallel") return retnet::Form::parallel;
  if (s == "recurrent") return retnet::Form::recurrent;
  usage("--form must be chunkwise, parallel or recurrent, got '" + s + "'");
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
  const Options o = parse(argc, argv);
  try {
    // ---- data
    std::string raw;
    if (o.data.empty()) {
      raw = retnet_examples::default_corpus();
    } else {
      std::ifstream f(o.data, std::ios::binary);
      require(static_cast<bool>(f), "cannot open --data file '", o.data, "'");
      std::ostringstream ss;
      ss << f.rdbuf();
      raw = ss.str();
    }
    std::vector<int64_t> text(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) text[i] = static_cast<unsigned char>(raw[i]);
    const int64_t n = static_cast<int64_t>(text.size());
    const int64_t train_end = n - std::max<int64_t>(n / 10, o.seq + 2);
    require(train_end > o.seq + 2, "the text has ", n, " bytes; it needs more than ", 2 * (o.seq + 2), " for --seq ",
            o.seq, " (10 % is held out)");

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
    const std::string ckpt = o.out + "/checkpoint.safetensors", csv_path = o.out + "/loss.csv";
    const std::string resume_path = o.resume.empty() ? ckpt : o.resume;
    if (o.do_resume) cfg = read_training_checkpoint_info(resume_path).config;  // the checkpoint's model wins
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

    std::filesystem::create_directories(o.out);
    io::save_config(cfg, o.out + "/config.json");
    int64_t start = 0;
    if (o.do_resume) {
      const TrainingCheckpointInfo info = load_training_checkpoint(resume_path, trainer);
      start = info.step;
      std::printf("resumed from %s at step %lld\n", resume_path.c_str(), static_cast<long long>(start));
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

    std::ofstream csv(csv_path, start > 0 ? std::ios::app : std::ios::trunc);
    if (start == 0) csv << "step,loss,val_loss,lr,grad_norm,tokens_per_s,elapsed_s\n";
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
      const double tps = static_cast<double>(tokens) / el;
      const double eta = el / static_cast<double>(s + 1 - start) * static_cast<double>(o.steps - s - 1);
      double val = std::nan("");
      const bool last = s + 1 == o.steps;
      if ((o.eval_every > 0 && (s + 1) % o.eval_every == 0) || last) val = eval();
      csv << s + 1 << ',' << st.loss << ',' << (std::isnan(val) ? std::string() : std::to_string(val)) << ',' << st.lr
          << ',' << st.grad_norm << ',' << tps << ',' << el << '\n';
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
      if ((o.ckpt_every > 0 && (s + 1) % o.ckpt_every == 0) || last)
        save_training_checkpoint(ckpt, trainer, (s + 1) * o.batch * o.seq);
    }
    csv.close();
    if (o.steps > start)
      std::printf("\nloss %.3f -> %.3f over steps %lld..%lld; checkpoint %s\n", first_loss, ema,
                  static_cast<long long>(start + 1), static_cast<long long>(o.steps), ckpt.c_str());

    // ---- loss curve
    if (std::system("command -v gnuplot > /dev/null 2>&1") == 0) {
      const std::string gp = o.out + "/loss.gp";
      std::ofstream g(gp);
      g << "set terminal pngcairo size 900,500\nset output '" << o.out << "/loss.png'\n"
        << "set datafile separator ','\nset key autotitle columnhead\nset xlabel 'step'\nset ylabel 'loss "
           "(nats/byte)'\n"
        << "set grid\nplot '" << csv_path << "' using 1:2 with lines title 'train', '" << csv_path
        << "' using 1:3 with linespoints title 'held-out'\n";
      g.close();
      if (std::system(("gnuplot '" + gp + "' 2>/dev/null").c_str()) == 0)
        std::printf("loss curve: %s/loss.png\n", o.out.c_str());
    }

    // ---- sample: chunkwise prefill of the prompt, then one recurrent step per byte
    if (o.sample_len > 0) {
      std::vector<int64_t> prompt;
      for (unsigned char c : o.prompt) prompt.push_back(c);
      if (prompt.empty()) prompt.push_back('\n');
      auto state = model.make_state(1);
      Tensor<float> logits =
          model.prefill(HostView<const int64_t>(prompt.data(), {1, static_cast<int64_t>(prompt.size())}), state);
      std::mt19937_64 g(o.seed + 7);
      std::string out = o.prompt;
      std::vector<double> p(256);
      for (int64_t i = 0; i < o.sample_len; ++i) {
        int64_t next = 0;
        if (o.temperature <= 0) {
          next = std::max_element(logits.data(), logits.data() + 256) - logits.data();
        } else {
          const float mx = *std::max_element(logits.data(), logits.data() + 256);
          double sum = 0;
          for (int v = 0; v < 256; ++v) sum += p[static_cast<size_t>(v)] = std::exp((logits[v] - mx) / o.temperature);
          double r = std::uniform_real_distribution<double>(0, sum)(g);
          for (next = 0; next < 255 && r >= p[static_cast<size_t>(next)]; ++next) r -= p[static_cast<size_t>(next)];
        }
        out += static_cast<char>(next);
        logits = model.step(HostView<const int64_t>(&next, {1}), state);
      }
      std::printf("\n--- sample (temperature %.2f) ---\n%s\n---\n", o.temperature, printable(out).c_str());
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "train_lm: %s\n", e.what());
    return 1;
  }
  return 0;
}
