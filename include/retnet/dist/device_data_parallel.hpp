#pragma once
// Data parallelism for device backends over a communicator that takes device buffers (dist::NcclCommunicator,
// retnet/dist/nccl.cuh). The buckets are BucketPlan's (dist/data_parallel.hpp) and start from the same layer hook;
// the loss sum and the gradient's sum of squares are all-reduced as device doubles; ZeRO-1 reduce-scatters the
// buckets, clips the owned slices, updates the master weights and moments of the owned slices with the multi-tensor
// AdamW kernel restricted to them and all-gathers the parameters.
//
// Nothing here waits for the device: the communicator starts each collective after the work the backend's stream
// has queued so far, and Request::wait makes that stream wait for the collective. Every rank runs the same kernels
// on the same summed data in the same order, so the update is identical on every rank and from run to run (for a
// given world size and NCCL algorithm).
//
// Memory: the moments (and, with bf16 parameters, the float master weights) stay full-size on every rank, as the
// gather target for checkpoints; with ZeRO-1 only the owned slices of them are current between checkpoints.
#include <cstdint>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#include "retnet/core/backend.hpp"
#include "retnet/core/buffer.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/op_types.hpp"
#include "retnet/core/params.hpp"
#include "retnet/core/precision.hpp"
#include "retnet/dist/communicator.hpp"
#include "retnet/dist/data_parallel.hpp"
#include "retnet/train/adamw.hpp"

namespace retnet::dist {

// The communicator's element type for parameters of type T (float, double or a 16-bit bf16 type).
template <class T>
constexpr DType param_dtype() {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>)
    return dtype_of<T>();
  else {
    static_assert(sizeof(T) == 2, "dist: parameters are float, double or bf16");
    return DType::bf16;
  }
}

template <class T, Backend BackendT>
class DeviceDataParallel {
 public:
  using G = grad_t<T>;
  using M = master_t<T>;
  static_assert(std::is_same_v<G, M>, "DeviceDataParallel: gradients and master weights share one type");

  DeviceDataParallel(const ParamTable& table, int64_t layers, const DataParallelConfig& cfg, const BackendT& be)
      : comm_(cfg.comm ? *cfg.comm : single_process()), be_(be), zero_(cfg.zero_stage == 1) {
    cfg.validate();
    require(comm_.device_buffers(), "DeviceDataParallel: the communicator (", comm_.describe(),
            ") does not take device buffers");
    const int64_t elems = std::max<int64_t>(1, cfg.bucket_bytes / static_cast<int64_t>(sizeof(G)));
    plan_ = BucketPlan(table, layers, comm_.size(), elems, zero_);
    if (!zero_) return;
    owned_ = Buffer<G, BackendT>(be, std::max<int64_t>(1, plan_.owned_total()));
    int64_t padded_max = 0;
    std::vector<AdamWRange> ranges;
    for (const Bucket& b : plan_.buckets()) {
      if (b.slice * comm_.size() != b.count) padded_max = std::max(padded_max, b.slice * comm_.size());
      const RowRange own = plan_.owned_range(b, comm_.rank());
      for (const ParamInfo& p : table.entries()) {
        const int64_t lo = std::max(own.begin, p.offset), hi = std::min(own.end(), p.offset + p.numel());
        if (lo < hi) ranges.push_back({lo, hi - lo, p.shape.rank() >= 2 ? 1 : 0});  // matrices decay, as in AdamW
      }
    }
    if (padded_max > 0)
      send_staging_ = Buffer<G, BackendT>(be, padded_max), gather_staging_ = Buffer<G, BackendT>(be, padded_max);
    ranges_count_ = static_cast<int64_t>(ranges.size());
    owned_ranges_ = Buffer<AdamWRange, BackendT>(be, std::max<int64_t>(1, ranges_count_));
    if (ranges_count_ > 0) owned_ranges_.copy_from_host(ranges.data(), ranges_count_);
  }
  DeviceDataParallel(const DeviceDataParallel&) = delete;
  DeviceDataParallel& operator=(const DeviceDataParallel&) = delete;

  Communicator& comm() const { return comm_; }
  bool zero() const { return zero_; }
  const BucketPlan& plan() const { return plan_; }

  // Before the step's backward passes; grads is the flat gradient buffer (device memory).
  void begin(G* grads) {
    grads_ = grads;
    next_ = 0;
    pending_.clear();
  }
  // For Model::backward of the step's last backward pass: starts the buckets that layer `layer` completes.
  std::function<void(int64_t)> hook() {
    return [this](int64_t layer) {
      const auto& bs = plan_.buckets();
      while (next_ < bs.size() && bs[next_].stage >= layer) start(next_++);
    };
  }
  // Starts the remaining buckets; the stream then waits for all of them. Afterwards grads holds the sum over ranks
  // (plain) or the owned buffer the sums of the owned slices (ZeRO-1).
  void finish() {
    const auto& bs = plan_.buckets();
    while (next_ < bs.size()) start(next_++);
    for (auto& r : pending_) r->wait();
    pending_.clear();
  }

  // loss_sum: this rank's loss sum, becomes the sum over ranks; sum_squares receives the squared norm of the summed
  // gradient. Both device doubles; the same bits on every rank.
  void reduce_stats(double* loss_sum, double* sum_squares) {
    comm_.all_reduce_async(static_cast<void*>(loss_sum), 1, DType::f64, ReduceOp::sum)->wait();
    if (!zero_) {  // every rank holds the whole summed gradient
      sum_squares_to(be_, grads_, plan_.total(), sum_squares);
      return;
    }
    sum_squares_to(be_, owned_.data(), plan_.owned_total(), sum_squares);  // padding is zero
    comm_.all_reduce_async(static_cast<void*>(sum_squares), 1, DType::f64, ReduceOp::sum)->wait();
  }
  // Global-norm clipping of what update() reads (see clip_by_norm).
  void clip(const double* sum_squares, double max_norm) {
    if (zero_)
      clip_by_norm(be_, owned_.data(), plan_.owned_total(), sum_squares, max_norm);
    else
      clip_by_norm(be_, grads_, plan_.total(), sum_squares, max_norm);
  }
  // The optimizer update; opt's step count advances. ZeRO-1: the owned slices only, then the parameters are
  // all-gathered.
  void update(AdamW<T, BackendT>& opt, T* params, double lr) {
    if (!zero_) {
      opt.step(params, grads_, lr);
      return;
    }
    // the owned sums back to their places in the flat buffer, where the AdamW kernel reads them
    for (const Bucket& b : plan_.buckets()) {
      const RowRange own = plan_.owned_range(b, comm_.rank());
      if (own.count > 0) copy_elements(be_, grads_ + own.begin, owned_.data() + b.owned, own.count);
    }
    opt.set_steps(opt.steps() + 1);
    const AdamWConfig& c = opt.config();
    const AdamWStepScalars s{lr, c.beta1, c.beta2, c.eps, c.weight_decay, opt.steps()};
    if (ranges_count_ > 0) {
      if constexpr (AdamW<T, BackendT>::has_master)
        adamw_update(be_, opt.master_buffer().data(), params, grads_, opt.exp_avg(), opt.exp_avg_sq(),
                     owned_ranges_.data(), ranges_count_, s);
      else
        adamw_update(be_, params, grads_, opt.exp_avg(), opt.exp_avg_sq(), owned_ranges_.data(), ranges_count_, s);
    }
    gather_owned_slices(params, reinterpret_cast<T*>(gather_staging_.data()));
  }

  // ZeRO-1, collective: every rank's slices of the moments (and master weights) into the full buffers, before a
  // checkpoint is written.
  void gather_optimizer_state(AdamW<T, BackendT>& opt) {
    if (!zero_) return;
    gather_owned_slices(opt.exp_avg(), gather_staging_.data());
    gather_owned_slices(opt.exp_avg_sq(), gather_staging_.data());
    if constexpr (AdamW<T, BackendT>::has_master)
      gather_owned_slices(opt.master_buffer().data(), gather_staging_.data());
  }

 private:
  void start(size_t i) {
    const Bucket& b = plan_.buckets()[i];
    if (!zero_) {
      pending_.push_back(
          comm_.all_reduce_async(static_cast<void*>(grads_ + b.begin), b.count, dtype_of<G>(), ReduceOp::sum));
      return;
    }
    const int64_t padded = b.slice * comm_.size();
    const G* send = grads_ + b.begin;
    if (padded != b.count) {  // only the front bucket: staged, its padding stays zero
      copy_elements(be_, send_staging_.data(), send, b.count);
      send = send_staging_.data();
    }
    pending_.push_back(comm_.reduce_scatter_async(static_cast<const void*>(send),
                                                  static_cast<void*>(owned_.data() + b.owned), b.slice, dtype_of<G>()));
  }

  // full[b.begin, b.begin + b.count) of every bucket from every rank's owned slice, which each rank holds in place
  // in `full`. staging: padded_max elements of U.
  template <class U>
  void gather_owned_slices(U* full, U* staging) {
    const int P = comm_.size(), r = comm_.rank();
    std::vector<std::unique_ptr<Request>> pending;
    const Bucket* padded_bucket = nullptr;
    for (const Bucket& b : plan_.buckets()) {
      if (b.slice * P == b.count) {
        U* dst = full + b.begin;
        pending.push_back(comm_.all_gather_async(static_cast<const void*>(dst + r * b.slice), static_cast<void*>(dst),
                                                 b.slice, param_dtype<U>()));
      } else {
        const RowRange own = plan_.owned_range(b, r);
        if (own.count > 0) copy_elements(be_, staging + r * b.slice, full + own.begin, own.count);
        pending.push_back(comm_.all_gather_async(static_cast<const void*>(staging + r * b.slice),
                                                 static_cast<void*>(staging), b.slice, param_dtype<U>()));
        padded_bucket = &b;
      }
    }
    for (auto& q : pending) q->wait();
    if (padded_bucket) copy_elements(be_, full + padded_bucket->begin, staging, padded_bucket->count);
  }

  Communicator& comm_;
  BackendT be_;
  bool zero_;
  BucketPlan plan_;
  G* grads_ = nullptr;
  size_t next_ = 0;
  std::vector<std::unique_ptr<Request>> pending_;
  Buffer<G, BackendT> owned_, send_staging_, gather_staging_;
  Buffer<AdamWRange, BackendT> owned_ranges_;
  int64_t ranges_count_ = 0;
};

}  // namespace retnet::dist
