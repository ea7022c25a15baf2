// generate: continue a prompt with a RetNet checkpoint (one written by train_lm or io::save_weights, a
// torchscale RetNetDecoder.state_dict() saved as safetensors, or a model directory such as fla's hub downloads).
//
//   generate --model DIR --prompt "Once upon a time"     (DIR: config.json, model.safetensors, tokenizer.json)
//   generate --weights DIR/checkpoint.safetensors [--config C.json] --prompt "Once upon a time"
//            [--tokens 1,2,3] [--max-new 200] [--temperature 0.8] [--top-k 40] [--top-p 0.95] [--greedy]
//            [--seed 1] [--samples 1] [--stop BYTE] [--dtype float|double] [--bf16]
//            [--save-state S.safetensors] [--resume-state S.safetensors] [--device cpu|cuda]
//            [--batch-file prompts.txt [--slots 8]]
//
// generate --help lists the options; errors are one line on stderr (exit 2: bad command line, 1: other).
// The configuration comes from --config, else from the checkpoint's "config" metadata (train_lm writes it), else
// from config.json beside the checkpoint. --prompt is taken as bytes (byte-level models, vocab >= 256); --tokens
// gives token ids directly (any vocabulary), as a comma list or an int .npy file (as retnet-logits takes them).
// --model DIR takes fla's format or ours (examples/model_dir.hpp); with DIR/tokenizer.json the prompt is text
// (encoded with the tokenizer's bos), the continuation streams out as text and generation stops at eos (unless --stop
// says otherwise). The
// prompt is prefilled with the chunkwise form, then tokens are decoded with recurrent steps; --samples N continues the
// same prompt N times in one batch (each with its own random stream). Output: the continuation as text for byte-level
// models, else as token ids.
// --save-state writes the recurrent state (one row per sample) after everything but the last generated token,
// which is stored in the file's metadata; --resume-state continues from such a state instead of a prompt.
// --batch-file continues every line of a file (one prompt per line: bytes for byte-level models, else comma lists of
// token ids) with continuous batching: --slots sequences decode together and a finished one's slot takes the next
// waiting prompt. --device cuda decodes on the current GPU (sampling on the GPU, the step replayed as a CUDA graph)
// with the same flags, except --save-state, --resume-state and --dtype double, which are CPU-only; its output is
// printed when every row is done rather than streamed.
// --bf16 multiplies with bf16 weights (on the CPU a bf16 copy of the weight matrices, Model::set_inference_weights;
// on the GPU the model stored in bf16, the state kept in float): decoding streams half the bytes and runs faster,
// but the logits change slightly (bf16 rounding), so sampled text may differ from float.
#include "retnet/infer/generate.hpp"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cli.hpp"
#include "generate_cuda.hpp"
#include "model_dir.hpp"
#include "retnet/infer/continuous.hpp"
#include "retnet/io/config_json.hpp"
#include "retnet/io/model_io.hpp"
#include "retnet/io/npy.hpp"
#include "retnet/retnet.hpp"

using namespace retnet;

namespace {

struct Options {
  std::string weights, model, config, prompt, tokens, dtype = "float", save_state, resume_state, device = "cpu",
                                                      batch_file;
  bool have_prompt = false, bf16 = false;
  int64_t max_new = 200, samples = 1, stop = -1, slots = 8;
  SamplingOptions sampling{.temperature = 0.8, .top_k = 40, .top_p = 0.95, .seed = 1};
};

constexpr int64_t kMaxNew = int64_t{1} << 24, kMaxSamples = int64_t{1} << 16, kMaxToken = int64_t{1} << 24;

int64_t to_int(const std::string& k, const std::string& v) {
  try {
    size_t n = 0;
    const long long x = std::stoll(v, &n);
    if (n == v.size()) return x;
  } catch (const std::exception&) {
  }
  fail(k, " expects an integer, got '", v, "'");
}

Options parse(int argc, char** argv) {
  Options o;
  CLI::App app(
      "Continues a prompt with a RetNet checkpoint (train_lm's, io::save_weights', or torchscale's state_dict as "
      "safetensors).",
      "generate");
  retnet_examples::setup_app(app);
  auto* weights = app.add_option("--weights", o.weights, "model weights or training checkpoint (safetensors)");
  auto* model = app.add_option("--model", o.model,
                               "model directory: fla's (hub download) or ours; tokenizer.json there gives text");
  weights->excludes(model);
  app.add_option("--config", o.config,
                 "model configuration (JSON); default: the checkpoint's or config.json beside it");
  auto* prompt = app.add_option("--prompt", o.prompt, "prompt text, as bytes (byte-level models)");
  auto* tokens = app.add_option("--tokens", o.tokens,
                                "prompt token ids: a comma list (1,2,3) or an int .npy [length] / [1, length]");
  auto* resume = app.add_option("--resume-state", o.resume_state, "continue a state saved by --save-state");
  auto* batch = app.add_option("--batch-file", o.batch_file, "prompts, one per line, decoded with continuous batching");
  prompt->excludes(tokens)->excludes(resume)->excludes(batch);
  tokens->excludes(resume)->excludes(batch);
  resume->excludes(batch);
  app.add_option("--slots", o.slots, "with --batch-file: sequences decoded together")
      ->check(CLI::Range(int64_t{1}, kMaxSamples));
  app.add_option("--device", o.device, "where to decode: cpu, or cuda (the current GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--max-new", o.max_new, "tokens to generate")->check(CLI::Range(int64_t{0}, kMaxNew));
  app.add_option("--temperature", o.sampling.temperature, "sampling temperature (0: greedy)")
      ->check(retnet_examples::finite_in(0, 1e6));
  app.add_option("--top-k", o.sampling.top_k, "sample among the k most likely tokens (0: all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
  app.add_option("--top-p", o.sampling.top_p, "nucleus sampling mass, in (0, 1]")
      ->check(retnet_examples::finite_in(1e-9, 1));
  app.add_flag("--greedy", o.sampling.greedy, "always take the most likely token");
  app.add_option("--seed", o.sampling.seed, "random seed");
  app.add_option("--samples", o.samples, "continuations of the prompt, in one batch")
      ->check(CLI::Range(int64_t{1}, kMaxSamples));
  app.add_option("--stop", o.stop, "stop a row at this token (-1: never, or the eos of --model's tokenizer)")
      ->check(CLI::Range(int64_t{-1}, kMaxToken));
  app.add_option("--dtype", o.dtype, "precision")->check(CLI::IsMember({"float", "double"}));
  app.add_flag("--bf16", o.bf16, "decode with bf16 weights (faster; logits change slightly)");
  app.add_option("--save-state", o.save_state, "write the recurrent state at the end (safetensors)");
  retnet_examples::parse_args(app, retnet_examples::args_of(argc, argv));
  o.have_prompt = prompt->count() > 0;
  if (weights->count() + model->count() != 1)
    throw retnet_examples::UsageError("give exactly one of --weights and --model (see generate --help)");
  if (model->count() && !o.config.empty())
    throw retnet_examples::UsageError("--config goes with --weights, not --model");
  if (o.have_prompt + tokens->count() + resume->count() + batch->count() != 1)
    throw retnet_examples::UsageError(
        "give exactly one of --prompt, --tokens, --resume-state and --batch-file (see generate --help)");
  if (!o.batch_file.empty() && o.samples != 1)
    throw retnet_examples::UsageError("--samples applies to --prompt and --tokens, not to --batch-file");
  if (!o.batch_file.empty() && !o.save_state.empty())
    throw retnet_examples::UsageError("--save-state applies to --prompt and --tokens, not to --batch-file");
  if (o.device == "cuda") {
    if (!o.save_state.empty() || !o.resume_state.empty() || o.dtype != "float")
      throw retnet_examples::UsageError(
          "--save-state, --resume-state and --dtype double are CPU-only; leave them out with --device cuda");
  }
  if (!o.save_state.empty() && o.max_new < 1)
    throw retnet_examples::UsageError("--max-new must be >= 1 with --save-state");
  o.sampling.validate();
  return o;
}

// The prompt of --tokens: a comma list of ids, or a .npy file of them.
std::vector<int64_t> prompt_tokens(const std::string& arg) {
  std::vector<int64_t> prompt;
  if (arg.size() > 4 && arg.compare(arg.size() - 4, 4, ".npy") == 0) {
    const Tensor<int64_t> t = io::read_npy<int64_t>(arg);
    require(t.shape().rank() == 1 || (t.shape().rank() == 2 && t.size(0) == 1), arg,
            ": --tokens expects an int array [length] or [1, length], got shape ", t.shape().to_string());
    prompt.assign(t.storage().begin(), t.storage().end());
  } else {
    std::istringstream in(arg);
    for (std::string x; std::getline(in, x, ',');) prompt.push_back(to_int("--tokens", x));
  }
  return prompt;
}

// The prompts of --batch-file: one per non-empty line, as text through tok (when given), bytes (bytes = true) or a
// comma list of ids.
std::vector<std::vector<int64_t>> batch_prompts(const std::string& path, bool bytes, const io::Tokenizer* tok) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), path, ": cannot open --batch-file");
  std::vector<std::vector<int64_t>> prompts;
  int64_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::vector<int64_t> p;
    if (tok) {
      p = tok->encode(line, /*add_bos=*/true);
    } else if (bytes) {
      for (unsigned char c : line) p.push_back(c);
    } else {
      std::istringstream ids(line);
      for (std::string x; std::getline(ids, x, ',');) p.push_back(to_int(path + " line " + std::to_string(line_no), x));
    }
    prompts.push_back(std::move(p));
  }
  require(!prompts.empty(), path, ": --batch-file holds no prompt");
  return prompts;
}

ModelConfig find_config(const Options& o, const io::SafetensorsFile& f) {
  if (!o.config.empty()) return io::load_config(o.config);
  auto it = f.metadata().find("config");
  if (it != f.metadata().end()) return io::config_from_json_string(it->second, nullptr, o.weights + " (metadata)");
  const auto beside = std::filesystem::path(o.weights).parent_path() / "config.json";
  require(std::filesystem::exists(beside), "no --config given, no 'config' metadata in ", o.weights, " and no ",
          beside.string());
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
  std::optional<io::SafetensorsFile> file;
  std::optional<retnet_examples::ModelDir> dir;
  std::optional<io::Tokenizer> tok;
  if (o.model.empty()) {
    file = io::SafetensorsFile::open(o.weights);
  } else {
    dir = retnet_examples::inspect_model_dir(o.model);
    tok = retnet_examples::model_dir_tokenizer(o.model);
  }
  const ModelConfig cfg = dir ? dir->config : find_config(o, *file);
  require(o.stop < cfg.vocab_size, "--stop ", o.stop, " is outside the vocabulary [0, ", cfg.vocab_size, ")");
  {
    // Parameters (and the bf16 copy), then per sample the recurrent state (layers x H x dk x dv), the logits
    // and the generated tokens.
    const double sz = sizeof(T), L = static_cast<double>(cfg.decoder_layers);
    const double state = L * static_cast<double>(cfg.key_embed_dim()) *
                         static_cast<double>(cfg.decoder_value_embed_dim) /
                         static_cast<double>(cfg.decoder_retention_heads);
    const double per_sample =
        sz * (state + 4.0 * static_cast<double>(cfg.vocab_size)) + 8.0 * static_cast<double>(o.max_new);
    retnet_examples::require_memory(
        (sz + (o.bf16 ? 2.0 : 0.0)) * static_cast<double>(io::estimated_parameter_count(cfg)) +
            static_cast<double>(o.samples) * per_sample,
        "--samples " + std::to_string(o.samples) + " --max-new " + std::to_string(o.max_new) + " with this model");
  }
  Model<T> model(cfg);
  if (dir)
    retnet_examples::load_model_weights(*dir, model);
  else
    io::load_weights(model, *file);
  // after loading: the copy is a snapshot (on the GPU, the model is stored in bf16 instead)
  if (o.bf16 && o.device == "cpu") model.set_inference_weights(WeightPrecision::bf16);
  const int64_t V = cfg.vocab_size;
  const bool bytes = V >= 256 && o.tokens.empty() && !tok;
  const bool text = tok && o.have_prompt;
  int64_t stop = o.stop;
  if ((text || (tok && !o.batch_file.empty())) && stop < 0 && tok->eos_id() >= 0 && tok->eos_id() < V)
    stop = tok->eos_id();
  if (tok)
    require(tok->vocab_size() <= V, o.model, "/tokenizer.json has ", tok->vocab_size(), " tokens, the model ", V);

  // The prompt of --prompt (text through the tokenizer, or bytes) or --tokens.
  auto the_prompt = [&] {
    std::vector<int64_t> prompt;
    if (text) {
      prompt = tok->encode(o.prompt, /*add_bos=*/true);
    } else if (o.have_prompt) {
      require(V >= 256, "--prompt is byte-level and needs vocab_size >= 256 (this model has ", V, "); use --tokens");
      for (unsigned char c : o.prompt) prompt.push_back(c);
    } else {
      prompt = prompt_tokens(o.tokens);
    }
    require(!prompt.empty(), "the prompt is empty");
    return prompt;
  };
  infer::GenerateOptions g{.max_new_tokens = o.max_new, .sampling = o.sampling, .stop_token = stop};
  std::vector<std::vector<int64_t>> out;
  typename Model<T>::State state;
  std::vector<int64_t> last;                      // the last token of each row (fed to the next step)
  std::vector<std::vector<int64_t>> batch_lines;  // the prompts of --batch-file
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
  } else if (!o.batch_file.empty() || o.device == "cuda") {
    // Continuous batching: the lines of --batch-file, or --samples copies of one prompt.
    std::vector<std::vector<int64_t>> prompts;
    if (!o.batch_file.empty()) {
      prompts = batch_prompts(o.batch_file, V >= 256, tok ? &*tok : nullptr);
    } else {
      prompts.assign(static_cast<size_t>(o.samples), the_prompt());
    }
    const int64_t slots = o.batch_file.empty() ? o.samples : o.slots;
    if (o.device == "cuda") {
      if constexpr (std::is_same_v<T, float>) {
#if defined(RETNET_GENERATE_CUDA)
        const auto params = model.params_to_host();
        auto r = retnet_examples::generate::generate_cuda(cfg, params, prompts, g, slots, o.bf16);
        std::cerr << "decoding on " << r.device << "\n";
        out = std::move(r.tokens);
#else
        fail(
            "--device cuda: this build of generate has no CUDA support (build it with RETNET_CUDA=ON where nvcc "
            "is found)");
#endif
      }
    } else {
      infer::ContinuousOptions c;
      c.slots = slots;
      out = infer::generate_continuous(model, prompts, g, c);
    }
    if (!o.batch_file.empty()) batch_lines = std::move(prompts);
  } else {
    const std::vector<int64_t> prompt = the_prompt();
    const std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(o.samples), prompt);
    // One sample of text streams out as it is generated; the decoder sees the prompt first (spaces join right).
    std::optional<io::StreamDecoder> stream;
    infer::TokenCallback on_token;
    if (text && o.samples == 1) {
      stream.emplace(*tok);
      for (int64_t id : prompt) (void)stream->step(id);
      std::cout << o.prompt << std::flush;
      on_token = [&](int64_t, int64_t id) { std::cout << stream->step(id) << std::flush; };
    }
    out = infer::generate(model, prompts, g, on_token, o.save_state.empty() ? nullptr : &state);
    if (stream) std::cout << stream->finish() << "\n";
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

  // One sample of text on the CPU streamed out as it was generated.
  const bool streamed = text && o.samples == 1 && o.resume_state.empty() && o.batch_file.empty() && o.device == "cpu";
  int64_t produced = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    produced += static_cast<int64_t>(out[i].size());
    if (streamed) continue;
    if (!batch_lines.empty()) {
      std::cout << "--- prompt " << i << " ---\n";
      if (tok)
        std::cout << tok->decode(batch_lines[i], /*skip_special=*/true) << " | ";
      else
        std::cout << show(batch_lines[i], bytes) << (bytes ? "" : " | ");
    } else {
      if (out.size() > 1) std::cout << "--- sample " << i << " ---\n";
      if (o.have_prompt) std::cout << o.prompt;
    }
    if (tok && (o.have_prompt || !o.resume_state.empty() || !batch_lines.empty()))
      std::cout << tok->decode(out[i], /*skip_special=*/true) << "\n";
    else
      std::cout << show(out[i], bytes) << "\n";
  }
  std::cerr << produced << " tokens in " << secs << " s (" << (secs > 0 ? produced / secs : 0.0) << " tokens/s, "
            << "prefill included)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return retnet_examples::guarded_main("generate", [&] {
    const Options o = parse(argc, argv);
    return o.dtype == "double" ? run<double>(o) : run<float>(o);
  });
}
