#pragma once
// The training step: loss and gradients (whole sequences or segments carrying state), gradient
// accumulation, global-norm clipping, scheduled AdamW. Deterministic for a fixed thread count.
//
// Segments: with segment_length > 0 a sequence of length T is run as ceil(T / segment_length) segments,
// each continuing from the retention state the previous one left. The gradient is exact, not truncated:
// a first pass runs the segments forward keeping only the per-layer states between them; the backward
// pass then walks the segments in reverse, recomputing each segment's activations from its stored initial
// state and passing the gradient of the state from segment to segment (the retention ops' d_state_kv).
// Memory is one segment's activations plus L states per boundary; compute is about 2 forwards + 1 backward.
//
// Dropout: the trainer runs the model in training mode with the key (TrainerConfig::dropout_seed, step,
// micro-batch row offset). Masks depend on absolute positions and global rows, so a segmented run or an
// accumulated one sees the masks of the plain run, and a resumed run those of an uninterrupted one.
//
// Data parallelism (TrainerConfig::dist, retnet/dist/): every rank passes its own rows of the global batch to
// step(); the loss is normalised by the token count over all ranks, the gradients are summed over ranks in
// buckets started during the last backward pass, and the norm, the clipping and the update are identical on
// every rank, so the run follows the single-process one with the same global batch. Dropout masks use the
// global row index. With dist.zero_stage = 1 the AdamW moments are sharded (see dist/data_parallel.hpp).
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "retnet/core/buffer.hpp"
#include "retnet/dist/data_parallel.hpp"
#include "retnet/dist/device_data_parallel.hpp"
#include "retnet/nn/backend_ops.hpp"
#include "retnet/nn/model.hpp"
#include "retnet/train/adamw.hpp"
#include "retnet/train/schedule.hpp"

namespace retnet {

// Keeps workspaces (and the targets they are scored against) for the shapes a training run uses.
template <class T, Backend BackendT = Cpu>
class GradContext {
 public:
  using ModelType = Model<T, BackendT>;
  typename ModelType::Workspace& workspace(const ModelType& m, int64_t batch, int64_t length) {
    auto& p = ws_[{batch, length}];
    if (!p) p = std::make_unique<typename ModelType::Workspace>(m, batch, length, true);
    return *p;
  }
  // The targets [n] in the backend's memory (a copy on device backends).
  const int64_t* targets(const ModelType& m, const int64_t* host_targets, int64_t n) {
    if constexpr (host_backend<BackendT>) {
      return host_targets;
    } else {
      validate_targets(host_targets, n, m.config().vocab_size);  // checked on the host: kernels cannot throw
      if (targets_.size() < n) targets_ = Buffer<int64_t, BackendT>(m.backend(), n);
      targets_.copy_from_host(host_targets, n);
      return targets_.data();
    }
  }
  void clear() { ws_.clear(); }

  // Loss of logits [rows, V] against host targets, its gradient written to dlogits (null: none). Device backends
  // either wait for the GPU and return the sum (default), or, while deferring, add it to a device accumulator
  // (scalars()[kLossSlot]) and return only the count, so a training step reads its loss once.
  LossSum loss(const ModelType& m, const T* logits, const int64_t* host_targets, int64_t rows, T* dlogits,
               double grad_scale) {
    const BackendT& be = m.backend();
    const int64_t V = m.config().vocab_size;
    const int64_t* tgt = targets(m, host_targets, rows);
    if constexpr (!host_backend<BackendT>) {
      if (defer_) {
        cross_entropy_accumulate(be, logits, tgt, rows, V, dlogits, grad_scale, scalars(be) + kLossSlot);
        return LossSum{0.0, count_targets(host_targets, rows)};
      }
    }
    return cross_entropy_forward_backward(be, logits, tgt, rows, V, dlogits, grad_scale);
  }
  // Device backends: starts or ends deferring losses (starting zeroes the accumulator).
  void defer_losses(const BackendT& be, bool on) requires(!host_backend<BackendT>) {
    defer_ = on;
    if (on) zero_elements(be, scalars(be) + kLossSlot, 1);
  }
  // Two device doubles: the deferred loss sum and a gradient sum of squares.
  static constexpr int64_t kLossSlot = 0, kSumSquaresSlot = 1;
  double* scalars(const BackendT& be) {
    if (scalars_.empty()) scalars_ = Buffer<double, BackendT>(be, 2);
    return scalars_.data();
  }

 private:
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<typename ModelType::Workspace>> ws_;
  Buffer<int64_t, BackendT> targets_;
  Buffer<double, BackendT> scalars_;
  bool defer_ = false;
};

// Loss of tokens [B, T] against targets [B, T] (kIgnoreIndex skips a position) and its gradient, added to
// grads (backend memory) scaled by grad_scale (typically 1 / tokens counted in the optimizer step). dropout:
// training-mode key (null: no dropout). layer_hook: passed to the backward pass that completes the gradient
// (Model::backward).
template <class T, Backend BackendT>
LossSum loss_and_grad(Model<T, BackendT>& model, GradContext<T, BackendT>& ctx, const int64_t* tokens,
                      const int64_t* targets, int64_t B, int64_t Tn, Form form, grad_t<T>* grads, double grad_scale,
                      int64_t segment_length = 0, const DropoutKey* dropout = nullptr,
                      const std::function<void(int64_t)>& layer_hook = {}) {
  const ModelConfig& c = model.config();
  const BackendT& be = model.backend();
  const int64_t L = c.decoder_layers;
  using S = state_t<T>;
  const int64_t seg = segment_length > 0 ? std::min(segment_length, Tn) : Tn;
  const int64_t segments = (Tn + seg - 1) / seg;
  auto loss = [&](auto& ws, const int64_t* tgt, int64_t rows, T* dlogits) {
    return ctx.loss(model, ws.logits(), tgt, rows, dlogits, grad_scale);
  };
  if (segments == 1) {
    auto& ws = ctx.workspace(model, B, Tn);
    model.forward_train(tokens, form, ws, nullptr, {}, {}, false, false, dropout);
    LossSum r = loss(ws, targets, B * Tn, ws.dlogits());
    model.backward(ws, grads, {}, {}, layer_hook);
    return r;
  }
  const int64_t H = c.decoder_retention_heads;
  const int64_t kv_n = B * H * c.key_dim() * c.value_dim(), sc_n = B * H;
  // states[s]: the state entering segment s (s = 1 .. segments-1; segment 0 starts empty)
  std::vector<Buffer<S, BackendT>> kv(static_cast<size_t>(segments * L)), sc(static_cast<size_t>(segments * L));
  auto state_ptrs = [&](int64_t s) {
    std::vector<StatePtrs<S>> v;
    for (int64_t l = 0; l < L; ++l) {
      auto& a = kv[static_cast<size_t>(s * L + l)];
      auto& b = sc[static_cast<size_t>(s * L + l)];
      if (a.empty()) a = Buffer<S, BackendT>(be, kv_n), b = Buffer<S, BackendT>(be, sc_n);
      v.push_back({a.data(), b.data()});
    }
    return v;
  };
  std::vector<int64_t> seg_tok, seg_tgt, starts(static_cast<size_t>(B));
  auto slice = [&](int64_t s, int64_t len) {
    seg_tok.resize(static_cast<size_t>(B * len));
    seg_tgt.resize(static_cast<size_t>(B * len));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < len; ++t) {
        seg_tok[static_cast<size_t>(b * len + t)] = tokens[b * Tn + s * seg + t];
        seg_tgt[static_cast<size_t>(b * len + t)] = targets[b * Tn + s * seg + t];
      }
    std::fill(starts.begin(), starts.end(), s * seg);
  };
  auto seg_len = [&](int64_t s) { return std::min(seg, Tn - s * seg); };
  LossSum total;
  // forward pass: states only (the last segment's activations stay for the backward pass)
  for (int64_t s = 0; s < segments; ++s) {
    const int64_t len = seg_len(s);
    slice(s, len);
    auto& ws = ctx.workspace(model, B, len);
    const std::vector<StatePtrs<S>> in = s == 0 ? std::vector<StatePtrs<S>>{} : state_ptrs(s);
    const std::vector<StatePtrs<S>> out = s + 1 < segments ? state_ptrs(s + 1) : std::vector<StatePtrs<S>>{};
    model.forward_train(seg_tok.data(), form, ws, starts.data(), in, out, false, false, dropout);
    const bool last = s + 1 == segments;
    LossSum r = loss(ws, seg_tgt.data(), B * len, last ? ws.dlogits() : static_cast<T*>(nullptr));
    total.sum += r.sum;
    total.count += r.count;
  }
  // backward pass, segments in reverse, passing the state gradient back
  std::vector<Buffer<S, BackendT>> dcur, dprev;
  for (int64_t l = 0; l < L; ++l) dcur.emplace_back(be, kv_n), dprev.emplace_back(be, kv_n);
  for (int64_t s = segments - 1; s >= 0; --s) {
    const int64_t len = seg_len(s);
    auto& ws = ctx.workspace(model, B, len);
    const std::vector<StatePtrs<S>> in = s == 0 ? std::vector<StatePtrs<S>>{} : state_ptrs(s);
    if (s + 1 < segments) {  // recompute
      slice(s, len);
      model.forward_train(seg_tok.data(), form, ws, starts.data(), in, {}, false, false, dropout);
      loss(ws, seg_tgt.data(), B * len, ws.dlogits());
    }
    std::vector<const S*> d_out;
    std::vector<S*> d_in;
    for (int64_t l = 0; l < L; ++l) {
      if (s + 1 < segments) d_out.push_back(dcur[static_cast<size_t>(l)].data());
      if (s > 0) d_in.push_back(dprev[static_cast<size_t>(l)].data());
    }
    model.backward(ws, grads, d_out, d_in, s == 0 ? layer_hook : std::function<void(int64_t)>{});
    std::swap(dcur, dprev);
  }
  return total;
}

struct TrainerConfig {
  AdamWConfig adamw;
  LrSchedule schedule;
  double grad_clip = 1.0;          // global gradient-norm clip; <= 0 disables
  int64_t accumulation_steps = 1;  // micro-batches per optimizer step (the batch rows are split)
  Form form = Form::chunkwise;
  int64_t segment_length = 0;     // > 0: train in segments carrying state (see loss_and_grad)
  uint64_t dropout_seed = 0;      // seeds the dropout masks (used when the model has dropout rates > 0)
  dist::DataParallelConfig dist;  // communicator (default: this process alone), ZeRO stage, bucket size
};

struct StepStats {
  double loss = 0;       // mean over counted tokens
  double grad_norm = 0;  // before clipping
  double lr = 0;
  int64_t tokens = 0;
};

template <class T, Backend BackendT = Cpu>
class Trainer {
 public:
  using ModelType = Model<T, BackendT>;
  using grad_type = grad_t<T>;
  Trainer(ModelType& model, TrainerConfig cfg)
      : model_(model),
        cfg_(cfg),
        opt_(model.param_table(), cfg.adamw, model.backend()),
        grads_(model.backend(), model.param_table().total()),
        dp_(model.param_table(), model.config().decoder_layers, host_dist(cfg.dist)) {
    // Device backends exchange device gradients: several ranks or ZeRO-1 need a communicator that takes them.
    if constexpr (!host_backend<BackendT>)
      if (dp_.comm().device_buffers())
        ddp_ = std::make_unique<dist::DeviceDataParallel<T, BackendT>>(
            model.param_table(), model.config().decoder_layers, cfg.dist, model.backend());
    require(host_backend<BackendT> || ddp_ || (dp_.comm().size() == 1 && cfg.dist.zero_stage == 0),
            "Trainer: ", dp_.comm().describe(), " with zero_stage ", cfg.dist.zero_stage,
            " needs a communicator over device buffers (dist::NcclCommunicator) on a device backend");
    require(cfg_.accumulation_steps > 0, "TrainerConfig: accumulation_steps = ", cfg_.accumulation_steps,
            " must be positive");
    sync_master();
  }

  // Computes the gradient of the mean loss over inputs/targets [B, T] without updating (grads() holds it).
  // Data parallel: inputs/targets are this rank's rows (B may differ between ranks, even be 0); the gradient is
  // that of the global batch, summed over ranks (with ZeRO-1 only the owned slices are summed, and grads()
  // holds this rank's part). Collective. Returns this rank's loss sum and the global token count.
  LossSum compute_gradients(HostView<const int64_t> inputs, HostView<const int64_t> targets) {
    return compute_gradients(inputs, targets, false);
  }

  // One optimizer step on inputs/targets [B, T]. On a device backend the loss, the norm, the clipping and the update
  // stay on the device; the loss and the norm come back in one copy after the update is queued.
  StepStats step(HostView<const int64_t> inputs, HostView<const int64_t> targets) {
    const LossSum l = compute_gradients(inputs, targets, !host_backend<BackendT>);
    StepStats st;
    st.tokens = global_rows_ * inputs.size(1);
    st.lr = cfg_.adamw.lr * cfg_.schedule.factor(step_);
    if constexpr (host_backend<BackendT>) {
      // loss and norm from every rank's partial sums, identical on every rank
      const auto red = dp_.reduce_stats(l.sum);
      st.loss = LossSum{red.loss_sum, l.count}.mean();
      st.grad_norm = red.grad_norm;
      if (cfg_.grad_clip > 0 && st.grad_norm > cfg_.grad_clip)
        dp_.scale_gradients(static_cast<grad_type>(cfg_.grad_clip / (st.grad_norm + 1e-6)));
      dp_.update(opt_, model_.params(), st.lr);
    } else {
      const BackendT& be = model_.backend();
      double* scalars = ctx_.scalars(be);
      if (ddp_) {  // over a device communicator: loss and norm of the global batch
        ddp_->reduce_stats(scalars + ctx_.kLossSlot, scalars + ctx_.kSumSquaresSlot);
        if (cfg_.grad_clip > 0) ddp_->clip(scalars + ctx_.kSumSquaresSlot, cfg_.grad_clip);
      } else {
        sum_squares_to(be, grads_.data(), grads_.size(), scalars + ctx_.kSumSquaresSlot);
        if (cfg_.grad_clip > 0)
          clip_by_norm(be, grads_.data(), grads_.size(), scalars + ctx_.kSumSquaresSlot, cfg_.grad_clip);
      }
      if (model_.params_version() != master_version_) sync_master();  // the parameters were changed from outside
      if (ddp_)
        ddp_->update(opt_, model_.params(), st.lr);
      else
        opt_.step(model_.params(), grads_.data(), st.lr);
      master_version_ = model_.params_version();
      double host[2] = {0, 0};
      be.copy_to_host(host, scalars, sizeof host);
      st.loss = LossSum{host[ctx_.kLossSlot], l.count}.mean();
      st.grad_norm = std::sqrt(host[ctx_.kSumSquaresSlot]);
    }
    ++step_;
    return st;
  }

 private:
  // defer_loss (device backends): the loss sum stays on the device for step() to read.
  LossSum compute_gradients(HostView<const int64_t> inputs, HostView<const int64_t> targets, bool defer_loss) {
    require(inputs.rank() == 2 && targets.shape() == inputs.shape(), "Trainer: inputs ", inputs.shape().to_string(),
            " and targets ", targets.shape().to_string(), " must both be [batch, length]");
    const int64_t B = inputs.size(0), Tn = inputs.size(1), A = cfg_.accumulation_steps;
    // A rank of a data-parallel run may hold no rows of a small global batch; one process needs one.
    require(Tn > 0 && (B > 0 || dp_.comm().size() > 1), "Trainer: inputs ", inputs.shape().to_string(),
            " must have at least one row and one position");
    require(B % A == 0, "Trainer: batch ", B, " is not divisible by accumulation_steps = ", A);
    grads_.zero();
    const int64_t count = count_targets(targets.data(), B * Tn);
    const dist::GlobalBatch global = dp_.begin_step(B, count, grads_.data());
    if (ddp_) ddp_->begin(grads_.data());
    const double scale = global.tokens ? 1.0 / static_cast<double>(global.tokens) : 0.0;
    LossSum total;
    const int64_t mb = B / A;
    if constexpr (!host_backend<BackendT>) ctx_.defer_losses(model_.backend(), defer_loss);
    for (int64_t a = 0; a < A && mb > 0; ++a) {
      const DropoutKey key{cfg_.dropout_seed, static_cast<uint64_t>(step_), global.row_offset + a * mb};
      LossSum r = loss_and_grad(model_, ctx_, inputs.data() + a * mb * Tn, targets.data() + a * mb * Tn, mb, Tn,
                                cfg_.form, grads_.data(), scale, cfg_.segment_length, &key,
                                a + 1 == A ? (ddp_ ? ddp_->hook() : dp_.hook()) : std::function<void(int64_t)>{});
      total.sum += r.sum;
    }
    if constexpr (!host_backend<BackendT>) ctx_.defer_losses(model_.backend(), false);
    if (ddp_)
      ddp_->finish();
    else
      dp_.finish_gradients();
    total.count = global.tokens;
    global_rows_ = global.rows;
    return total;
  }

 public:
  int64_t step_count() const { return step_; }
  // Also marks a restore point: with ZeRO-1 each rank re-reads its moment slices from optimizer()'s full
  // buffers (where load_training_checkpoint put them).
  void set_step_count(int64_t s) {
    step_ = s;
    opt_.set_steps(s);
    if constexpr (host_backend<BackendT>) dp_.load_optimizer_state(opt_);
  }
  AdamW<T, BackendT>& optimizer() { return opt_; }
  const AdamW<T, BackendT>& optimizer() const { return opt_; }
  // The gradient of the last compute_gradients/step (before clipping for compute_gradients), backend memory.
  const Buffer<grad_type, BackendT>& grads() const { return grads_; }
  ModelType& model() { return model_; }
  const ModelType& model() const { return model_; }
  const TrainerConfig& config() const { return cfg_; }
  dist::DataParallel<grad_type>& data_parallel() { return dp_; }
  // Device backends over a device communicator (null otherwise).
  dist::DeviceDataParallel<T, BackendT>* device_data_parallel() { return ddp_.get(); }

  // With master weights (bf16 parameters): sets them from master-precision values (a checkpoint), then the
  // parameters from their rounding.
  void restore_master(const master_t<T>* host, int64_t n) requires AdamW<T, BackendT>::has_master {
    opt_.set_master(host, n);
    const std::vector<T> rounded(host, host + n);
    model_.params_from_host(rounded.data(), n);
    master_version_ = model_.params_version();
  }

 private:
  // The host part of the data-parallel configuration: on device backends over a device communicator, ZeRO-1 runs
  // in DeviceDataParallel (dp_ then only counts the global batch).
  static dist::DataParallelConfig host_dist(dist::DataParallelConfig d) {
    if (!host_backend<BackendT> && d.comm && d.comm->device_buffers()) d.zero_stage = 0;
    return d;
  }

  // The master weights follow parameters set from outside the trainer (a load, an initialisation).
  void sync_master() {
    if constexpr (AdamW<T, BackendT>::has_master) opt_.set_master_from_params(model_.params_to_host());
    master_version_ = model_.params_version();
  }

  ModelType& model_;
  TrainerConfig cfg_;
  AdamW<T, BackendT> opt_;
  Buffer<grad_type, BackendT> grads_;
  dist::DataParallel<grad_type> dp_;
  std::unique_ptr<dist::DeviceDataParallel<T, BackendT>> ddp_;
  GradContext<T, BackendT> ctx_;
  int64_t step_ = 0;
  int64_t global_rows_ = 0;
  uint64_t master_version_ = 0;
};

}  // namespace retnet
