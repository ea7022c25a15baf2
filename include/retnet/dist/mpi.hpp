#pragma once
// The MPI communicator: processes on one host or many, started by mpirun (OpenMPI, MPICH). Link retnet::mpi.
//
// Failure handling: a rank that dies is normally reported by mpirun, which then ends the others. For what
// mpirun cannot see (a rank that hangs, a lost host under some launchers) every collective here is started
// non-blocking and waited for with a deadline (RETNET_DIST_TIMEOUT_S, default 300 s): past it the rank prints
// which collective timed out and aborts the job. MPI errors go to a handler that prints the MPI error string
// and aborts, never to a silent return code. An exception that leaves a rank's MpiContext ends the job too.
//
// Threads: only the thread that made the MpiContext calls MPI (MPI_THREAD_FUNNELED); OpenMP threads compute.
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "retnet/core/error.hpp"
#include "retnet/dist/communicator.hpp"

namespace retnet::dist {

// Initialises MPI for the process (once) and finalises it at the end of the scope. If the scope is left by an
// exception, the job is aborted instead: the other ranks would otherwise wait in their next collective.
class MpiContext {
 public:
  MpiContext(int* argc, char*** argv) : uncaught_(std::uncaught_exceptions()) {
    int init = 0;
    MPI_Initialized(&init);
    if (init) return;
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    owns_ = true;
  }
  MpiContext() : MpiContext(nullptr, nullptr) {}
  MpiContext(const MpiContext&) = delete;
  MpiContext& operator=(const MpiContext&) = delete;
  ~MpiContext() {
    if (!owns_) return;
    int done = 0;
    MPI_Finalized(&done);
    if (done) return;
    if (std::uncaught_exceptions() > uncaught_) {
      int rank = 0;
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      std::fprintf(stderr, "retnet::dist: rank %d is leaving through an exception; aborting the job\n", rank);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Finalize();
  }

 private:
  int uncaught_;
  bool owns_ = false;
};

class MpiCommunicator;

namespace detail {

inline MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    case DType::i64:
      return MPI_INT64_T;
    case DType::bf16:
      return MPI_UINT16_T;  // copies only: reductions refuse bf16 (reduce_type)
  }
  fail("dist::MpiCommunicator: unknown data type ", static_cast<int>(t));
}

inline MPI_Datatype reduce_type(DType t, const char* op) {
  require(t != DType::bf16, "dist::MpiCommunicator::", op, ": MPI has no bf16 arithmetic (reduce float buffers)");
  return mpi_type(t);
}

inline void mpi_error_handler(MPI_Comm* comm, int* code, ...) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(*code, text, &len);
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "retnet::dist: MPI error on rank %d: %s; aborting the job\n", rank, text);
  std::fflush(stderr);
  MPI_Abort(*comm, 1);
}

}  // namespace detail

// A communicator over (a duplicate of) an MPI communicator; MPI must be initialised (MpiContext).
class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm base = MPI_COMM_WORLD, double timeout_s = collective_timeout_from_env())
      : timeout_s_(timeout_s) {
    int init = 0;
    MPI_Initialized(&init);
    require(init != 0, "dist::MpiCommunicator: MPI is not initialised (make a dist::MpiContext first)");
    require(timeout_s > 0, "dist::MpiCommunicator: timeout ", timeout_s, " s must be positive");
    MPI_Comm_dup(base, &comm_);
    MPI_Comm_create_errhandler(&detail::mpi_error_handler, &handler_);
    MPI_Comm_set_errhandler(comm_, handler_);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    char host[MPI_MAX_PROCESSOR_NAME] = {};
    int len = 0;
    MPI_Get_processor_name(host, &len);
    host_.assign(host, static_cast<size_t>(len));
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;
  ~MpiCommunicator() override {
    int done = 0;
    MPI_Finalized(&done);
    if (done) return;
    MPI_Comm_free(&comm_);
    MPI_Errhandler_free(&handler_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string describe() const override {
    return "MPI rank " + std::to_string(rank_) + " of " + std::to_string(size_) + " on " + host_;
  }
  double timeout_seconds() const { return timeout_s_; }
  MPI_Comm handle() const { return comm_; }

  std::unique_ptr<Request> all_reduce_async(void* buf, int64_t n, DType t, ReduceOp op) override {
    auto req = std::make_unique<Pending>(*this, "all_reduce", n);
    char* p = static_cast<char*>(buf);
    for (int64_t done = 0; done < n;) {  // MPI counts are int: large buffers go in pieces
      const int c = static_cast<int>(std::min<int64_t>(n - done, kMaxCount));
      MPI_Request r;
      MPI_Iallreduce(MPI_IN_PLACE, p + done * dtype_size(t), c, detail::reduce_type(t, "all_reduce"),
                     op == ReduceOp::sum ? MPI_SUM : MPI_MAX, comm_, &r);
      req->add(r);
      done += c;
    }
    return req;
  }
  std::unique_ptr<Request> reduce_scatter_async(const void* send, void* recv, int64_t count, DType t) override {
    require(count <= kMaxCount, "dist::MpiCommunicator::reduce_scatter: ", count,
            " elements per rank exceed MPI's int count; use smaller buckets");
    auto req = std::make_unique<Pending>(*this, "reduce_scatter", count * size_);
    MPI_Request r;
    MPI_Ireduce_scatter_block(send, recv, static_cast<int>(count), detail::reduce_type(t, "reduce_scatter"), MPI_SUM,
                              comm_, &r);
    req->add(r);
    return req;
  }
  std::unique_ptr<Request> all_gather_async(const void* send, void* recv, int64_t count, DType t) override {
    require(count <= kMaxCount, "dist::MpiCommunicator::all_gather: ", count,
            " elements per rank exceed MPI's int count; use smaller buckets");
    auto req = std::make_unique<Pending>(*this, "all_gather", count * size_);
    const bool in_place = send == static_cast<const char*>(recv) + rank_ * count * dtype_size(t);
    MPI_Request r;
    MPI_Iallgather(in_place ? MPI_IN_PLACE : send, static_cast<int>(count), detail::mpi_type(t), recv,
                   static_cast<int>(count), detail::mpi_type(t), comm_, &r);
    req->add(r);
    return req;
  }
  void broadcast(void* buf, int64_t n, DType t, int root) override {
    Pending req(*this, "broadcast", n);
    char* p = static_cast<char*>(buf);
    for (int64_t done = 0; done < n;) {
      const int c = static_cast<int>(std::min<int64_t>(n - done, kMaxCount));
      MPI_Request r;
      MPI_Ibcast(p + done * dtype_size(t), c, detail::mpi_type(t), root, comm_, &r);
      req.add(r);
      done += c;
    }
    req.wait();
  }
  void barrier() override {
    Pending req(*this, "barrier", 0);
    MPI_Request r;
    MPI_Ibarrier(comm_, &r);
    req.add(r);
    req.wait();
  }
  [[noreturn]] void abort(const std::string& message, int code = 1) override {
    std::fprintf(stderr, "retnet::dist: %s: %s; aborting the job\n", describe().c_str(), message.c_str());
    std::fflush(stderr);
    MPI_Abort(comm_, code);
    std::_Exit(code);  // MPI_Abort does not return; this keeps [[noreturn]] honest
  }

  using Communicator::all_gather_async;
  using Communicator::all_reduce_async;
  using Communicator::broadcast;
  using Communicator::reduce_scatter_async;

 private:
  static constexpr int64_t kMaxCount = INT_MAX / 2;

  // One started collective (several MPI requests when split); waits with the communicator's deadline.
  class Pending final : public Request {
   public:
    Pending(MpiCommunicator& c, const char* op, int64_t n) : c_(c), op_(op), n_(n) {}
    ~Pending() override {
      if (!reqs_.empty()) wait();  // never leave MPI writing into a buffer that is gone
    }
    void add(MPI_Request r) { reqs_.push_back(r); }
    bool test() override {
      if (reqs_.empty()) return true;
      int flag = 0;
      MPI_Testall(static_cast<int>(reqs_.size()), reqs_.data(), &flag, MPI_STATUSES_IGNORE);
      if (flag) reqs_.clear();
      return flag != 0;
    }
    void wait() override {
      using clock = std::chrono::steady_clock;
      const auto start = clock::now();
      for (int64_t spins = 0; !test(); ++spins) {
        // spin briefly (short collectives), then poll gently so waiting ranks leave the cores to computing ones
        if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
        if ((spins & 63) == 0 && std::chrono::duration<double>(clock::now() - start).count() > c_.timeout_s_)
          c_.abort("collective " + std::string(op_) + " of " + std::to_string(n_) + " elements did not complete in " +
                   std::to_string(c_.timeout_s_) + " s (RETNET_DIST_TIMEOUT_S): another rank failed or stopped");
      }
    }

   private:
    MpiCommunicator& c_;
    const char* op_;
    int64_t n_;
    std::vector<MPI_Request> reqs_;
  };

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Errhandler handler_ = MPI_ERRHANDLER_NULL;
  int rank_ = 0, size_ = 1;
  std::string host_;
  double timeout_s_;
};

}  // namespace retnet::dist
