// retnet-eval: perplexity of a model on a text file, chunk by chunk with the recurrent state carried across chunks,
// so the file may be of any length and memory stays that of one chunk.
//
//   retnet-eval --model DIR --text FILE [--chunk 512] [--max-tokens N] [--dtype float|double]
//
// DIR holds config.json, the weights (fla's format or ours, as generate --model) and tokenizer.json; the text is
// encoded with the tokenizer's bos first, and every following token is predicted from all tokens before it.
// Prints the token count, the mean negative log-likelihood (nats per token) and the perplexity exp(mean).
// retnet-eval --help lists the options; errors are one line on stderr (exit 2: bad command line, 1: other).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "model_dir.hpp"
#include "retnet/retnet.hpp"

using namespace retnet;

namespace {

struct Options {
  std::string model, text, dtype = "float";
  int64_t chunk = 512, max_tokens = 0;
};

Options parse(int argc, char** argv) {
  Options o;
  CLI::App app("Perplexity of a RetNet on a text file, chunkwise with the state carried (any length).", "retnet-eval");
  retnet_examples::setup_app(app);
  app.add_option("--model", o.model, "model directory (config.json, weights, tokenizer.json)")->required();
  app.add_option("--text", o.text, "text file (UTF-8)")->required();
  app.add_option("--chunk", o.chunk, "tokens per forward call")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--max-tokens", o.max_tokens, "evaluate at most this many tokens (0: all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  app.add_option("--dtype", o.dtype, "precision")->check(CLI::IsMember({"float", "double"}));
  retnet_examples::parse_args(app, retnet_examples::args_of(argc, argv));
  return o;
}

template <class T>
int run(const Options& o) {
  const retnet_examples::ModelDir dir = retnet_examples::inspect_model_dir(o.model);
  const auto tok = retnet_examples::model_dir_tokenizer(o.model);
  require(tok.has_value(), o.model, ": no tokenizer.json in the model directory");
  std::ifstream in(o.text, std::ios::binary);
  require(in.good(), o.text, ": cannot open the text file");
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<int64_t> ids = tok->encode(ss.str(), /*add_bos=*/true);
  if (o.max_tokens > 0 && static_cast<int64_t>(ids.size()) > o.max_tokens + 1) ids.resize(o.max_tokens + 1);
  require(ids.size() >= 2, o.text, ": fewer than two tokens; nothing to predict");
  const ModelConfig& cfg = dir.config;
  for (int64_t id : ids)
    require(id < cfg.vocab_size, "token ", id, " of the tokenizer is outside the model's vocabulary ", cfg.vocab_size);

  const auto t0 = std::chrono::steady_clock::now();
  Model<T> model(cfg);
  retnet_examples::load_model_weights(dir, model);
  const auto t1 = std::chrono::steady_clock::now();

  // Two sets of per-layer states: each chunk reads one and writes the other.
  auto a = model.make_state(1), b = model.make_state(1);
  auto ptrs = [](typename Model<T>::State& s) {
    std::vector<StatePtrs<T>> p;
    for (size_t l = 0; l < s.kv.size(); ++l) p.push_back({s.kv[l].data(), s.scale[l].data()});
    return p;
  };
  const int64_t V = cfg.vocab_size, n = static_cast<int64_t>(ids.size()) - 1;  // inputs ids[0..n), targets ids[1..n]
  double nll = 0;
  std::unique_ptr<typename Model<T>::Workspace> ws;
  for (int64_t start = 0; start < n; start += o.chunk) {
    const int64_t len = std::min(o.chunk, n - start);
    if (!ws || ws->length() != len) ws = std::make_unique<typename Model<T>::Workspace>(model, 1, len, false);
    const std::vector<StatePtrs<T>> sin = start == 0 ? std::vector<StatePtrs<T>>{} : ptrs(a), sout = ptrs(b);
    model.forward_train(ids.data() + start, Form::chunkwise, *ws, &start, sin, sout);
    const T* logits = ws->logits();
    for (int64_t t = 0; t < len; ++t) {
      const T* row = logits + t * V;
      double mx = row[0];
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
      double z = 0;
      for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(row[v]) - mx);
      nll += mx + std::log(z) - static_cast<double>(row[ids[static_cast<size_t>(start + t + 1)]]);
    }
    std::swap(a, b);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  const double load = std::chrono::duration<double>(t1 - t0).count();
  std::printf("tokens %lld  nll %.6f nats/token  perplexity %.4f\n", static_cast<long long>(n),
              nll / static_cast<double>(n), std::exp(nll / static_cast<double>(n)));
  std::fprintf(stderr, "load %.2f s, %lld tokens in %.2f s (%.1f tokens/s)\n", load, static_cast<long long>(n), secs,
               secs > 0 ? static_cast<double>(n) / secs : 0.0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return retnet_examples::guarded_main("retnet-eval", [&] {
    const Options o = parse(argc, argv);
    return o.dtype == "double" ? run<double>(o) : run<float>(o);
  });
}
