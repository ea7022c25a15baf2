#pragma once
// Communicators for data-parallel training: world size, rank and the collectives the trainer needs, over flat
// buffers. Three implementations plug into this interface: SingleProcess (below; no communication), MPI
// (retnet/dist/mpi.hpp, processes and hosts under mpirun) and NCCL (retnet/dist/nccl.cuh, one rank per GPU).
//
// Every collective must be called by all ranks in the same order with the same counts. The *_async forms start
// the operation and return a Request; the buffers must stay untouched until wait() returns. The blocking forms
// are start + wait.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "retnet/core/error.hpp"

namespace retnet::dist {

// bf16: 16-bit brain floats (moved by NCCL; MPI only copies them, in all_gather and broadcast).
enum class DType { f32, f64, i64, bf16 };
enum class ReduceOp { sum, max };

template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>)
    return DType::f32;
  else if constexpr (std::is_same_v<T, double>)
    return DType::f64;
  else {
    static_assert(std::is_same_v<T, int64_t>, "dist: collectives take float, double or int64_t buffers");
    return DType::i64;
  }
}

inline int64_t dtype_size(DType t) { return t == DType::bf16 ? 2 : t == DType::f32 ? 4 : 8; }

inline constexpr double kDefaultCollectiveTimeoutSeconds = 300.0;

// Seconds a collective may wait: RETNET_DIST_TIMEOUT_S when set (a positive number), else the default.
inline double collective_timeout_from_env() {
  const char* s = std::getenv("RETNET_DIST_TIMEOUT_S");
  if (!s || !*s) return kDefaultCollectiveTimeoutSeconds;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  require(end && *end == '\0' && v > 0, "RETNET_DIST_TIMEOUT_S = '", s, "' is not a positive number of seconds");
  return v;
}

// A started collective.
class Request {
 public:
  virtual ~Request() = default;
  // True once the operation has completed (it may make progress on the operation).
  virtual bool test() = 0;
  // Blocks until the operation has completed.
  virtual void wait() = 0;
};

// A request that is complete from the start (the single-process operations).
class CompletedRequest final : public Request {
 public:
  bool test() override { return true; }
  void wait() override {}
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // A short description for messages, e.g. "MPI rank 1 of 4 on host-a".
  virtual std::string describe() const = 0;
  // True when the collectives also take device (GPU) buffers, as device-backend training needs.
  virtual bool device_buffers() const { return false; }

  // buf[0, n) = op over ranks of buf[0, n), in place.
  virtual std::unique_ptr<Request> all_reduce_async(void* buf, int64_t n, DType t, ReduceOp op) = 0;
  // recv[0, count) = sum over ranks of send[rank() * count, (rank() + 1) * count); send has size() * count elements.
  virtual std::unique_ptr<Request> reduce_scatter_async(const void* send, void* recv, int64_t count, DType t) = 0;
  // recv[r * count, (r + 1) * count) = send of rank r. send may equal recv + rank() * count (in place).
  virtual std::unique_ptr<Request> all_gather_async(const void* send, void* recv, int64_t count, DType t) = 0;
  // buf[0, n) = buf of rank root.
  virtual void broadcast(void* buf, int64_t n, DType t, int root) = 0;
  virtual void barrier() = 0;
  // Ends the whole job (every rank) after printing message; for failures a rank cannot recover from.
  [[noreturn]] virtual void abort(const std::string& message, int code = 1) = 0;

  // ---- typed conveniences
  template <class T>
  std::unique_ptr<Request> all_reduce_async(T* buf, int64_t n, ReduceOp op = ReduceOp::sum) {
    check_count("all_reduce", n);
    return all_reduce_async(static_cast<void*>(buf), n, dtype_of<T>(), op);
  }
  template <class T>
  void all_reduce(T* buf, int64_t n, ReduceOp op = ReduceOp::sum) {
    all_reduce_async(buf, n, op)->wait();
  }
  template <class T>
  std::unique_ptr<Request> reduce_scatter_async(const T* send, T* recv, int64_t count) {
    check_count("reduce_scatter", count);
    return reduce_scatter_async(static_cast<const void*>(send), static_cast<void*>(recv), count, dtype_of<T>());
  }
  template <class T>
  void reduce_scatter(const T* send, T* recv, int64_t count) {
    reduce_scatter_async(send, recv, count)->wait();
  }
  template <class T>
  std::unique_ptr<Request> all_gather_async(const T* send, T* recv, int64_t count) {
    check_count("all_gather", count);
    return all_gather_async(static_cast<const void*>(send), static_cast<void*>(recv), count, dtype_of<T>());
  }
  template <class T>
  void all_gather(const T* send, T* recv, int64_t count) {
    all_gather_async(send, recv, count)->wait();
  }
  template <class T>
  void broadcast(T* buf, int64_t n, int root = 0) {
    check_count("broadcast", n);
    require(root >= 0 && root < size(), "dist::Communicator::broadcast: root ", root, " is not a rank in [0, ", size(),
            ")");
    broadcast(static_cast<void*>(buf), n, dtype_of<T>(), root);
  }
  // The values of every rank, in rank order: identical on every rank (sums over it are then bitwise equal
  // everywhere, unlike an all-reduce whose summation order an implementation may choose per rank).
  template <class T>
  std::vector<T> gather_values(const std::vector<T>& mine) {
    std::vector<T> all(mine.size() * static_cast<size_t>(size()));
    if (!mine.empty()) all_gather(mine.data(), all.data(), static_cast<int64_t>(mine.size()));
    return all;
  }

 private:
  static void check_count(const char* op, int64_t n) {
    require(n >= 0, "dist::Communicator::", op, ": count ", n, " must be >= 0");
  }
};

// One process, no communication: every collective is the identity (all_gather with send != recv copies).
class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string describe() const override { return "single process"; }
  std::unique_ptr<Request> all_reduce_async(void*, int64_t, DType, ReduceOp) override {
    return std::make_unique<CompletedRequest>();
  }
  std::unique_ptr<Request> reduce_scatter_async(const void* send, void* recv, int64_t count, DType t) override {
    copy(send, recv, count, t);
    return std::make_unique<CompletedRequest>();
  }
  std::unique_ptr<Request> all_gather_async(const void* send, void* recv, int64_t count, DType t) override {
    copy(send, recv, count, t);
    return std::make_unique<CompletedRequest>();
  }
  void broadcast(void*, int64_t, DType, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(const std::string& message, int code = 1) override;

  using Communicator::all_gather_async;
  using Communicator::all_reduce_async;
  using Communicator::broadcast;
  using Communicator::reduce_scatter_async;

 private:
  static void copy(const void* from, void* to, int64_t n, DType t) {
    if (from != to && n > 0) std::memmove(to, from, static_cast<size_t>(n * dtype_size(t)));
  }
};

inline void SingleProcess::abort(const std::string& message, int code) {
  std::fprintf(stderr, "retnet::dist: %s\n", message.c_str());
  std::fflush(stderr);
  std::_Exit(code);
}

// The communicator a trainer uses when none is given.
inline Communicator& single_process() {
  static SingleProcess p;
  return p;
}

// True on the rank that prints and writes files.
inline bool is_root(const Communicator& comm) { return comm.rank() == 0; }

// printf on rank 0 only (one progress bar under mpirun).
template <class... Args>
void print_root(const Communicator& comm, const char* fmt, Args... args) {
  if (!is_root(comm)) return;
  if constexpr (sizeof...(Args) == 0)
    std::fputs(fmt, stdout);
  else
    std::printf(fmt, args...);
  std::fflush(stdout);
}

// Runs body() and returns its exit code. An exception on a rank of a multi-rank job ends the whole job with
// the exception's message (Communicator::abort) instead of leaving the other ranks waiting in a collective;
// with one process it is printed and 1 returned.
template <class F>
int run_guarded(Communicator& comm, F&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    if (comm.size() > 1) comm.abort(e.what(), 1);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

// ---- row sharding: which rows of a global batch a rank owns
struct RowRange {
  int64_t begin = 0, count = 0;
  int64_t end() const { return begin + count; }
};

// Splits `total` rows into `parts` contiguous ranges whose sizes differ by at most one (the first total % parts
// ranges get the extra row); returns range `index`. A pure function of its arguments, so every rank agrees.
inline RowRange split_rows(int64_t total, int64_t parts, int64_t index) {
  require(total >= 0, "dist::split_rows: total = ", total, " must be >= 0");
  require(parts > 0, "dist::split_rows: parts = ", parts, " must be positive");
  require(index >= 0 && index < parts, "dist::split_rows: index = ", index, " is not in [0, ", parts, ")");
  const int64_t base = total / parts, extra = total % parts;
  return RowRange{index * base + std::min(index, extra), base + (index < extra ? 1 : 0)};
}

// This rank's rows of a global batch of `global_rows` rows.
inline RowRange shard_rows(int64_t global_rows, const Communicator& comm) {
  return split_rows(global_rows, comm.size(), comm.rank());
}

}  // namespace retnet::dist
