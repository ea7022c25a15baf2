// retnet-logits: the logits of a RetNet checkpoint (ours or torchscale's) on given tokens, in any form.
//
//   retnet-logits --config C.json --weights M.safetensors --tokens T.npy --mode parallel|chunkwise|recurrent
//                 --out L.npy [--dtype float|double]
//
// T.npy holds int64 token ids [batch, length]; L.npy receives the logits [batch, length, vocab] as float32
// (--dtype float, the default) or float64 (--dtype double), computed in that precision. `recurrent` feeds the
// tokens one at a time as torchscale's incremental decoding does; `chunkwise` uses the configuration's
// recurrent_chunk_size. scripts/make_torchscale_golden.py check compares the output with torchscale.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "retnet/infer/generate.hpp"
#include "retnet/io/config_json.hpp"
#include "retnet/io/model_io.hpp"
#include "retnet/io/npy.hpp"
#include "retnet/retnet.hpp"

namespace retnet_logits {

struct Args {
  std::string config, weights, tokens, out, mode, dtype = "float";
};

inline const char* usage() {
  return "usage: retnet-logits --config C.json --weights M.safetensors --tokens T.npy\n"
         "                     --mode parallel|chunkwise|recurrent --out L.npy [--dtype float|double]\n";
}

inline Args parse(const std::vector<std::string>& argv) {
  Args a;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& k = argv[i];
    if (k == "-h" || k == "--help") throw retnet::Error(usage());
    retnet::require(i + 1 < argv.size(), "retnet-logits: option ", k, " needs a value\n", usage());
    const std::string& v = argv[++i];
    if (k == "--config")
      a.config = v;
    else if (k == "--weights")
      a.weights = v;
    else if (k == "--tokens")
      a.tokens = v;
    else if (k == "--out")
      a.out = v;
    else if (k == "--mode")
      a.mode = v;
    else if (k == "--dtype")
      a.dtype = v;
    else
      retnet::fail("retnet-logits: unknown option '", k, "'\n", usage());
  }
  retnet::require(!a.config.empty() && !a.weights.empty() && !a.tokens.empty() && !a.out.empty() && !a.mode.empty(),
                  "retnet-logits: --config, --weights, --tokens, --mode and --out are required\n", usage());
  retnet::require(a.mode == "parallel" || a.mode == "chunkwise" || a.mode == "recurrent", "retnet-logits: --mode '",
                  a.mode, "' is not one of parallel, chunkwise, recurrent");
  retnet::require(a.dtype == "float" || a.dtype == "double", "retnet-logits: --dtype '", a.dtype,
                  "' is not float or double");
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
  const retnet::ModelConfig cfg = retnet::io::load_config(a.config);
  retnet::Model<T> model(cfg);
  retnet::io::load_weights(model, a.weights);
  const retnet::Tensor<int64_t> tokens = retnet::io::read_npy<int64_t>(a.tokens);
  retnet::require(tokens.shape().rank() == 2 && tokens.size(0) > 0 && tokens.size(1) > 0, a.tokens,
                  ": tokens must be a non-empty int array [batch, length], got shape ", tokens.shape().to_string());
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
  try {
    retnet_logits::run(retnet_logits::parse(std::vector<std::string>(argv + 1, argv + argc)));
  } catch (const retnet::Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "retnet-logits: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
#endif
