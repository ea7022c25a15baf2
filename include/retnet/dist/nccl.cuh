#pragma once
// The NCCL communicator: one rank per GPU, on one host or several. Link retnet::nccl.
//
// Device buffers go through NCCL on a stream of the communicator's own, so collectives overlap the compute stream
// (the backend's, given at construction): each collective starts after the work the compute stream had queued when
// it was called (an event), and Request::wait makes the compute stream wait for it (an event), without blocking
// the host. A blocking form (all_reduce, broadcast, ...) on device buffers is complete in the compute stream's
// order. Host buffers (counts, flags, strings) go through the bootstrap communicator (MPI under mpirun), which also
// carries the NCCL unique id and aborts the job.
//
// Failures: NCCL and CUDA errors raise retnet::Error. A watchdog thread aborts the job (ncclCommAbort, then exit)
// when a device collective has not completed within the collective timeout (RETNET_DIST_TIMEOUT_S, default 300 s,
// counted from the call, so it must cover the compute queued before it) or NCCL reports an asynchronous error.
#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "retnet/core/error.hpp"
#include "retnet/dist/communicator.hpp"

namespace retnet::dist {

namespace nccl_detail {

inline void check_nccl(ncclResult_t r, const char* what, const char* file, int line) {
  if (r == ncclSuccess) return;
  const char* last = ncclGetLastError(nullptr);
  fail("NCCL error in ", what, " (", file, ":", line, "): ", ncclGetErrorString(r),
       last && *last ? std::string(": ") + last : std::string());
}

inline void check_cuda(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess)
    fail("CUDA error in ", what, " (", file, ":", line, "): ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
}

#define RETNET_NCCL_CHECK(call) ::retnet::dist::nccl_detail::check_nccl((call), #call, __FILE__, __LINE__)
#define RETNET_NCCL_CUDA_CHECK(call) ::retnet::dist::nccl_detail::check_cuda((call), #call, __FILE__, __LINE__)

inline ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::i64:
      return ncclInt64;
    case DType::bf16:
      return ncclBfloat16;
  }
  fail("dist::NcclCommunicator: unknown data type ", static_cast<int>(t));
}

// True for device (or managed) memory; false for host memory, pinned or not.
inline bool on_device(const void* p) {
  if (p == nullptr) return false;
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

inline int64_t host_name_hash() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (const char* c = host; *c; ++c) h = (h ^ static_cast<unsigned char>(*c)) * 1099511628211ull;
  return static_cast<int64_t>(h >> 1);
}

}  // namespace nccl_detail

// This rank's index among the ranks on its host (ranks with the same host name, in rank order), and how many there
// are. Collective over comm.
struct LocalRank {
  int index = 0, count = 1;
};
inline LocalRank local_rank(Communicator& comm) {
  const int64_t mine = nccl_detail::host_name_hash();
  const std::vector<int64_t> all = comm.gather_values(std::vector<int64_t>{mine});
  LocalRank l{0, 0};
  for (int r = 0; r < comm.size(); ++r) {
    if (all[static_cast<size_t>(r)] != mine) continue;
    if (r < comm.rank()) ++l.index;
    ++l.count;
  }
  return l;
}

// Makes this rank's GPU current: device `local.index`, or device 0 where the launcher shows each rank one GPU.
// Returns it. Not collective: `who` names the rank in the error.
inline int select_device(const LocalRank& local, const std::string& who) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) (void)cudaGetLastError();
  require(e == cudaSuccess && n > 0, "dist::select_device: ", who, " sees no CUDA device (",
          e == cudaSuccess ? "none found" : cudaGetErrorString(e), ")");
  const int dev = n == 1 ? 0 : local.index;
  require(dev < n, "dist::select_device: ", who, " is rank ", local.index, " of ", local.count,
          " on its host, which has ", n, " CUDA devices: run one rank per GPU");
  RETNET_NCCL_CUDA_CHECK(cudaSetDevice(dev));
  return dev;
}

// The same after finding the local rank (collective over comm).
inline int select_device(Communicator& comm) { return select_device(local_rank(comm), comm.describe()); }

class NcclCommunicator final : public Communicator {
 public:
  // Collective over bootstrap (every rank of it joins; rank 0 makes the NCCL unique id). The current device is this
  // rank's GPU (select_device); compute_stream is the stream the training runs on (Cuda::stream; null: the legacy
  // default stream). bootstrap must outlive this communicator.
  NcclCommunicator(Communicator& bootstrap, cudaStream_t compute_stream,
                   double timeout_s = collective_timeout_from_env())
      : boot_(bootstrap), compute_(compute_stream), timeout_s_(timeout_s) {
    require(timeout_s > 0, "dist::NcclCommunicator: timeout ", timeout_s, " s must be positive");
    RETNET_NCCL_CUDA_CHECK(cudaGetDevice(&device_));
    // the unique id travels as int64 words behind a status word, so a failure on rank 0 reaches every rank
    constexpr size_t kWords = (sizeof(ncclUniqueId) + 7) / 8;
    std::vector<int64_t> words(kWords + 1, 0);
    std::string error;
    if (boot_.rank() == 0) {
      ncclUniqueId id{};
      const ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess)
        error = std::string("ncclGetUniqueId: ") + ncclGetErrorString(r);
      else
        std::memcpy(words.data() + 1, &id, sizeof id);
      words[0] = r == ncclSuccess ? 0 : 1;
    }
    boot_.broadcast(words.data(), static_cast<int64_t>(words.size()), 0);
    require(words[0] == 0, "dist::NcclCommunicator: rank 0 could not make the NCCL unique id",
            error.empty() ? std::string() : ": " + error);
    ncclUniqueId id{};
    std::memcpy(&id, words.data() + 1, sizeof id);
    const ncclResult_t init = ncclCommInitRank(&comm_, boot_.size(), id, boot_.rank());
    // every rank learns whether all joined, so none is left waiting in its first collective
    const std::vector<int64_t> ok = boot_.gather_values(std::vector<int64_t>{init == ncclSuccess ? 1 : 0});
    for (int r = 0; r < boot_.size(); ++r) {
      if (ok[static_cast<size_t>(r)]) continue;
      if (init == ncclSuccess) (void)ncclCommAbort(comm_);
      comm_ = nullptr;
      if (init != ncclSuccess) RETNET_NCCL_CHECK(init);
      fail("dist::NcclCommunicator: rank ", r, " could not join the NCCL communicator");
    }
    int greatest = 0, least = 0;
    RETNET_NCCL_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    // the highest priority: the collectives' kernels start as soon as SMs free up during the backward pass
    RETNET_NCCL_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest));
    RETNET_NCCL_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    watchdog_ = std::thread([this] { watch(); });
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  ~NcclCommunicator() override {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    if (stream_) (void)cudaStreamSynchronize(stream_);
    if (comm_) (void)ncclCommDestroy(comm_);
    if (ready_) (void)cudaEventDestroy(ready_);
    if (stream_) (void)cudaStreamDestroy(stream_);
  }

  int rank() const override { return boot_.rank(); }
  int size() const override { return boot_.size(); }
  std::string describe() const override {
    return "NCCL rank " + std::to_string(rank()) + " of " + std::to_string(size()) + " on GPU " +
           std::to_string(device_) + " (" + boot_.describe() + ")";
  }
  bool device_buffers() const override { return true; }
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  ncclComm_t handle() const { return comm_; }

  std::unique_ptr<Request> all_reduce_async(void* buf, int64_t n, DType t, ReduceOp op) override {
    if (n == 0) return std::make_unique<CompletedRequest>();
    if (!nccl_detail::on_device(buf)) return boot_.all_reduce_async(buf, n, t, op);
    return launch("all_reduce", n, [&] {
      return ncclAllReduce(buf, buf, static_cast<size_t>(n), nccl_detail::nccl_type(t),
                           op == ReduceOp::sum ? ncclSum : ncclMax, comm_, stream_);
    });
  }
  std::unique_ptr<Request> reduce_scatter_async(const void* send, void* recv, int64_t count, DType t) override {
    if (count == 0) return std::make_unique<CompletedRequest>();
    if (!same_space("reduce_scatter", send, recv)) return boot_.reduce_scatter_async(send, recv, count, t);
    return launch("reduce_scatter", count * size(), [&] {
      return ncclReduceScatter(send, recv, static_cast<size_t>(count), nccl_detail::nccl_type(t), ncclSum, comm_,
                               stream_);
    });
  }
  std::unique_ptr<Request> all_gather_async(const void* send, void* recv, int64_t count, DType t) override {
    if (count == 0) return std::make_unique<CompletedRequest>();
    if (!same_space("all_gather", send, recv)) return boot_.all_gather_async(send, recv, count, t);
    return launch("all_gather", count * size(), [&] {
      return ncclAllGather(send, recv, static_cast<size_t>(count), nccl_detail::nccl_type(t), comm_, stream_);
    });
  }
  void broadcast(void* buf, int64_t n, DType t, int root) override {
    if (n == 0) return;
    if (!nccl_detail::on_device(buf)) return boot_.broadcast(buf, n, t, root);
    launch("broadcast", n, [&] {
      return ncclBroadcast(buf, buf, static_cast<size_t>(n), nccl_detail::nccl_type(t), root, comm_, stream_);
    })->wait();
  }
  void barrier() override {
    RETNET_NCCL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    boot_.barrier();
  }
  [[noreturn]] void abort(const std::string& message, int code = 1) override {
    std::fprintf(stderr, "retnet::dist: %s: %s\n", describe().c_str(), message.c_str());
    std::fflush(stderr);
    if (comm_) (void)ncclCommAbort(comm_);
    boot_.abort(message, code);
    std::_Exit(code);  // the bootstrap's abort does not return; this keeps [[noreturn]] honest
  }

  using Communicator::all_gather_async;
  using Communicator::all_reduce_async;
  using Communicator::broadcast;
  using Communicator::reduce_scatter_async;

 private:
  // A collective queued on stream_; `done` is recorded after it.
  struct Op {
    cudaEvent_t done = nullptr;
    const char* name = "";
    int64_t n = 0;
    std::chrono::steady_clock::time_point started;
    ~Op() {
      if (done) (void)cudaEventDestroy(done);  // deferred by CUDA until the event completes
    }
  };

  class DeviceRequest final : public Request {
   public:
    DeviceRequest(std::shared_ptr<Op> op, cudaStream_t compute) : op_(std::move(op)), compute_(compute) {}
    ~DeviceRequest() override {
      if (!waited_) (void)cudaStreamWaitEvent(compute_, op_->done, 0);  // later work never races the collective
    }
    bool test() override {
      const cudaError_t e = cudaEventQuery(op_->done);
      if (e == cudaErrorNotReady) return false;
      RETNET_NCCL_CUDA_CHECK(e);
      return true;
    }
    void wait() override {
      RETNET_NCCL_CUDA_CHECK(cudaStreamWaitEvent(compute_, op_->done, 0));
      waited_ = true;
    }

   private:
    std::shared_ptr<Op> op_;
    cudaStream_t compute_;
    bool waited_ = false;
  };

  // Host and device buffers do not mix in one collective.
  static bool same_space(const char* op, const void* send, const void* recv) {
    const bool s = nccl_detail::on_device(send), r = nccl_detail::on_device(recv);
    require(s == r, "dist::NcclCommunicator::", op, ": the send buffer is ", s ? "device" : "host",
            " memory but the receive buffer is ", r ? "device" : "host", " memory");
    return s;
  }

  template <class F>
  std::unique_ptr<Request> launch(const char* name, int64_t n, F&& call) {
    RETNET_NCCL_CUDA_CHECK(cudaEventRecord(ready_, compute_));
    RETNET_NCCL_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
    RETNET_NCCL_CHECK(call());
    auto op = std::make_shared<Op>();
    op->name = name;
    op->n = n;
    op->started = std::chrono::steady_clock::now();
    RETNET_NCCL_CUDA_CHECK(cudaEventCreateWithFlags(&op->done, cudaEventDisableTiming));
    RETNET_NCCL_CUDA_CHECK(cudaEventRecord(op->done, stream_));
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      watched_.push_back(op);
    }
    return std::make_unique<DeviceRequest>(std::move(op), compute_);
  }

  // The watchdog: drops completed collectives; ends the job on a late one or an asynchronous NCCL error.
  void watch() {
    (void)cudaSetDevice(device_);
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      wake_.wait_for(lock, std::chrono::milliseconds(20));
      if (stop_) break;
      const auto now = std::chrono::steady_clock::now();
      for (size_t i = 0; i < watched_.size();) {
        const Op& op = *watched_[i];
        const cudaError_t e = cudaEventQuery(op.done);
        if (e == cudaSuccess) {
          watched_[i] = watched_.back();
          watched_.pop_back();
          continue;
        }
        if (e != cudaErrorNotReady) die(std::string("CUDA error while ") + op.name + " ran: " + cudaGetErrorString(e));
        if (std::chrono::duration<double>(now - op.started).count() > timeout_s_)
          die(std::string("collective ") + op.name + " of " + std::to_string(op.n) + " elements did not complete in " +
              std::to_string(timeout_s_) + " s (RETNET_DIST_TIMEOUT_S): another rank failed or stopped");
        ++i;
      }
      ncclResult_t async = ncclSuccess;
      if (comm_ && ncclCommGetAsyncError(comm_, &async) == ncclSuccess && async != ncclSuccess &&
          async != ncclInProgress)
        die(std::string("NCCL reported an asynchronous error: ") + ncclGetErrorString(async));
    }
  }
  // From the watchdog thread, which must not call MPI: the launcher ends the other ranks when this one exits.
  [[noreturn]] void die(const std::string& message) {
    std::fprintf(stderr, "retnet::dist: %s: %s; aborting\n", describe().c_str(), message.c_str());
    std::fflush(stderr);
    (void)ncclCommAbort(comm_);
    std::_Exit(1);
  }

  Communicator& boot_;
  cudaStream_t compute_ = nullptr, stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  ncclComm_t comm_ = nullptr;
  int device_ = 0;
  double timeout_s_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::vector<std::shared_ptr<Op>> watched_;
  std::thread watchdog_;
};

}  // namespace retnet::dist
