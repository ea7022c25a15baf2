// retnet-logits: the logits of a RetNet checkpoint (ours or torchscale's) on given tokens, in any form.
//
//   retnet-logits --config C.json --weights M.safetensors --tokens T.npy --mode parallel|chunkwise|recurrent
//                 --out L.npy [--dtype float|double]
//   retnet-logits --model DIR ...      (a model directory: fla's format or ours, as generate --model)
//
// T.npy holds int64 token ids [batch, length]; L.npy receives the logits [batch, length, vocab] as float32
// (--dtype float, the default) or float64 (--dtype double), computed in that precision. `recurrent` feeds the
// tokens one at a time as torchscale's incremental decoding does; `chunkwise` uses the configuration's
// recurrent_chunk_size. scripts/make_torchscale_golden.py check compares the output with torchscale.
// retnet-logits --help lists the options; errors are one line on stderr (exit 2: bad command line, 1: other).
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "model_dir.hpp"
#include "retnet/infer/generate.hpp"
#include "retnet/io/config_json.hpp"
#include "retnet/io/model_io.hpp"
#include "retnet/io/npy.hpp"
#include "retnet/retnet.hpp"

namespace retnet_logits {

struct Args {
  std::string config, weights, model, tokens, out, mode, dtype = "float";
};

// Parses the arguments (without the program name). A bad command line is a retnet_examples::UsageError;
// --help and --version print and throw retnet_examples::Exit.
inline Args parse(const std::vector<std::string>& argv) {
  Args a;
  CLI::App app("The logits of a RetNet checkpoint (ours or torchscale's) on given tokens.", "retnet-logits");
  retnet_examples::setup_app(app);
  auto* config = app.add_option("--config", a.config, "model configuration (JSON)");
  auto* weights = app.add_option("--weights", a.weights, "model weights (safetensors)");
  auto* model = app.add_option("--model", a.model, "model directory (fla's format or ours) instead of both");
  model->excludes(config)->excludes(weights);
  app.add_option("--tokens", a.tokens, "token ids: int .npy [batch, length]")->required();
  app.add_option("--mode", a.mode, "the form the logits are computed in")
      ->required()
      ->check(CLI::IsMember({"parallel", "chunkwise", "recurrent"}));
  app.add_option("--out", a.out, "output .npy [batch, length, vocab]")->required();
  app.add_option("--dtype", a.dtype, "precision of the computation and of the output")
      ->check(CLI::IsMember({"float", "double"}));
  retnet_examples::parse_args(app, argv);
  if (model->count() == 0 && (config->count() == 0 || weights->count() == 0))
    throw retnet_examples::UsageError("give --config and --weights, or --model (see retnet-logits --help)");
  return a;
}

inline retnet::Form form_of(const std::string& m) {
  return m == "parallel"    ? retnet::Form::parallel
         : m == "chunkwise" ? retnet::Form::chunkwise
                            : retnet::Form::recurrent;
}

// Loads everything, checks the tokens against the vocabulary, returns the logits.
template <class T>
retnet::Tensor<T> compute(const Args& a) {
  std::optional<retnet_examples::ModelDir> dir;
  if (!a.model.empty()) dir = retnet_examples::inspect_model_dir(a.model);
  const retnet::ModelConfig cfg = dir ? dir->config : retnet::io::load_config(a.config);
  const retnet::Tensor<int64_t> tokens = retnet::io::read_npy<int64_t>(a.tokens);
  retnet::require(tokens.shape().rank() == 2 && tokens.size(0) > 0 && tokens.size(1) > 0, a.tokens,
                  ": tokens must be a non-empty int array [batch, length], got shape ", tokens.shape().to_string());
  {
    // Parameters, the output logits and per token and layer a few activations of the model's widths.
    const double n = static_cast<double>(tokens.numel()), sz = sizeof(T);
    const double per_token =
        2.0 * static_cast<double>(cfg.vocab_size) +
        static_cast<double>(cfg.decoder_layers) *
            (4.0 * static_cast<double>(cfg.key_embed_dim() + cfg.decoder_embed_dim + cfg.decoder_value_embed_dim) +
             2.0 * static_cast<double>(cfg.decoder_ffn_embed_dim));
    retnet_examples::require_memory(
        sz * (static_cast<double>(retnet::io::estimated_parameter_count(cfg)) + n * per_token),
        "retnet-logits: " + tokens.shape().to_string() + " tokens through this model");
  }
  retnet::Model<T> model(cfg);
  if (dir)
    retnet_examples::load_model_weights(*dir, model);
  else
    retnet::io::load_weights(model, a.weights);
  for (int64_t i = 0; i < tokens.numel(); ++i)
    retnet::require(tokens[i] >= 0 && tokens[i] < cfg.vocab_size, a.tokens, ": token ", tokens[i], " at flat index ", i,
                    " is outside the vocabulary [0, ", cfg.vocab_size, ")");
  return retnet::infer::logits(model, tokens.cview(), form_of(a.mode));
}

inline void run(const Args& a) {
  if (a.dtype == "double")
    retnet::io::write_npy(a.out, compute<double>(a));
  else
    retnet::io::write_npy(a.out, compute<float>(a));
}

}  // namespace retnet_logits

#ifndef RETNET_LOGITS_NO_MAIN
int main(int argc, char** argv) {
  return retnet_examples::guarded_main("retnet-logits", [&] {
    retnet_logits::run(retnet_logits::parse(retnet_examples::args_of(argc, argv)));
    return 0;
  });
}
#endif
