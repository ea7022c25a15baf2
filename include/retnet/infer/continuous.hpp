#pragma once
// Continuous batching on any backend: a fixed number of slots (rows of one State) decode together; when a sequence
// ends (its stop token or its own length) its slot takes the next waiting prompt, prefilled into that slot's rows
// while the other rows keep their state, so the batch stays full until the prompts run out.
//
//   auto out = infer::generate_continuous(model, prompts, {.max_new_tokens = 64}, {.slots = 8});
//
// Sequence p samples with the seed mix_seed(seed, p), as infer::generate does, so its tokens do not depend on the
// slot count or on which prompts share its batch. How tokens are picked is the backend's TokenPicker: on host
// backends the CPU Sampler (the same tokens as infer::generate); on the GPU (retnet/cuda/generate.cuh) sampling
// kernels and a CUDA graph of the step, with only the ids crossing to the host.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "retnet/core/backend.hpp"
#include "retnet/core/error.hpp"
#include "retnet/infer/generate.hpp"
#include "retnet/infer/sampler.hpp"
#include "retnet/nn/model.hpp"

namespace retnet::infer {

struct ContinuousOptions {
  int64_t slots = 8;                // rows decoded together
  std::vector<int64_t> max_new;     // per prompt (empty: GenerateOptions::max_new_tokens for all)
  double repetition_penalty = 1.0;  // GPU sampling only; 1: none
};

// Picks the next token of rows of a State from its logits; specialised per backend.
template <class T, class B>
class TokenPicker;

template <class T>
class TokenPicker<T, Cpu> {
 public:
  using ModelT = Model<T, Cpu>;
  TokenPicker(ModelT& model, typename ModelT::State& state, const SamplingOptions& o, double repetition_penalty)
      : model_(model), state_(state), o_(o), samplers_(static_cast<size_t>(state.batch()), Sampler(o)) {
    require(repetition_penalty == 1.0, "infer::generate_continuous: repetition_penalty = ", repetition_penalty,
            " is a GPU sampling option; on the CPU it must be 1");
  }
  // A new sequence in `row`, sampling with `seed`.
  void start(int64_t row, uint64_t seed, const std::vector<int64_t>&) {
    SamplingOptions so = o_;
    so.seed = seed;
    samplers_[static_cast<size_t>(row)] = Sampler(so);
  }
  // Samples `row` from its logits in the state; the id also becomes the row's next input.
  int64_t pick_row(int64_t row) {
    const int64_t V = model_.config().vocab_size;
    const int64_t t = samplers_[static_cast<size_t>(row)].sample(state_.logits() + row * V, V);
    state_.tokens()[row] = t;
    return t;
  }
  // One step of every row from its last id, then the next id of every row.
  const int64_t* step_and_pick() {
    model_.step_enqueue(state_);
    for (auto& p : state_.positions) p += 1;
    for (int64_t r = 0; r < state_.batch(); ++r) pick_row(r);
    return state_.tokens();
  }

 private:
  ModelT& model_;
  typename ModelT::State& state_;
  SamplingOptions o_;
  std::vector<Sampler> samplers_;
};

// Continues every prompt by up to its max_new tokens with `cont.slots` rows decoding together; returns the new
// tokens of each prompt. on_token(prompt index, token) is called as tokens are produced.
template <class T, class B>
std::vector<std::vector<int64_t>> generate_continuous(Model<T, B>& model,
                                                      const std::vector<std::vector<int64_t>>& prompts,
                                                      const GenerateOptions& opt, const ContinuousOptions& cont = {},
                                                      const TokenCallback& on_token = {}) {
  opt.sampling.validate();
  const int64_t V = model.config().vocab_size, N = static_cast<int64_t>(prompts.size());
  require(N > 0, "infer::generate_continuous: no prompts");
  require(cont.slots > 0, "infer::generate_continuous: slots = ", cont.slots, " must be positive");
  require(opt.max_new_tokens >= 0, "infer::generate_continuous: max_new_tokens = ", opt.max_new_tokens, " is negative");
  require(cont.max_new.empty() || static_cast<int64_t>(cont.max_new.size()) == N,
          "infer::generate_continuous: ", cont.max_new.size(), " max_new values for ", N, " prompts");
  for (size_t i = 0; i < prompts.size(); ++i) {
    require(!prompts[i].empty(), "infer::generate_continuous: prompt ", i, " is empty; it needs at least one token");
    for (int64_t t : prompts[i])
      require(t >= 0 && t < V, "infer::generate_continuous: prompt ", i, " holds token ", t, ", outside [0, ", V, ")");
    if (!cont.max_new.empty())
      require(cont.max_new[i] >= 0, "infer::generate_continuous: max_new of prompt ", i, " = ", cont.max_new[i],
              " is negative");
  }
  auto limit = [&](int64_t p) {
    return cont.max_new.empty() ? opt.max_new_tokens : cont.max_new[static_cast<size_t>(p)];
  };
  std::vector<std::vector<int64_t>> out(prompts.size());
  const int64_t S = std::min(cont.slots, N);
  auto state = model.make_state(S);
  TokenPicker<T, B> picker(model, state, opt.sampling, cont.repetition_penalty);
  std::vector<int64_t> seq(static_cast<size_t>(S), -1);  // prompt index in each slot (-1: idle)
  int64_t next = 0;

  // Records a token of the sequence in `slot`; true when the sequence has ended.
  auto emit = [&](int64_t slot, int64_t tok) {
    const int64_t p = seq[static_cast<size_t>(slot)];
    out[static_cast<size_t>(p)].push_back(tok);
    if (on_token) on_token(p, tok);
    return tok == opt.stop_token || static_cast<int64_t>(out[static_cast<size_t>(p)].size()) >= limit(p);
  };
  // Gives `slot` the next waiting prompt that produces more than its first token (or leaves it idle).
  auto fill = [&](int64_t slot) {
    seq[static_cast<size_t>(slot)] = -1;
    while (next < N) {
      const int64_t p = next++;
      if (limit(p) == 0) continue;
      const auto& prompt = prompts[static_cast<size_t>(p)];
      model.reset_rows(state, slot, 1);
      model.prefill_rows(HostView<const int64_t>(prompt.data(), {1, static_cast<int64_t>(prompt.size())}), state, slot,
                         opt.prefill_form);
      picker.start(slot, mix_seed(opt.sampling.seed, static_cast<uint64_t>(p)), prompt);
      seq[static_cast<size_t>(slot)] = p;
      if (!emit(slot, picker.pick_row(slot))) return;
      seq[static_cast<size_t>(slot)] = -1;
    }
  };
  for (int64_t s = 0; s < S; ++s) fill(s);
  auto active = [&] { return std::any_of(seq.begin(), seq.end(), [](int64_t p) { return p >= 0; }); };
  while (active()) {
    const int64_t* ids = picker.step_and_pick();
    std::vector<int64_t> tok(ids, ids + S);  // the picker's buffer is reused by the prefill of a refilled slot
    for (int64_t s = 0; s < S; ++s)
      if (seq[static_cast<size_t>(s)] >= 0 && emit(s, tok[static_cast<size_t>(s)])) fill(s);
  }
  return out;
}

}  // namespace retnet::infer
