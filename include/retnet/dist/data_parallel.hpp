#pragma once
// Data parallelism over a Communicator: the gradient buffer is cut into buckets that are all-reduced (or, with
// ZeRO-1, reduce-scattered) while the backward pass is still running, the gradient norm is identical on every
// rank, and with ZeRO-1 each rank keeps AdamW moments only for the slices it owns and all-gathers the parameters
// after its update.
//
// Buckets are contiguous ranges of the flat gradient buffer, cut from its end (the last layers' gradients are
// final first). Model::backward calls its layer hook after layer l's parameter gradients are final; the buckets
// whose elements all belong to layers >= l (or to the final norm) are then started. The embedding, the LM head
// and the embedding norm are final only when the backward pass ends. Buckets start in the same order on every
// rank (a pure function of the plan), as MPI and NCCL require.
//
// ZeRO-1: every bucket is padded to a multiple of the world size P and split into P equal slices; rank r owns
// slice r of every bucket. The reduce-scatter leaves the summed gradient of the owned slices in a compact buffer;
// the sharded AdamW updates those parameters with the moments of those slices only; the bucket-wise all-gather
// then gives every rank all parameters.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "retnet/core/error.hpp"
#include "retnet/core/params.hpp"
#include "retnet/dist/communicator.hpp"
#include "retnet/train/adamw.hpp"

namespace retnet::dist {

inline constexpr int64_t kDefaultBucketBytes = int64_t(25) << 20;  // PyTorch DDP's default

// When a tensor's gradient is final during Model::backward: after layer `stage`'s backward (layers run
// L-1 .. 0; the head and the final norm are done before layer L-1, so they get L); -1: only at the end
// (embedding, embedding norm, a tied head).
inline int64_t backward_stage(const std::string& name, int64_t layers) {
  if (name.rfind("layers.", 0) == 0) {
    const size_t dot = name.find('.', 7);
    require(dot != std::string::npos, "dist::backward_stage: parameter name '", name, "' has no layer index");
    const int64_t l = std::stoll(name.substr(7, dot - 7));
    require(l >= 0 && l < layers, "dist::backward_stage: parameter '", name, "' names layer ", l, " of ", layers);
    return l;
  }
  if (name.rfind("layer_norm.", 0) == 0) return layers;
  return -1;  // embed_tokens, layernorm_embedding, output_projection: see the note on the head below
}

struct Bucket {
  int64_t begin = 0, count = 0;  // range of the flat buffer
  int64_t stage = -1;            // may start once the hook reports a layer <= stage (-1: at the end)
  int64_t slice = 0;             // ZeRO-1: elements per rank (count padded to a multiple of P, divided by P)
  int64_t owned = 0;             // ZeRO-1: offset of this bucket's owned slice in the compact buffers
};

// The buckets of a flat buffer of `total` elements described by `table`, in start order (last range first).
// The output projection sits at the front of the buffer next to the embedding, so its gradient (final before
// layer L-1) travels with the embedding's bucket at the end.
class BucketPlan {
 public:
  BucketPlan() = default;
  BucketPlan(const ParamTable& table, int64_t layers, int world, int64_t bucket_elems, bool zero)
      : total_(table.total()), world_(world), zero_(zero) {
    require(world > 0, "dist::BucketPlan: world size ", world, " must be positive");
    require(bucket_elems > 0, "dist::BucketPlan: bucket size ", bucket_elems, " elements must be positive");
    require(layers >= 0, "dist::BucketPlan: layers = ", layers, " must be >= 0");
    // stage of every element position, as a suffix minimum: a range is final once everything after it is
    const int64_t inf = std::numeric_limits<int64_t>::max();
    std::vector<std::pair<int64_t, int64_t>> starts;  // (offset, stage) in offset order
    for (const ParamInfo& p : table.entries()) starts.push_back({p.offset, backward_stage(p.name, layers)});
    std::vector<int64_t> suffix(starts.size() + 1, inf);
    for (size_t i = starts.size(); i-- > 0;) suffix[i] = std::min(suffix[i + 1], starts[i].second);
    auto stage_from = [&](int64_t begin) {
      // the first tensor ending after `begin` and every later one
      size_t i = 0;
      while (i < starts.size() && table.entries()[i].offset + table.entries()[i].numel() <= begin) ++i;
      return suffix[i] == inf ? layers : suffix[i];
    };
    if (world > 1) bucket_elems = (bucket_elems + world - 1) / world * world;
    int64_t owned = 0;
    for (int64_t end = total_; end > 0;) {
      const int64_t begin = std::max<int64_t>(0, end - bucket_elems);
      Bucket b;
      b.begin = begin, b.count = end - begin, b.stage = stage_from(begin);
      if (zero_) {
        b.slice = (b.count + world - 1) / world;
        b.owned = owned;
        owned += b.slice;
      }
      buckets_.push_back(b);
      end = begin;
    }
    owned_total_ = owned;
  }
  const std::vector<Bucket>& buckets() const { return buckets_; }
  int64_t total() const { return total_; }
  int world() const { return world_; }
  bool zero() const { return zero_; }
  int64_t owned_total() const { return owned_total_; }  // ZeRO-1: elements of the compact buffers

  // ZeRO-1: the part of bucket b that rank r owns, as a range of the flat buffer (may be empty).
  RowRange owned_range(const Bucket& b, int r) const {
    const int64_t lo = std::min(b.count, r * b.slice), hi = std::min(b.count, (r + 1) * b.slice);
    return RowRange{b.begin + lo, hi - lo};
  }

 private:
  std::vector<Bucket> buckets_;
  int64_t total_ = 0, owned_total_ = 0;
  int world_ = 1;
  bool zero_ = false;
};

// Runs the buckets of one optimizer step: begin(), layer_done() from the backward hook, finish().
template <class T>
class GradientSync {
 public:
  GradientSync(Communicator& comm, const BucketPlan& plan) : comm_(comm), plan_(plan) {
    if (plan_.zero()) owned_.assign(static_cast<size_t>(plan_.owned_total()), T(0));
  }

  void begin(T* grads) {
    grads_ = grads;
    next_ = 0;
    pending_.clear();
  }
  // Starts every bucket that is final once layer `layer` has finished its backward pass, then lets the
  // started ones make progress (MPI progresses non-blocking collectives inside MPI calls).
  void layer_done(int64_t layer) {
    if (comm_.size() == 1) return;
    const auto& bs = plan_.buckets();
    while (next_ < bs.size() && bs[next_].stage >= layer) start(next_++);
    for (auto& r : pending_) r->test();
  }
  // Starts the remaining buckets and waits for all. Afterwards the gradient buffer holds the sum over ranks
  // (plain), or the compact owned buffer holds the sums of the owned slices (ZeRO-1).
  void finish() {
    if (comm_.size() == 1 && !plan_.zero()) return;
    const auto& bs = plan_.buckets();
    while (next_ < bs.size()) start(next_++);
    for (auto& r : pending_) r->wait();
    pending_.clear();
  }
  // ZeRO-1: the summed gradients of this rank's slices, bucket by bucket (zeros where a slice pads its bucket).
  std::vector<T>& owned() { return owned_; }

 private:
  void start(size_t i) {
    const Bucket& b = plan_.buckets()[i];
    if (!plan_.zero()) {
      pending_.push_back(comm_.all_reduce_async(grads_ + b.begin, b.count));
      return;
    }
    const int64_t padded = b.slice * comm_.size();
    const T* send = grads_ + b.begin;
    if (padded != b.count) {  // only the front bucket: stage it with zero padding
      staging_.assign(static_cast<size_t>(padded), T(0));
      std::memcpy(staging_.data(), send, sizeof(T) * static_cast<size_t>(b.count));
      send = staging_.data();
    }
    pending_.push_back(comm_.reduce_scatter_async(send, owned_.data() + b.owned, b.slice));
  }

  Communicator& comm_;
  const BucketPlan& plan_;
  T* grads_ = nullptr;
  size_t next_ = 0;
  std::vector<std::unique_ptr<Request>> pending_;
  std::vector<T> owned_, staging_;
};

// ZeRO-1 AdamW: the update of AdamW::step (same expressions, so the same values) for the owned slices only;
// the configuration and step count are the full optimizer's (the Trainer's AdamW), whose moment buffers serve
// only as the gather target for checkpoints.
template <class T>
class ShardedAdamW {
 public:
  ShardedAdamW(const ParamTable& table, const BucketPlan& plan, int rank) : plan_(plan), rank_(rank) {
    m_.assign(static_cast<size_t>(plan.owned_total()), T(0));
    v_.assign(m_.size(), T(0));
    // owned pieces of every tensor, with its weight-decay flag (matrices decay, as in AdamW)
    for (const Bucket& b : plan.buckets()) {
      const RowRange own = plan.owned_range(b, rank);
      for (const ParamInfo& p : table.entries()) {
        const int64_t lo = std::max(own.begin, p.offset), hi = std::min(own.end(), p.offset + p.numel());
        if (lo < hi) pieces_.push_back({lo, b.owned + (lo - own.begin), hi - lo, p.shape.rank() >= 2});
      }
    }
  }

  // Updates the owned parameters from the owned gradients; step `t` (1-based) and cfg as in AdamW::step.
  void step(T* params, const T* owned_grads, const AdamWConfig& cfg, int64_t t, double lr) {
    const double b1 = cfg.beta1, b2 = cfg.beta2;
    const double bc1 = 1.0 - std::pow(b1, static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(b2, static_cast<double>(t));
    const T step_size = static_cast<T>(lr / bc1), inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(bc2));
    const T eps = static_cast<T>(cfg.eps);
    for (const Piece& pc : pieces_) {
      const T decay = pc.decay ? static_cast<T>(1.0 - lr * cfg.weight_decay) : T(1);
      T* p = params + pc.global;
      const T* g = owned_grads + pc.local;
      T* m = m_.data() + pc.local;
      T* v = v_.data() + pc.local;
#pragma omp parallel for schedule(static) if (pc.count > 65536)
      for (int64_t i = 0; i < pc.count; ++i) {
        m[i] = static_cast<T>(b1) * m[i] + static_cast<T>(1 - b1) * g[i];
        v[i] = static_cast<T>(b2) * v[i] + static_cast<T>(1 - b2) * g[i] * g[i];
        p[i] = p[i] * decay - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
      }
    }
  }

  // Owned moments from full-size ones (after a checkpoint load); no communication.
  void load(const T* m_full, const T* v_full) {
    for (const Bucket& b : plan_.buckets()) {
      const RowRange own = plan_.owned_range(b, rank_);
      std::memcpy(m_.data() + b.owned, m_full + own.begin, sizeof(T) * static_cast<size_t>(own.count));
      std::memcpy(v_.data() + b.owned, v_full + own.begin, sizeof(T) * static_cast<size_t>(own.count));
    }
  }
  std::vector<T>& exp_avg() { return m_; }
  std::vector<T>& exp_avg_sq() { return v_; }

 private:
  struct Piece {
    int64_t global, local, count;
    bool decay;
  };
  const BucketPlan& plan_;
  int rank_;
  std::vector<T> m_, v_;
  std::vector<Piece> pieces_;
};

// ZeRO-1: full[b.begin, b.begin + b.count) of every bucket from the owned slices of every rank. `owned` holds
// this rank's slices (compact, as in BucketPlan); used for the parameters after an update and for the moments
// before a checkpoint. Collective.
template <class T>
void gather_owned(Communicator& comm, const BucketPlan& plan, const T* owned, T* full) {
  const int P = comm.size(), r = comm.rank();
  std::vector<std::unique_ptr<Request>> pending;
  std::vector<std::vector<T>> staged;
  std::vector<size_t> staged_bucket;
  for (size_t i = 0; i < plan.buckets().size(); ++i) {
    const Bucket& b = plan.buckets()[i];
    const int64_t padded = b.slice * P;
    if (padded == b.count) {
      T* dst = full + b.begin;
      if (dst + r * b.slice != owned + b.owned)
        std::memcpy(dst + r * b.slice, owned + b.owned, sizeof(T) * static_cast<size_t>(b.slice));
      pending.push_back(comm.all_gather_async(dst + r * b.slice, dst, b.slice));
    } else {
      staged.emplace_back(static_cast<size_t>(padded), T(0));
      staged_bucket.push_back(i);
      T* dst = staged.back().data();
      std::memcpy(dst + r * b.slice, owned + b.owned, sizeof(T) * static_cast<size_t>(b.slice));
      pending.push_back(comm.all_gather_async(dst + r * b.slice, dst, b.slice));
    }
  }
  for (auto& q : pending) q->wait();
  for (size_t k = 0; k < staged.size(); ++k) {
    const Bucket& b = plan.buckets()[staged_bucket[k]];
    std::memcpy(full + b.begin, staged[k].data(), sizeof(T) * static_cast<size_t>(b.count));
  }
}

// The global view of one optimizer step's batch, from every rank's local rows and counted targets.
struct GlobalBatch {
  int64_t row_offset = 0;  // this rank's first global row
  int64_t rows = 0;        // rows over all ranks
  int64_t tokens = 0;      // counted targets over all ranks (the loss normaliser)
};

struct DataParallelConfig {
  Communicator* comm = nullptr;                // null: this process alone
  int zero_stage = 0;                          // 0: plain all-reduce; 1: ZeRO-1 sharded optimizer state
  int64_t bucket_bytes = kDefaultBucketBytes;  // gradient bucket size

  void validate() const {
    require(zero_stage == 0 || zero_stage == 1, "DataParallelConfig: zero_stage = ", zero_stage,
            " is not supported (expected 0 or 1)");
    require(bucket_bytes > 0, "DataParallelConfig: bucket_bytes = ", bucket_bytes, " must be positive");
  }
};

// What the Trainer calls, step by step: begin_step, hook (for the last backward), finish_gradients,
// reduce_stats, clip, update.
template <class T>
class DataParallel {
 public:
  DataParallel(const ParamTable& table, int64_t layers, DataParallelConfig cfg)
      : comm_(cfg.comm ? *cfg.comm : single_process()), cfg_(cfg) {
    cfg_.validate();
    const int64_t elems = std::max<int64_t>(1, cfg.bucket_bytes / static_cast<int64_t>(sizeof(T)));
    plan_ = std::make_unique<BucketPlan>(table, layers, comm_.size(), elems, zero());
    sync_ = std::make_unique<GradientSync<T>>(comm_, *plan_);
    if (zero()) sharded_ = std::make_unique<ShardedAdamW<T>>(table, *plan_, comm_.rank());
  }
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  Communicator& comm() const { return comm_; }
  bool zero() const { return cfg_.zero_stage == 1; }
  const BucketPlan& plan() const { return *plan_; }

  // Collective: the global rows and token count, and where this rank's rows start.
  GlobalBatch begin_step(int64_t local_rows, int64_t local_tokens, T* grads) {
    sync_->begin(grads);
    grads_ = grads;
    wait_ = {};
    const auto t0 = clock::now();
    const std::vector<int64_t> all = comm_.gather_values(std::vector<int64_t>{local_rows, local_tokens});
    wait_.other += seconds_since(t0);
    GlobalBatch g;
    for (int r = 0; r < comm_.size(); ++r) {
      const int64_t rows = all[static_cast<size_t>(2 * r)], tokens = all[static_cast<size_t>(2 * r + 1)];
      if (r < comm_.rank()) g.row_offset += rows;
      g.rows += rows;
      g.tokens += tokens;
    }
    return g;
  }
  // For Model::backward of the step's last backward pass (null with one process and no ZeRO: nothing to do).
  std::function<void(int64_t)> hook() {
    if (comm_.size() == 1) return {};
    return [this](int64_t layer) { sync_->layer_done(layer); };
  }
  void finish_gradients() {
    const auto t0 = clock::now();
    sync_->finish();
    wait_.gradients += seconds_since(t0);
  }

  struct Stats {
    double loss_sum = 0, grad_norm = 0;
  };
  // Collective: the loss summed over ranks and the gradient norm, both identical on every rank (each rank
  // contributes its partial sums; every rank adds them in rank order).
  Stats reduce_stats(double local_loss_sum) {
    double ss = 0;
    if (zero()) {
      for (T g : sync_->owned()) ss += static_cast<double>(g) * static_cast<double>(g);
    } else {
      const RowRange part = split_rows(plan_->total(), comm_.size(), comm_.rank());
      for (int64_t i = part.begin; i < part.end(); ++i)
        ss += static_cast<double>(grads_[i]) * static_cast<double>(grads_[i]);
    }
    const auto t0 = clock::now();
    const std::vector<double> all = comm_.gather_values(std::vector<double>{local_loss_sum, ss});
    wait_.other += seconds_since(t0);
    Stats s;
    double total_ss = 0;
    for (int r = 0; r < comm_.size(); ++r) {
      s.loss_sum += all[static_cast<size_t>(2 * r)];
      total_ss += all[static_cast<size_t>(2 * r + 1)];
    }
    s.grad_norm = std::sqrt(total_ss);
    return s;
  }
  void scale_gradients(T f) {
    if (zero())
      for (T& g : sync_->owned()) g *= f;
    else
      for (int64_t i = 0; i < plan_->total(); ++i) grads_[i] *= f;
  }
  // The optimizer update. opt's step count advances either way; with ZeRO-1 its moment buffers are untouched
  // (see gather_optimizer_state) and the parameters are all-gathered afterwards.
  void update(AdamW<T>& opt, T* params, double lr) {
    if (!zero()) {
      opt.step(params, grads_, lr);
      return;
    }
    opt.set_steps(opt.steps() + 1);
    sharded_->step(params, sync_->owned().data(), opt.config(), opt.steps(), lr);
    std::vector<T> owned_params(static_cast<size_t>(plan_->owned_total()), T(0));
    for (const Bucket& b : plan_->buckets()) {
      const RowRange own = plan_->owned_range(b, comm_.rank());
      std::memcpy(owned_params.data() + b.owned, params + own.begin, sizeof(T) * static_cast<size_t>(own.count));
    }
    const auto t0 = clock::now();
    gather_owned(comm_, *plan_, owned_params.data(), params);
    wait_.other += seconds_since(t0);
  }
  // Time the last step spent waiting for communication: for the gradient buckets after the backward pass
  // (what the overlap did not hide) and for everything else (counts, loss and norm, ZeRO-1's parameter
  // all-gather).
  struct Waits {
    double gradients = 0, other = 0;
  };
  const Waits& last_waits() const { return wait_; }

  // ZeRO-1, collective: every rank's moments into opt's full buffers (before writing a checkpoint).
  void gather_optimizer_state(AdamW<T>& opt) {
    if (!zero()) return;
    gather_owned(comm_, *plan_, sharded_->exp_avg().data(), opt.exp_avg());
    gather_owned(comm_, *plan_, sharded_->exp_avg_sq().data(), opt.exp_avg_sq());
  }
  // ZeRO-1: this rank's moments from opt's full buffers (after loading a checkpoint into them).
  void load_optimizer_state(const AdamW<T>& opt) {
    if (zero()) sharded_->load(opt.exp_avg(), opt.exp_avg_sq());
  }

 private:
  Communicator& comm_;
  DataParallelConfig cfg_;
  std::unique_ptr<BucketPlan> plan_;
  std::unique_ptr<GradientSync<T>> sync_;
  std::unique_ptr<ShardedAdamW<T>> sharded_;
  T* grads_ = nullptr;
  Waits wait_;

  using clock = std::chrono::steady_clock;
  static double seconds_since(clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); }
};

}  // namespace retnet::dist
