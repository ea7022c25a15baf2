#pragma once
// A decoding step of Model<T, Cuda> captured once as a CUDA graph and replayed, so a step costs one launch instead
// of one per op. The graph reads the token ids from state.tokens() and the positions from state.device_positions()
// (the step advances them itself), so replays need no new arguments; with a DeviceSampler it also samples the next
// ids into state.tokens(). The graph holds the addresses of the model's parameters and of the state's buffers,
// which do not move (Model::prefill_rows copies into a device state, never swaps it).
//
// cuBLAS products can be captured once the handle has a workspace of its own (cublasSetWorkspace; a handle left on
// cuBLAS's default workspace may allocate during capture): the graph gives the model's handle one for its lifetime
// and hands the default back when destroyed.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "retnet/core/buffer.hpp"
#include "retnet/cuda/context.cuh"
#include "retnet/cuda/sampling.cuh"
#include "retnet/nn/model.hpp"

namespace retnet {

template <class T>
class DecodeGraph {
 public:
  using ModelT = Model<T, Cuda>;
  using State = typename ModelT::State;

  // cuBLAS's recommended workspace on Hopper.
  static constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

  // sampler (optional, its rows = the state's batch): sample the next ids after each step.
  DecodeGraph(ModelT& model, State& state, DeviceSampler* sampler = nullptr)
      : model_(model), state_(state), sampler_(sampler) {
    const Cuda& ctx = model.backend();
    require(ctx.cublas != nullptr, "DecodeGraph: the model's Cuda context has no cuBLAS handle");
    require(state.tokens() != nullptr, "DecodeGraph: the state was not made by make_state");
    require(!sampler || sampler->rows() == state.batch(), "DecodeGraph: the sampler has ",
            sampler ? sampler->rows() : 0, " rows, the state ", state.batch());
    workspace_ = Buffer<unsigned char, Cuda>(ctx, static_cast<int64_t>(kCublasWorkspaceBytes));
    RETNET_CUBLAS_CHECK(cublasSetStream(ctx.cublas, ctx.stream));
    RETNET_CUBLAS_CHECK(cublasSetWorkspace(ctx.cublas, workspace_.data(), kCublasWorkspaceBytes));
  }
  ~DecodeGraph() {
    const Cuda& ctx = model_.backend();
    (void)cudaStreamSynchronize(ctx.stream);
    if (exec_) (void)cudaGraphExecDestroy(exec_);
    if (graph_) (void)cudaGraphDestroy(graph_);
    (void)cublasSetStream(ctx.cublas, ctx.stream);  // back to cuBLAS's own workspace before ours is freed
  }
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;

  // One step of every row (then the sampling, with a sampler), enqueued on the model's stream; advances
  // state.positions. The first call runs the ops directly (so each has run once outside capture, as capture
  // needs), the second captures them and launches the graph, later calls launch it.
  void replay() {
    if (calls_ == 0) {
      enqueue();
    } else {
      if (!exec_) capture();
      RETNET_CUDA_CHECK(cudaGraphLaunch(exec_, model_.backend().stream));
    }
    ++calls_;
    for (auto& p : state_.positions) p += 1;
  }

  bool captured() const { return exec_ != nullptr; }

 private:
  void enqueue() {
    model_.step_enqueue(state_);
    if (sampler_) sampler_->sample(state_.logits(), state_.tokens(), 0, state_.batch());
  }
  void capture() {
    const cudaStream_t s = model_.backend().stream;
    require(s != nullptr,
            "DecodeGraph: the model's Cuda context uses the legacy default stream, which cannot be "
            "captured; give it a stream of its own");
    RETNET_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    try {
      enqueue();
    } catch (...) {
      cudaGraph_t broken = nullptr;
      (void)cudaStreamEndCapture(s, &broken);
      if (broken) (void)cudaGraphDestroy(broken);
      throw;
    }
    RETNET_CUDA_CHECK(cudaStreamEndCapture(s, &graph_));
    RETNET_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
  }

  ModelT& model_;
  State& state_;
  DeviceSampler* sampler_;
  Buffer<unsigned char, Cuda> workspace_;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  int64_t calls_ = 0;
};

}  // namespace retnet
