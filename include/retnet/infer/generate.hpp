#pragma once
// Inference with a Model<T>: logits of whole sequences in any form, batched generation (chunkwise prefill of
// each prompt, then recurrent steps of all sequences together), and recurrent states saved to and restored
// from safetensors.
//
//   auto logits = infer::logits(model, tokens, Form::recurrent);          // [B, T, V], token by token
//   auto out = infer::generate(model, {{1, 2, 3}, {4, 5}}, {.max_new_tokens = 20, .sampling = {.seed = 1}});
//   infer::save_state(state, "state.safetensors");  auto s = infer::load_state(model, "state.safetensors");
//
// Batched decoding: prompts of equal length are prefilled together, each group in one call; the per-row states
// are then stacked into one batch (a State carries one position per row, so rows at different positions step
// together). Each sequence samples from its own generator, seeded with mix_seed(seed, index of the prompt), so a
// sequence's tokens do not depend on which other prompts share its batch.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "retnet/core/error.hpp"
#include "retnet/core/retention_args.hpp"
#include "retnet/core/tensor.hpp"
#include "retnet/infer/sampler.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/nn/model.hpp"

namespace retnet::infer {

// Logits [B, T, V] of every position. parallel and chunkwise run Model::forward (chunkwise with the
// configuration's recurrent_chunk_size); recurrent feeds one token per step from an empty state, as torchscale's
// incremental decoding does.
template <class T>
Tensor<T> logits(Model<T>& model, HostView<const int64_t> tokens, Form form) {
  require(tokens.rank() == 2 && tokens.size(0) > 0 && tokens.size(1) > 0, "infer::logits: tokens has shape ",
          tokens.shape().to_string(), ", expected [batch, length] with both positive");
  if (form != Form::recurrent) return model.forward(tokens, form);
  const int64_t B = tokens.size(0), Tn = tokens.size(1), V = model.config().vocab_size;
  Tensor<T> out({B, Tn, V});
  auto state = model.make_state(B);
  std::vector<int64_t> col(static_cast<size_t>(B));
  for (int64_t t = 0; t < Tn; ++t) {
    for (int64_t b = 0; b < B; ++b) col[static_cast<size_t>(b)] = tokens.data()[b * Tn + t];
    const Tensor<T> l = model.step(HostView<const int64_t>(col.data(), {B}), state);
    for (int64_t b = 0; b < B; ++b) std::copy_n(l.data() + b * V, V, out.data() + (b * Tn + t) * V);
  }
  return out;
}

// ---- states -------------------------------------------------------------------------------------------------
// Rows `rows` of `s` (in that order) as a new state.
template <class T>
typename Model<T>::State select_rows(const Model<T>& model, const typename Model<T>::State& s,
                                     const std::vector<int64_t>& rows) {
  require(!rows.empty(), "infer::select_rows: no rows selected");
  typename Model<T>::State r = model.make_state(static_cast<int64_t>(rows.size()));
  for (size_t l = 0; l < s.kv.size(); ++l) {
    const int64_t kv_row = s.kv[l].numel() / s.batch(), sc_row = s.scale[l].numel() / s.batch();
    for (size_t i = 0; i < rows.size(); ++i) {
      const int64_t b = rows[i];
      require(b >= 0 && b < s.batch(), "infer::select_rows: row ", b, " is outside the state's batch ", s.batch());
      std::copy_n(s.kv[l].data() + b * kv_row, kv_row, r.kv[l].data() + static_cast<int64_t>(i) * kv_row);
      std::copy_n(s.scale[l].data() + b * sc_row, sc_row, r.scale[l].data() + static_cast<int64_t>(i) * sc_row);
    }
  }
  for (size_t i = 0; i < rows.size(); ++i) r.positions[i] = s.positions[static_cast<size_t>(rows[i])];
  return r;
}

// The rows of several states stacked into one batch, in order.
template <class T>
typename Model<T>::State concat_states(const Model<T>& model, const std::vector<typename Model<T>::State>& parts) {
  require(!parts.empty(), "infer::concat_states: no states");
  int64_t B = 0;
  for (const auto& p : parts) B += p.batch();
  typename Model<T>::State r = model.make_state(B);
  int64_t row = 0;
  for (const auto& p : parts) {
    require(p.kv.size() == r.kv.size(), "infer::concat_states: a state has ", p.kv.size(), " layers, expected ",
            r.kv.size());
    for (size_t l = 0; l < r.kv.size(); ++l) {
      const int64_t kv_row = r.kv[l].numel() / B, sc_row = r.scale[l].numel() / B;
      require(p.kv[l].numel() == kv_row * p.batch() && p.scale[l].numel() == sc_row * p.batch(),
              "infer::concat_states: layer ", l, " of a state has the wrong size");
      std::copy_n(p.kv[l].data(), p.kv[l].numel(), r.kv[l].data() + row * kv_row);
      std::copy_n(p.scale[l].data(), p.scale[l].numel(), r.scale[l].data() + row * sc_row);
    }
    for (int64_t b = 0; b < p.batch(); ++b)
      r.positions[static_cast<size_t>(row + b)] = p.positions[static_cast<size_t>(b)];
    row += p.batch();
  }
  return r;
}

// Saves a recurrent state: layers.{l}.kv [B, H, dk, dv], layers.{l}.scale [B, H], positions [B] (I64), atomically.
// A state in device memory is copied to the host first.
template <class State>
void save_state(const State& s, const std::string& path, const std::map<std::string, std::string>& metadata = {}) {
  io::SafetensorsWriter w;
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  w.set_metadata("format", "retnet-state");
  w.set_metadata("layers", std::to_string(s.kv.size()));
  auto add = [&](const std::string& name, const auto& t) {
    if constexpr (requires { t.to_host(); }) {
      const auto h = t.to_host();
      w.add(name, h.shape(), h.data());
    } else {
      w.add(name, t.shape(), t.data());
    }
  };
  for (size_t l = 0; l < s.kv.size(); ++l) {
    add("layers." + std::to_string(l) + ".kv", s.kv[l]);
    add("layers." + std::to_string(l) + ".scale", s.scale[l]);
  }
  w.add("positions", {static_cast<int64_t>(s.positions.size())}, s.positions.data());
  w.write(path);
}

// Restores a state saved by save_state, checked against the model's configuration (layers, heads, sizes), into
// the model's backend memory.
template <class T, class Be>
typename Model<T, Be>::State load_state(const Model<T, Be>& model, const std::string& path) {
  const auto f = io::SafetensorsFile::open(path);
  require(f.contains("positions") && f.shape("positions").rank() == 1, path,
          ": not a recurrent state file (no 'positions' [batch] tensor)");
  const int64_t B = f.shape("positions")[0];
  require(B > 0, path, ": the state has batch ", B);
  typename Model<T, Be>::State s = model.make_state(B);
  size_t expected = 1 + 2 * s.kv.size();
  require(f.names().size() == expected, path, ": the state has ", f.names().size(), " tensors, but a state of this ",
          s.kv.size(), "-layer model has ", expected);
  auto read = [&](const std::string& name, auto& t) {
    if constexpr (requires { t.to_host(); }) {
      auto h = t.to_host();
      f.read(name, h.data(), h.shape());
      t.copy_from_host(h.data(), h.numel());
    } else {
      f.read(name, t.data(), t.shape());
    }
  };
  for (size_t l = 0; l < s.kv.size(); ++l) {
    read("layers." + std::to_string(l) + ".kv", s.kv[l]);
    read("layers." + std::to_string(l) + ".scale", s.scale[l]);
  }
  f.read("positions", s.positions.data(), {B});
  for (int64_t b = 0; b < B; ++b)
    require(s.positions[static_cast<size_t>(b)] >= 0, path, ": position of row ", b, " is negative");
  model.sync_positions(s);
  return s;
}

// ---- generation ---------------------------------------------------------------------------------------------
struct GenerateOptions {
  int64_t max_new_tokens = 32;
  SamplingOptions sampling;
  Form prefill_form = Form::chunkwise;
  int64_t stop_token = -1;  // >= 0: a sequence ends after producing it (it is included in the output)
};

// Per-token callback: (sequence index, token). Called in generation order.
using TokenCallback = std::function<void(int64_t, int64_t)>;

// Continues every prompt by up to max_new_tokens tokens; returns the new tokens of each prompt.
// final_state (optional) receives the state after each prompt and all its new tokens but the last one (rows in
// prompt order), so decoding can resume by stepping the last tokens. Rows that ended early on stop_token have
// been stepped further with the stop token repeated.
template <class T>
std::vector<std::vector<int64_t>> generate(Model<T>& model, const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& opt, const TokenCallback& on_token = {},
                                           typename Model<T>::State* final_state = nullptr) {
  opt.sampling.validate();
  require(!prompts.empty(), "infer::generate: no prompts");
  require(opt.max_new_tokens >= 0, "infer::generate: max_new_tokens = ", opt.max_new_tokens, " is negative");
  const int64_t V = model.config().vocab_size, N = static_cast<int64_t>(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    require(!prompts[i].empty(), "infer::generate: prompt ", i, " is empty; it needs at least one token");
    for (int64_t t : prompts[i])
      require(t >= 0 && t < V, "infer::generate: prompt ", i, " holds token ", t, ", outside [0, ", V, ")");
  }
  std::vector<std::vector<int64_t>> out(prompts.size());
  if (opt.max_new_tokens == 0) return out;

  // Prefill: prompts of equal length together.
  std::map<size_t, std::vector<int64_t>> by_length;
  for (size_t i = 0; i < prompts.size(); ++i) by_length[prompts[i].size()].push_back(static_cast<int64_t>(i));
  std::vector<typename Model<T>::State> parts;
  std::vector<int64_t> order;  // prompt index of each row of the combined state
  std::vector<T> last;         // last-position logits, rows in `order`
  for (const auto& [len, idx] : by_length) {
    const int64_t B = static_cast<int64_t>(idx.size()), Tn = static_cast<int64_t>(len);
    std::vector<int64_t> toks;
    for (int64_t i : idx)
      toks.insert(toks.end(), prompts[static_cast<size_t>(i)].begin(), prompts[static_cast<size_t>(i)].end());
    auto st = model.make_state(B);
    const Tensor<T> l = model.prefill(HostView<const int64_t>(toks.data(), {B, Tn}), st, opt.prefill_form);
    last.insert(last.end(), l.data(), l.data() + B * V);
    order.insert(order.end(), idx.begin(), idx.end());
    parts.push_back(std::move(st));
  }
  auto state = parts.size() == 1 ? std::move(parts[0]) : concat_states(model, parts);
  parts.clear();

  std::vector<Sampler> samplers;
  for (int64_t r = 0; r < N; ++r) {
    SamplingOptions so = opt.sampling;
    so.seed = mix_seed(opt.sampling.seed, static_cast<uint64_t>(order[static_cast<size_t>(r)]));
    samplers.emplace_back(so);
  }
  std::vector<bool> done(static_cast<size_t>(N), false);
  std::vector<int64_t> next(static_cast<size_t>(N), 0);
  Tensor<T> logits_now({N, V});
  std::copy(last.begin(), last.end(), logits_now.data());
  for (int64_t step = 0; step < opt.max_new_tokens; ++step) {
    bool any = false;
    for (int64_t r = 0; r < N; ++r) {
      if (done[static_cast<size_t>(r)]) continue;  // finished rows keep their last token and are ignored
      const int64_t tok = samplers[static_cast<size_t>(r)].sample(logits_now.data() + r * V, V);
      next[static_cast<size_t>(r)] = tok;
      const int64_t p = order[static_cast<size_t>(r)];
      out[static_cast<size_t>(p)].push_back(tok);
      if (on_token) on_token(p, tok);
      if (tok == opt.stop_token) done[static_cast<size_t>(r)] = true;
      any = any || !done[static_cast<size_t>(r)];
    }
    if (!any || step + 1 == opt.max_new_tokens) break;
    logits_now = model.step(HostView<const int64_t>(next.data(), {N}), state);
  }
  if (final_state) {
    std::vector<int64_t> row_of(static_cast<size_t>(N));
    for (int64_t r = 0; r < N; ++r) row_of[static_cast<size_t>(order[static_cast<size_t>(r)])] = r;
    *final_state = select_rows(model, state, row_of);
  }
  return out;
}

}  // namespace retnet::infer
