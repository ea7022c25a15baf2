// generate: continue a prompt with a RetNet checkpoint (one written by train_lm or io::save_weights, or a
// torchscale RetNetDecoder.state_dict() saved as safetensors).
//
//   generate --weights DIR/checkpoint.safetensors [--config C.json] --prompt "Once upon a time"
//            [--tokens 1,2,3] [--max-new 200] [--temperature 0.8] [--top-k 40] [--top-p 0.95] [--greedy]
//            [--seed 1] [--samples 1] [--stop BYTE] [--dtype float|double] [--bf16]
//            [--save-state S.safetensors] [--resume-state S.safetensors]
//
// The configuration comes from --config, else from the checkpoint's "config" metadata (train_lm writes it), else
// from config.json beside the checkpoint. --prompt is taken as bytes (byte-level models, vocab >= 256); --tokens
// gives token ids directly (any vocabulary). The prompt is prefilled with the chunkwise form, then tokens are
// decoded with recurrent steps; --samples N continues the same prompt N times in one batch (each with its own
// random stream). Output: the continuation as text for byte-level models, else as token ids.
// --save-state writes the recurrent state (one row per sample) after everything but the last generated token,
// which is stored in the file's metadata; --resume-state continues from such a state instead of a prompt.
// --bf16 multiplies with a bf16 copy of the weight matrices (Model::set_inference_weights): decoding streams half
// the bytes and runs faster, but the logits change slightly (bf16 rounding), so sampled text may differ from float.
#include "retnet/infer/generate.hpp"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "retnet/io/config_json.hpp"
#include "retnet/io/model_io.hpp"
#include "retnet/retnet.hpp"

using namespace retnet;

namespace {

struct Options {
  std::string weights, config, prompt, tokens, dtype = "float", save_state, resume_state;
  bool have_prompt = false, bf16 = false;
  int64_t max_new = 200, samples = 1, stop = -1;
  SamplingOptions sampling{.temperature = 0.8, .top_k = 40, .top_p = 0.95, .seed = 1};
};

const char* kUsage =
    "usage: generate --weights M.safetensors [--config C.json] (--prompt TEXT | --tokens 1,2,3 | --resume-state S)\n"
    "                [--max-new N] [--temperature T] [--top-k K] [--top-p P] [--greedy] [--seed S] [--samples N]\n"
    "                [--stop TOKEN] [--dtype float|double] [--bf16] [--save-state S.safetensors]\n"
    "  --bf16: bf16 copy of the weight matrices for inference (half the weight bytes: faster decoding; the logits "
    "change slightly)\n";

int64_t to_int(const std::string& k, const std::string& v) {
  try {
    size_t n = 0;
    const long long x = std::stoll(v, &n);
    if (n == v.size()) return x;
  } catch (const std::exception&) {
  }
  fail("generate: ", k, " expects an integer, got '", v, "'");
}
double to_double(const std::string& k, const std::string& v) {
  try {
    size_t n = 0;
    const double x = std::stod(v, &n);
    if (n == v.size()) return x;
  } catch (const std::exception&) {
  }
  fail("generate: ", k, " expects a number, got '", v, "'");
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (k == "--greedy") {
      o.sampling.greedy = true;
      continue;
    }
    if (k == "--bf16") {
      o.bf16 = true;
      continue;
    }
    require(i + 1 < argc, "generate: option ", k, " needs a value\n", kUsage);
    const std::string v = argv[++i];
    if (k == "--weights")
      o.weights = v;
    else if (k == "--config")
      o.config = v;
    else if (k == "--prompt") {
      o.prompt = v;
      o.have_prompt = true;
    } else if (k == "--tokens")
      o.tokens = v;
    else if (k == "--max-new")
      o.max_new = to_int(k, v);
    else if (k == "--temperature")
      o.sampling.temperature = to_double(k, v);
    else if (k == "--top-k")
      o.sampling.top_k = to_int(k, v);
    else if (k == "--top-p")
      o.sampling.top_p = to_double(k, v);
    else if (k == "--seed")
      o.sampling.seed = static_cast<uint64_t>(to_int(k, v));
    else if (k == "--samples")
      o.samples = to_int(k, v);
    else if (k == "--stop")
      o.stop = to_int(k, v);
    else if (k == "--dtype")
      o.dtype = v;
    else if (k == "--save-state")
      o.save_state = v;
    else if (k == "--resume-state")
      o.resume_state = v;
    else
      fail("generate: unknown option '", k, "'\n", kUsage);
  }
  require(!o.weights.empty(), "generate: --weights is required\n", kUsage);
  require(o.have_prompt + !o.tokens.empty() + !o.resume_state.empty() == 1,
          "generate: give exactly one of --prompt, --tokens and --resume-state\n", kUsage);
  require(o.samples >= 1, "generate: --samples must be at least 1");
  require(o.max_new >= (o.save_state.empty() ? 0 : 1), "generate: --max-new must be >= 0 (>= 1 with --save-state)");
  require(o.dtype == "float" || o.dtype == "double", "generate: --dtype must be float or double");
  o.sampling.validate();
  return o;
}

ModelConfig find_config(const Options& o, const io::SafetensorsFile& f) {
  if (!o.config.empty()) return io::load_config(o.config);
  auto it = f.metadata().find("config");
  if (it != f.metadata().end()) return io::config_from_json_string(it->second, nullptr, o.weights + " (metadata)");
  const auto beside = std::filesystem::path(o.weights).parent_path() / "config.json";
  require(std::filesystem::exists(beside), "generate: no --config given, no 'config' metadata in ", o.weights,
          " and no ", beside.string());
  return io::load_config(beside.string());
}

std::string show(const std::vector<int64_t>& toks, bool bytes) {
  std::string s;
  for (int64_t t : toks) {
    if (bytes && t < 256) {
      s += static_cast<char>(t);
      continue;
    }
    if (!s.empty() && !bytes) s += ' ';
    s += std::to_string(t);
    if (bytes) s += ' ';
  }
  return s;
}

template <class T>
int run(const Options& o) {
  const auto file = io::SafetensorsFile::open(o.weights);
  const ModelConfig cfg = find_config(o, file);
  Model<T> model(cfg);
  io::load_weights(model, file);
  if (o.bf16) model.set_inference_weights(WeightPrecision::bf16);  // after loading: the copy is a snapshot
  const int64_t V = cfg.vocab_size;
  const bool bytes = V >= 256 && o.tokens.empty();

  infer::GenerateOptions g{.max_new_tokens = o.max_new, .sampling = o.sampling, .stop_token = o.stop};
  std::vector<std::vector<int64_t>> out;
  typename Model<T>::State state;
  std::vector<int64_t> last;  // the last token of each row (fed to the next step)
  const auto t0 = std::chrono::steady_clock::now();

  if (!o.resume_state.empty()) {
    // Continue a saved state: its rows are the samples; the saved last tokens are fed first.
    state = infer::load_state(model, o.resume_state);
    const auto sf = io::SafetensorsFile::open(o.resume_state);
    require(sf.metadata().count("last_tokens"), o.resume_state, ": no 'last_tokens' metadata (not saved by generate)");
    std::istringstream in(sf.metadata().at("last_tokens"));
    for (std::string x; std::getline(in, x, ',');) last.push_back(to_int("last_tokens", x));
    require(static_cast<int64_t>(last.size()) == state.batch(), o.resume_state, ": last_tokens has ", last.size(),
            " entries for a batch of ", state.batch());
    std::vector<Sampler> samplers;
    for (int64_t r = 0; r < state.batch(); ++r) {
      SamplingOptions so = o.sampling;
      so.seed = mix_seed(o.sampling.seed, static_cast<uint64_t>(r));
      samplers.emplace_back(so);
    }
    out.assign(static_cast<size_t>(state.batch()), {});
    for (int64_t s = 0; s < o.max_new; ++s) {
      const Tensor<T> l = model.step(HostView<const int64_t>(last.data(), {state.batch()}), state);
      for (int64_t r = 0; r < state.batch(); ++r) {
        last[static_cast<size_t>(r)] = samplers[static_cast<size_t>(r)].sample(l.data() + r * V, V);
        out[static_cast<size_t>(r)].push_back(last[static_cast<size_t>(r)]);
      }
    }
  } else {
    std::vector<int64_t> prompt;
    if (o.have_prompt) {
      require(V >= 256, "generate: --prompt is byte-level and needs vocab_size >= 256 (this model has ", V,
              "); use --tokens");
      for (unsigned char c : o.prompt) prompt.push_back(c);
    } else {
      std::istringstream in(o.tokens);
      for (std::string x; std::getline(in, x, ',');) prompt.push_back(to_int("--tokens", x));
    }
    require(!prompt.empty(), "generate: the prompt is empty");
    const std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(o.samples), prompt);
    out = infer::generate(model, prompts, g, {}, o.save_state.empty() ? nullptr : &state);
    for (const auto& seq : out) last.push_back(seq.empty() ? prompt.back() : seq.back());
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  if (!o.save_state.empty()) {
    std::string lt;
    for (size_t i = 0; i < last.size(); ++i) {
      if (i) lt += ',';
      lt += std::to_string(last[i]);
    }
    infer::save_state(state, o.save_state, {{"last_tokens", lt}});
  }

  int64_t produced = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    produced += static_cast<int64_t>(out[i].size());
    if (out.size() > 1) std::cout << "--- sample " << i << " ---\n";
    if (o.have_prompt) std::cout << o.prompt;
    std::cout << show(out[i], bytes) << "\n";
  }
  std::cerr << produced << " tokens in " << secs << " s (" << (secs > 0 ? produced / secs : 0.0) << " tokens/s, "
            << "prefill included)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    return o.dtype == "double" ? run<double>(o) : run<float>(o);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
