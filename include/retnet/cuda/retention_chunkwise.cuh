#pragma once
// Retention on the GPU: host launchers (validation, dispatch of head sizes to template constants, the pass
// sequence of forward and backward) and the chunkwise form. docs/SEMANTICS.md is the contract.
//
// Every form computes raw retention with the chunk engine of retention_scan.cuh and applies the form's
// detached row multipliers mu_n (torchscale mode); the forms differ only in mu. The backward pass is three
// more runs of the same engine (g = mu * d_o):
//   dq = forward retention of (q=g, k=v, v=k) from U0^T            (state U_n^T)
//   dk = reversed retention of (q=v, k=g, v=q) from dU_T^T          (state dU_n^T: the dv run's states, read
//                                                                    transposed; no passes of its own)
//   dv = reversed retention of (q=k, k=q, v=g) from dU_T            (state dU_n; its end is d kv0)
// Where the value size is 64 or 128 and the buffers fit, dk and dv come from one fused walk over dU
// (chunk_engine_dkdv_kernel): four input tiles and one state update per chunk instead of six and two.
// Storage float or bf16 (__nv_bfloat16); state, scale and accumulation always float. Both run on
// chunk_engine_kernel (retention_engine.cuh: bf16 mma.sync m16n8k16, or wgmma with key size 128 or 256 in sm_90a
// builds (retention_wgmma.cuh); float three tf32 products per product, float accuracy, and on wgmma with key size 128
// or 256 (retention_wgmma_f32.cuh); float with key size 256 where the wgmma walks are not built on the generic
// scan_kernel). geometry() picks the segment split and how
// many summary blocks sum each segment; on the chunk engine the last segment's outputs blocks write the final
// state, so that segment needs no summary (a single-segment run has no summary pass, nor a prefix pass where its
// initial state enters unscaled).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include "retnet/core/checked.hpp"
#include "retnet/core/config.hpp"
#include "retnet/core/error.hpp"
#include "retnet/core/retention_args.hpp"
#include "retnet/core/tensor.hpp"
#include "retnet/cuda/context.cuh"
#include "retnet/cuda/retention_engine.cuh"
#include "retnet/cuda/retention_saved.cuh"
#include "retnet/cuda/retention_scan.cuh"

namespace retnet {
namespace cuda_detail {

template <class E>
struct MmaFor;
template <>
struct MmaFor<float> {
  using type = MmaTf32x3;
};
template <>
struct MmaFor<__nv_bfloat16> {
  using type = MmaBf16;
};

// Rows per chunk of the generic scan_kernel: 64, except float with a 256-wide reduction (shared memory).
template <class E, int DQK>
inline constexpr int chunk_rows = (std::is_same_v<E, float> && DQK == 256) ? 32 : 64;

template <class E>
inline constexpr const char* type_name = std::is_same_v<E, float> ? "float" : "bf16";

inline HeadDecays head_decays(const RetentionConfig& cfg) {
  HeadDecays d{};
  for (int64_t h = 0; h < cfg.heads(); ++h) {
    d.log2g[h] = static_cast<float>(cfg.log_gammas()[static_cast<size_t>(h)] / std::log(2.0));
    d.lng[h] = cfg.log_gammas()[static_cast<size_t>(h)];
  }
  return d;
}

// One raw retention run over (q, k, v) with optional reversal, initial/final state and row multipliers.
struct Run {
  const void* q = nullptr;  // [B, T, H, dqk]
  const void* k = nullptr;
  const void* v = nullptr;  // [B, T, H, dval]
  void* o = nullptr;        // [B, T, H, dval]
  const float* mu = nullptr;
  int dqk = 0, dval = 0;
  bool reverse = false;
  const float* init = nullptr;
  bool init_transposed = false;
  InitScale init_scale = InitScale::one;
  const float* s0 = nullptr;
  float* final_state = nullptr;
  FinalScale final_scale = FinalScale::one;
  float* colsum = nullptr;
  int seg = 0;                     // fixed segment length (torchscale chunkwise), 0 = choose
  bool states_transposed = false;  // run_output: the states are another run's, [dval, dqk] per segment
  bool states_reused = false;      // the forward of a backward that reads its states (geometry()'s `reused`)
  // The fused backward (chunk_engine_dkdv_kernel): this is the dv run, and its outputs pass also writes dk (o2)
  // from the fourth input v (x).
  bool fused_dkdv = false;
  const void* x = nullptr;
  void* o2 = nullptr;
};

// Blocks the segment split aims at (about 4 waves of 2 blocks on 132 SMs).
inline constexpr int64_t kTargetBlocks = 1024;

template <int = 0>
__global__ void wgmma_probe_kernel(int* built) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *built = 1;
#else
  *built = 0;
#endif
}

// Whether this program's kernels run their wgmma walks on the current device: built for sm_90a, running on a
// compute capability 9.0 device. The host compilation cannot tell (nvcc's __CUDA_ARCH_LIST__ says 900 for both 90 and
// 90a), so a one-thread kernel asks, once per device, with residency()'s other first-call work (outside capture).
inline bool wgmma_walks_built() {
  int dev = 0;
  RETNET_CUDA_CHECK(cudaGetDevice(&dev));
  static std::mutex mutex;
  static std::map<int, bool> known;
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = known.find(dev); it != known.end()) return it->second;
  int* flag = nullptr;
  int built = 0;
  RETNET_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
  wgmma_probe_kernel<<<1, 1>>>(flag);
  const cudaError_t launched = cudaGetLastError();
  const cudaError_t copied = cudaMemcpy(&built, flag, sizeof(int), cudaMemcpyDeviceToHost);
  RETNET_CUDA_CHECK(cudaFree(flag));
  RETNET_CUDA_CHECK(launched);
  RETNET_CUDA_CHECK(copied);
  known.emplace(dev, built == 1);
  return built == 1;
}

// The scan kernel a run uses: the chunk engine with the widest value tile (128 or 64 columns) whose buffers fit (float
// with key size 256: chunk_float256_kernel where built), or the generic scan_kernel where none fits.
struct ScanKernel {
  const void* fn = nullptr;
  int threads = 0, bytes = 0, vt = 0;
  bool writes_final = false;  // the last segment's outputs blocks can write the final state (chunk engine)
  bool tma = false;           // its wgmma walk loads through TMA where given the tensor maps (kWgmmaTmaWalk)
};

template <class E, int DQK, bool Summary, class P = typename MmaFor<E>::type>
ScanKernel generic_scan_kernel() {
  constexpr int LM = chunk_rows<E, DQK>;
  return {reinterpret_cast<const void*>(scan_kernel<P, DQK, LM, Summary>), kThreads,
          ScanSmem<P, DQK, LM, Summary>::bytes, kVTile, false};
}

template <class Ops, int DQK, bool Summary, int VT>
ScanKernel engine_scan_kernel() {
  return {reinterpret_cast<const void*>(chunk_engine_kernel<Ops, DQK, VT, Summary>),
          kEngineThreads,
          engine_launch_bytes<Ops, DQK, VT, Summary>(),
          VT,
          true,
          kWgmmaTmaWalk<Ops, DQK, VT, Summary>};
}

// The engine for storage E: one tf32 product per product for float with tf32, else E's own arithmetic.
template <class E, int DQK, bool Summary, int VT>
ScanKernel engine_scan_kernel(bool tf32) {
  if constexpr (std::is_same_v<E, float>) {
    if (tf32) return engine_scan_kernel<EngineOpsTf32, DQK, Summary, VT>();
  }
  return engine_scan_kernel<EngineOps<E>, DQK, Summary, VT>();
}

// Whether the chunk engine runs (E, DQK) with value tile VT (both passes' buffers fit, chunk rows agree).
template <class E, int DQK, int VT>
constexpr bool engine_fits() {
  using Ops = EngineOps<E>;
  return chunk_rows<E, DQK> == kEngineRows && EngineSmem<Ops, DQK, VT, false>::fits &&
         EngineSmem<Ops, DQK, VT, true>::fits;
}

// Whether float with key size 256 runs on the chunk engine: its summaries on chunk_engine_kernel, its outputs on
// chunk_float256_kernel (value tile 64), which exists only where the wgmma walks are built.
template <class E, int DQK>
bool float256_engine() {
  if constexpr (std::is_same_v<E, float> && DQK == 256) return wgmma_walks_built();
  return false;
}

// Whether a run of (E, DQK) takes the chunk engine, and its rows per chunk.
template <class E, int DQK>
bool engine_runs() {
  return engine_fits<E, DQK, kVTile>() || float256_engine<E, DQK>();
}
template <class E, int DQK>
int run_chunk_rows() {
  return float256_engine<E, DQK>() ? kEngineRows : chunk_rows<E, DQK>;
}

// tf32: float storage with one tf32 product per product (Cuda::allow_tf32); narrow: 64 value columns per block
// even where 128 fit (more blocks for short runs, see geometry()).
template <class E, int DQK, bool Summary>
ScanKernel pick_scan(int dv, bool tf32, bool narrow) {
  if constexpr (std::is_same_v<E, float> && DQK == 256) {
    if (float256_engine<E, DQK>()) {
      if constexpr (Summary) {
        return engine_scan_kernel<E, DQK, true, kVTile>(tf32);
      } else {
        const void* fn = tf32 ? reinterpret_cast<const void*>(chunk_float256_kernel<EngineOpsTf32>)
                              : reinterpret_cast<const void*>(chunk_float256_kernel<EngineOps<float>>);
        return {fn, kEngineThreads, WgmmaF32Smem::bytes, kVTile, true, false};
      }
    }
  }
  if constexpr (engine_fits<E, DQK, 128>()) {
    if (dv % 128 == 0 && !narrow) return engine_scan_kernel<E, DQK, Summary, 128>(tf32);
  }
  if constexpr (engine_fits<E, DQK, kVTile>()) return engine_scan_kernel<E, DQK, Summary, kVTile>(tf32);
  if constexpr (std::is_same_v<E, float>) {
    if (tf32) return generic_scan_kernel<E, DQK, Summary, MmaTf32>();
  }
  return generic_scan_kernel<E, DQK, Summary>();
}

template <class Ops, int DQK, int DV>
ScanKernel dkdv_kernel_of() {
  return {reinterpret_cast<const void*>(chunk_engine_dkdv_kernel<Ops, DQK, DV>),
          kEngineThreads,
          dkdv_launch_bytes<Ops, DQK, DV>(),
          DV,
          true,
          kWgmmaDkdv<Ops, DQK, DV>};
}

// The fused backward kernel for storage E, key size DQK and value size dv; fn is null where it does not apply
// (value size 256, or buffers that do not fit, such as float with head size 128).
template <class E, int DQK>
ScanKernel pick_dkdv(int dv, bool tf32) {
  ScanKernel k{};
  if (chunk_rows<E, DQK> != kEngineRows) return k;
  auto pick = [&](auto dv_c) {
    constexpr int DV = decltype(dv_c)::value;
    if constexpr (DkdvSmem<EngineOps<E>, DQK, DV>::fits) {
      k = dkdv_kernel_of<EngineOps<E>, DQK, DV>();
      if constexpr (std::is_same_v<E, float>) {
        if (tf32) k = dkdv_kernel_of<EngineOpsTf32, DQK, DV>();
      }
    }
  };
  if (dv == 64) pick(std::integral_constant<int, 64>{});
  if (dv == 128) pick(std::integral_constant<int, 128>{});
  return k;
}

struct Residency {
  int64_t blocks;  // blocks of the kernel that run at once on the device
  int64_t sms;     // multiprocessors
};

// Readies kernel k on the current device (its shared-memory limit) and returns how many of its blocks run at once
// there. Both happen once per (kernel, device): every run asks, and the queries cost more host time than a small
// run's launches.
inline Residency residency(const ScanKernel& k) {
  int dev = 0;
  RETNET_CUDA_CHECK(cudaGetDevice(&dev));
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, Residency> known;
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = known.find({k.fn, dev}); it != known.end()) return it->second;
  RETNET_CUDA_CHECK(cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, k.bytes));
  int per_sm = 0, sms = 0;
  RETNET_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k.fn, k.threads, k.bytes));
  RETNET_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const Residency r{std::max<int64_t>(1, static_cast<int64_t>(per_sm) * sms), std::max(1, sms)};
  known.emplace(std::make_pair(k.fn, dev), r);
  return r;
}

// Gives a TMA walk its tensor maps (ScanParams::tma; x: the fused backward's fourth input) where its chunks are whole
// 64-row tiles of the sequence: the boxes read whole tiles, and only positions outside the sequence read as zeros.
// Elsewhere (fixed segments of other lengths: torchscale's chunkwise form with a chunk size that is not a multiple
// of 64, or a sequence shorter than it) the walks load through cp.async.
template <int DQK>
void set_tma_maps(ScanParams& sp, int64_t B, int H, bool x = false) {
  if (sp.L != kEngineRows || sp.seg % kEngineRows != 0 || sp.T > INT32_MAX || !wgmma_walks_built()) return;
  sp.tma_q = bf16_rows_tensor_map(sp.q, B, sp.T, H, DQK);
  sp.tma_k = bf16_rows_tensor_map(sp.k, B, sp.T, H, DQK);
  sp.tma_v = bf16_rows_tensor_map(sp.v, B, sp.T, H, sp.dv);
  if (x) sp.tma_x = bf16_rows_tensor_map(sp.x, B, sp.T, H, sp.dv);
  sp.tma = 1;
}

// Whether a launch of wgmma walks loads through TMA (tensor maps given) and every head's decay is within the wgmma
// walks' range (kWgmmaMinLog2Gamma): then all its blocks would take a roles walk, which runs as a kernel of its own
// (chunk_roles_kernel, chunk_dkdv_roles_kernel). A launch with heads outside that range runs chunk_engine_kernel or
// chunk_engine_dkdv_kernel, whose blocks pick their walk per head: the roles walk (with one outputs warpgroup where the
// key size is 128) or wgmma_dkdv_walk for the heads in range, the mma.sync walks for the others.
inline bool roles_walks_apply(const ScanParams& sp, const HeadDecays& dec, int H) {
  if (sp.tma != 1) return false;
  for (int h = 0; h < H; ++h)
    if (dec.log2g[h] < kWgmmaMinLog2Gamma) return false;
  return true;
}
// Whether an outputs pass of chunk_engine_kernel<bf16, 128, 64, false> (k) runs as chunk_roles_kernel.
inline bool roles_kernel_applies(const ScanKernel& k, const ScanParams& sp, const HeadDecays& dec, int H) {
  return kRolesWalk<128, 64> && k.vt == 64 && roles_walks_apply(sp, dec, H);
}
// Whether a fused backward of chunk_engine_dkdv_kernel<bf16, 128, 128> (k) runs as chunk_dkdv_roles_kernel.
inline bool dkdv_roles_kernel_applies(const ScanKernel& k, const ScanParams& sp, const HeadDecays& dec, int H) {
  return k.tma && k.vt == 128 && roles_walks_apply(sp, dec, H);
}

template <class E, int DQK, bool Summary>
void launch_scan(const Cuda& ctx, ScanParams sp, int64_t B, int H, HeadDecays dec, bool narrow) {
  ScanKernel k = pick_scan<E, DQK, Summary>(sp.dv, ctx.allow_tf32, narrow);
  (void)residency(k);  // readies k on this device
  if (k.tma) set_tma_maps<DQK>(sp, B, H);
  if constexpr (std::is_same_v<E, __nv_bfloat16> && DQK == 128 && !Summary) {
    if (roles_kernel_applies(k, sp, dec, H)) {
      using SM = RolesWalkSmem<DQK, 2>;
      k = {reinterpret_cast<const void*>(chunk_roles_kernel<DQK>), SM::THREADS, SM::bytes, 64, true, true};
      (void)residency(k);
    }
  }
  const dim3 grid(static_cast<unsigned>(sp.dv / k.vt), static_cast<unsigned>(sp.NS), static_cast<unsigned>(B * H));
  void* args[] = {&sp, &dec};
  RETNET_CUDA_CHECK(cudaLaunchKernel(k.fn, grid, dim3(static_cast<unsigned>(k.threads)), args,
                                     static_cast<size_t>(k.bytes), ctx.stream));
  RETNET_CUDA_CHECK_LAUNCH(Summary ? "retention scan (segment summaries)" : "retention scan (outputs)");
}

// The segment split. Every block walks its segment's chunks in sequence, so the split trades waves of blocks
// against chunks per block. The summary pass needs no segments of its own length: its blocks each sum sub
// consecutive parts of a segment, and the last segment needs none where its outputs blocks write the final state.
// The split minimises (waves of outputs blocks) x (chunks per block + 2) + kSummaryStart + kSummaryChunk x
// (summary chunks per multiprocessor), the costs in units of one outputs chunk, as measured per kernel on the H200
// (bench/cuda/kernel_times.sh): a block's start, its first load and its state cost about two outputs chunks; the
// summary pass about three plus 0.29 per chunk that its busiest multiprocessor sums. Its blocks share their
// multiprocessor, so the count that matters is chunks per multiprocessor, not waves of blocks. The generic kernel
// (float with head size 256 where the wgmma walks are not built) splits into about kTargetBlocks blocks of 64 value
// columns instead: its float state sums lose accuracy over long segments (1e-5 at T = 16384 needs short ones).
// tf32: float with Cuda::allow_tf32. Where both fit, the split is chosen for 128 and for 64 value columns per block,
// a narrow block's chunk counted as kNarrowChunkCost of a wide one's: short runs with few (batch, head) pairs fill
// the machine with narrow blocks in one segment rather than wide blocks in several (on the H200, bf16 with
// B = 4, H = 16, D = 128: narrow is faster at T = 1024 and 2048, slower at 4096 and 16384; the model agrees for
// 0.645 < kNarrowChunkCost < 0.70).
inline constexpr double kNarrowChunkCost = 0.67;
// Where both widths run on wgmma (bf16 with key size 128, wgmma_walks_built), a narrow chunk costs
// kRolesNarrowChunkCost wide ones: the narrow blocks take the roles walk wherever the launch loads through TMA, and
// are faster at every T from 1024 to 32768 on the H200 (B = 4, H = 16, D = 128). With 0.5, fused_backward_pays takes
// the two runs where they are faster (T = 1024 and 2048 there) and stays within 3 % of the fused walk elsewhere.
inline constexpr double kRolesNarrowChunkCost = 0.5;
// A chunk of the fused backward (two outputs, one state update) in units of an outputs chunk.
inline constexpr double kFusedChunkCost = 1.7;
inline constexpr double kSummaryStart = 3.0, kSummaryChunk = 0.29;
// A summary chunk on wgmma_summary_walk (bf16, key size 128, where the wgmma walks are built): 0.29 scaled by its
// time over the mma.sync walk's (52 against 89 us on the H200); the split's choices are insensitive to it from 0.1
// to 0.29.
inline constexpr double kWgmmaSummaryChunk = 0.17;
// The summary chunk cost for storage E and key size DQK.
template <class E, int DQK>
double summary_chunk_cost() {
  if constexpr (kWgmmaSummaryWalk<EngineOps<E>, DQK, kVTile, true>) {
    if (wgmma_walks_built()) return kWgmmaSummaryChunk;
  }
  return kSummaryChunk;
}

// fused: the split of a fused backward run (its outputs pass is chunk_engine_dkdv_kernel, one block per
// (batch, head), chunks counted as kFusedChunkCost). reused: a forward whose states the backward's dq run reads
// (RetentionSaved), on the same split: one summary pass serves two outputs passes, which favours more segments.
template <class E, int DQK>
Geometry geometry(int dval, int64_t B, int64_t T, int H, int fixed_seg, bool tf32, bool fused, bool reused = false) {
  const int L = run_chunk_rows<E, DQK>();
  Geometry g{L, 0, 0};
  const int64_t chunks = (T + L - 1) / L;
  const int64_t narrow_tiles = B * H * (dval / kVTile);
  // every split keeps NS * sub <= cap, which bounds the states buffer (max_segments)
  const int64_t cap = std::min(chunks, std::max<int64_t>(1, (kTargetBlocks + narrow_tiles - 1) / narrow_tiles));
  if (fixed_seg > 0) {
    g.seg = fixed_seg;
  } else if (!engine_runs<E, DQK>()) {
    g.seg = static_cast<int>((chunks + cap - 1) / cap * L);
  } else {
    double best = -1;
    const bool has_wide =
        pick_scan<E, DQK, false>(dval, tf32, false).vt != pick_scan<E, DQK, false>(dval, tf32, true).vt;
    const bool wgmma_both = has_wide && std::is_same_v<E, __nv_bfloat16> && DQK == 128 && wgmma_walks_built();
    const double summary_chunk = summary_chunk_cost<E, DQK>();  // once: it asks the device whether wgmma is built
    for (const bool narrow : {false, true}) {
      const ScanKernel out = fused ? pick_dkdv<E, DQK>(dval, tf32) : pick_scan<E, DQK, false>(dval, tf32, narrow);
      const ScanKernel sum = pick_scan<E, DQK, true>(dval, tf32, narrow);
      if (narrow && (!has_wide || fused)) continue;  // the same kernel, or no narrow fused kernel
      const double unit = narrow ? (wgmma_both ? kRolesNarrowChunkCost : kNarrowChunkCost) : 1.0;
      const double out_unit = fused ? kFusedChunkCost : 1.0, out_passes = reused ? 2.0 : 1.0;
      const int64_t out_tiles = B * H * (dval / out.vt), sum_tiles = B * H * (dval / sum.vt);
      const int64_t out_slots = residency(out).blocks, sms = residency(sum).sms;
      for (int64_t ns = 1; ns <= cap; ++ns) {
        const int64_t per = (chunks + ns - 1) / ns;  // chunks per segment
        const int64_t used = (chunks + per - 1) / per;
        if (used != ns) continue;  // the same split as a smaller ns
        const double waves_out = static_cast<double>((out_tiles * ns + out_slots - 1) / out_slots);
        const double outputs = out_passes * waves_out * (out_unit * static_cast<double>(per) + 2.0);
        // segments with a summary; each is cut into sub parts (sub divides per)
        const int64_t summed = out.writes_final ? ns - 1 : ns;
        for (int64_t sub = 1; sub <= cap / ns; ++sub) {
          if (per % sub != 0) continue;
          const int64_t blocks = sum_tiles * summed * sub;
          double summary = 0;
          if (summed > 0)
            summary = kSummaryStart + summary_chunk * static_cast<double>((blocks + sms - 1) / sms * (per / sub));
          const double cost = unit * (outputs + summary);
          if (best < 0 || cost < best) {
            best = cost;
            g.cost = cost;
            g.seg = static_cast<int>(per * L);
            g.sub = static_cast<int>(sub);
            g.narrow = narrow;
          }
          if (summed == 0) break;
        }
      }
    }
  }
  g.NS = static_cast<int>((T + g.seg - 1) / g.seg);
  const ScanKernel out = fused ? pick_dkdv<E, DQK>(dval, tf32) : pick_scan<E, DQK, false>(dval, tf32, g.narrow);
  g.outputs_final = out.writes_final;
  g.summaries = g.outputs_final ? (g.NS - 1) * g.sub : g.NS * g.sub;
  return g;
}

// Whether the backward computes dk and dv in one fused walk (chunk_engine_dkdv_kernel: one block per (batch, head)
// and segment) rather than in two runs (dv, then dk on dv's split and states: two outputs passes, whose blocks may be
// narrow), by the split model's costs. The two runs win where few (batch, head) pairs leave the fused walk one block
// per pair or a split with summaries, e.g. (4, 1024, 16, 128) bf16 fwd+bwd on the H200 (13 % faster).
template <class E, int DQK>
bool fused_backward_pays(int dv, int64_t B, int64_t T, int H, int fixed_seg, bool tf32) {
  if (pick_dkdv<E, DQK>(dv, tf32).fn == nullptr) return false;
  if (fixed_seg > 0) return true;  // the split model weighs free splits only
  const Geometry fused = geometry<E, DQK>(dv, B, T, H, 0, tf32, true);
  const Geometry runs = geometry<E, DQK>(dv, B, T, H, 0, tf32, false, true);
  return fused.cost <= runs.cost;
}

template <int DQK>
void launch_prefix(const Cuda& ctx, const PrefixParams& pp, int64_t B, int H, const HeadDecays& dec) {
  const dim3 grid(static_cast<unsigned>(B * H), static_cast<unsigned>(pp.dv / 32));
  prefix_kernel<DQK><<<grid, 256, 0, ctx.stream>>>(pp, dec);
  RETNET_CUDA_CHECK_LAUNCH("retention prefix over segments");
}

// Passes 1 and 2: segment summaries, then entering states (and the final state). Returns the geometry.
template <class E, int DQK>
Geometry run_states_t(const Cuda& ctx, const Run& r, int64_t B, int64_t T, int H, const HeadDecays& dec,
                      float* states) {
  Geometry geo = geometry<E, DQK>(r.dval, B, T, H, r.seg, ctx.allow_tf32, r.fused_dkdv, r.states_reused);
  // One segment without summaries needs the prefix pass only for the normaliser's column sums or a scaled initial
  // state.
  if (geo.summaries == 0 && geo.outputs_final && r.colsum == nullptr &&
      (r.init == nullptr || r.init_scale == InitScale::one)) {
    geo.direct_state = r.init ? r.init : zero_floats(static_cast<size_t>(B * H) * DQK * r.dval, ctx.stream);
    geo.init_direct = geo.direct_state != nullptr;
  }
  ScanParams sp{};
  sp.q = r.q;
  sp.k = r.k;
  sp.v = r.v;
  sp.o = r.o;
  sp.mu = r.mu;
  sp.states = states;
  sp.T = T;
  sp.H = H;
  sp.dv = r.dval;
  sp.L = std::min(geo.L, geo.summary_seg());
  sp.seg = geo.summary_seg();
  sp.NS = geo.summaries;
  sp.slots = geo.slots();
  sp.sub = 1;
  sp.reverse = r.reverse ? 1 : 0;
  if (geo.summaries > 0) launch_scan<E, DQK, true>(ctx, sp, B, H, dec, geo.narrow);
  PrefixParams pp{};
  pp.states = states;
  pp.init = r.init;
  pp.s0 = r.s0;
  pp.final_state = geo.outputs_final ? nullptr : r.final_state;  // else the outputs pass writes it
  pp.colsum = r.colsum;
  pp.T = T;
  pp.H = H;
  pp.dqk = DQK;
  pp.dv = r.dval;
  pp.seg = geo.summary_seg();
  pp.summaries = geo.summaries;
  pp.NS = geo.NS;
  pp.sub = geo.sub;
  pp.slots = geo.slots();
  pp.init_transposed = r.init_transposed ? 1 : 0;
  pp.init_scale = r.init_scale;
  pp.final_scale = r.final_scale;
  if (!geo.init_direct) launch_prefix<DQK>(ctx, pp, B, H, dec);
  return geo;
}

template <class E, int DQK>
void run_output_t(const Cuda& ctx, const Run& r, int64_t B, int64_t T, int H, const HeadDecays& dec, float* states,
                  const Geometry& geo) {
  ScanParams sp{};
  sp.q = r.q;
  sp.k = r.k;
  sp.v = r.v;
  sp.o = r.o;
  sp.mu = r.mu;
  sp.states = states;
  sp.T = T;
  sp.H = H;
  sp.dv = r.dval;
  sp.L = std::min(run_chunk_rows<E, DQK>(), geo.seg);  // this run's own chunk (the states may be another run's)
  sp.seg = geo.seg;
  sp.NS = geo.NS;
  sp.slots = geo.slots();
  sp.sub = geo.sub;
  sp.reverse = r.reverse ? 1 : 0;
  sp.states_transposed = r.states_transposed ? 1 : 0;
  if (geo.outputs_final) {
    sp.final_state = r.final_state;
    sp.s0 = r.s0;
    sp.final_scale = r.final_scale;
  }
  if (geo.init_direct) {  // the outputs pass only reads the states
    sp.states = const_cast<float*>(geo.direct_state);
    sp.states_transposed = r.init_transposed ? 1 : 0;
    sp.slots = sp.sub = 1;
  }
  if (!r.fused_dkdv) return launch_scan<E, DQK, false>(ctx, sp, B, H, dec, geo.narrow);
  sp.x = r.x;
  sp.o2 = r.o2;
  ScanKernel k = pick_dkdv<E, DQK>(r.dval, ctx.allow_tf32);
  require(k.fn != nullptr, "retention backward (CUDA): no fused kernel for these head sizes");
  (void)residency(k);  // readies k on this device
  if (k.tma) set_tma_maps<DQK>(sp, B, H, true);
  if constexpr (std::is_same_v<E, __nv_bfloat16> && DQK == 128) {
    if (dkdv_roles_kernel_applies(k, sp, dec, H)) {
      k = {reinterpret_cast<const void*>(chunk_dkdv_roles_kernel<DQK>),
           DkdvRolesSmem::THREADS,
           DkdvRolesSmem::bytes,
           128,
           true,
           true};
      (void)residency(k);
    }
  }
  const dim3 grid(1, static_cast<unsigned>(sp.NS), static_cast<unsigned>(B * H));
  HeadDecays decays = dec;
  void* args[] = {&sp, &decays};
  RETNET_CUDA_CHECK(cudaLaunchKernel(k.fn, grid, dim3(static_cast<unsigned>(k.threads)), args,
                                     static_cast<size_t>(k.bytes), ctx.stream));
  RETNET_CUDA_CHECK_LAUNCH("retention backward (fused dk, dv)");
}

// The one place where run-time head sizes become template constants.
template <class F>
void dispatch_head_size(int d, F&& f) {
  switch (d) {
    case 64:
      return f(std::integral_constant<int, 64>{});
    case 128:
      return f(std::integral_constant<int, 128>{});
    case 256:
      return f(std::integral_constant<int, 256>{});
  }
  fail("retention (CUDA): head size ", d, " is not supported; supported sizes are 64, 128 and 256");
}

template <class E>
Geometry run_states(const Cuda& ctx, const Run& r, int64_t B, int64_t T, int H, const HeadDecays& dec, float* states) {
  Geometry geo{};
  dispatch_head_size(r.dqk, [&](auto D) { geo = run_states_t<E, decltype(D)::value>(ctx, r, B, T, H, dec, states); });
  return geo;
}

template <class E>
void run_output(const Cuda& ctx, const Run& r, int64_t B, int64_t T, int H, const HeadDecays& dec, float* states,
                const Geometry& geo) {
  dispatch_head_size(r.dqk, [&](auto D) { run_output_t<E, decltype(D)::value>(ctx, r, B, T, H, dec, states, geo); });
}

// Largest states buffer any run of this problem needs (floats).
inline size_t states_floats(int64_t B, int64_t T, int H, int dk, int dv) {
  // the smallest segment any geometry picks is 32 rows (or the configured chunk, counted separately)
  (void)T;
  return static_cast<size_t>(B) * static_cast<size_t>(H) * static_cast<size_t>(dk) * static_cast<size_t>(dv);
}

template <class E>
void check_common(const char* op, const RetentionConfig& cfg, const RetentionDims& d) {
  require(cfg.heads() <= kMaxHeads, op, ": heads = ", cfg.heads(), " exceeds the CUDA limit of ", kMaxHeads);
  for (int64_t x : {d.key_dim, d.value_dim})
    require(x == 64 || x == 128 || x == 256, op, ": head size ", x,
            " is not supported on the GPU; key_dim and value_dim must each be 64, 128 or 256");
  require(d.length < (int64_t{1} << 31) && d.batch * d.heads < 65536, op,
          ": shape too large (batch * heads = ", d.batch * d.heads, ", length = ", d.length, ")");
  int dev = 0;
  RETNET_CUDA_CHECK(cudaGetDevice(&dev));
  int major = 0;
  RETNET_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  require(major >= 8, op, ": needs a GPU of compute capability 8.0 or newer (found ", major, ".x)");
}

inline int64_t nseg(int64_t T, int64_t seg) { return (T + seg - 1) / seg; }

// State slots upper bound for workspace sizing: geometry() never makes more than max(1024/tiles, 1) slots
// (segments x summary blocks per segment) of >= 32 rows, or T/C for a fixed chunk.
inline int64_t max_segments(int64_t B, int64_t T, int H, int dval, int fixed_seg) {
  if (fixed_seg > 0) return nseg(T, fixed_seg);
  const int64_t tiles = B * H * (dval / kVTile);
  return std::min<int64_t>(std::max<int64_t>(1, (kTargetBlocks + tiles - 1) / tiles), nseg(T, 32)) + 1;
}

template <class E>
void compute_mu(const Cuda& ctx, Form form, const RetentionConfig& cfg, const RetentionDims& d, const void* q,
                const void* k, const float* s0, const float* colsum, int NS, float* mu, const HeadDecays& dec) {
  MuParams mp{};
  mp.q = q;
  mp.k = k;
  mp.s0 = s0;
  mp.colsum = colsum;
  mp.mu = mu;
  mp.T = d.length;
  mp.H = static_cast<int>(d.heads);
  mp.dk = static_cast<int>(d.key_dim);
  mp.dv = static_cast<int>(d.value_dim);
  mp.C = static_cast<int>(std::min<int64_t>(cfg.chunk_size(), int64_t{1} << 30));
  mp.NS = NS;
  mp.kind = form == Form::recurrent ? MuKind::recurrent : form == Form::parallel ? MuKind::parallel : MuKind::chunkwise;
  const int bytes = 2 * 32 * (static_cast<int>(d.key_dim) + 1) * static_cast<int>(sizeof(float));
  RETNET_CUDA_CHECK(cudaFuncSetAttribute(mu_kernel<E>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  const dim3 grid(static_cast<unsigned>((d.length + 31) / 32), static_cast<unsigned>(d.batch * d.heads));
  mu_kernel<E><<<grid, 256, bytes, ctx.stream>>>(mp, dec);
  RETNET_CUDA_CHECK_LAUNCH("retention row multipliers");
}

template <class E>
void check_device_args(const char* op, const RetentionInputs<E, Device, float>& in) {
  expect_device_view(op, "q", in.q);
  expect_device_view(op, "k", in.k);
  expect_device_view(op, "v", in.v);
  expect_device_view(op, "state_kv", in.state_kv);
  expect_device_view(op, "state_scale", in.state_scale, 4);
}

template <class E>
SavedKey saved_key(const Cuda& ctx, Form form, const RetentionConfig& cfg, const RetentionDims& d,
                   const RetentionInputs<E, Device, float>& in) {
  SavedKey key;
  RETNET_CUDA_CHECK(cudaGetDevice(&key.device));
  key.type = type_name<E>;
  key.form = form;
  key.normalization = cfg.normalization();
  key.chunk = cfg.chunk_size();
  key.tf32 = ctx.allow_tf32 && std::is_same_v<E, float>;  // bf16 ignores it
  key.batch = d.batch;
  key.length = d.length;
  key.heads = d.heads;
  key.key_dim = d.key_dim;
  key.value_dim = d.value_dim;
  key.log_gammas = cfg.log_gammas();
  key.q = in.q.data();
  key.k = in.k.data();
  key.v = in.v.data();
  key.state_kv = in.state_kv.data();
  key.state_scale = in.state_scale.data();
  return key;
}

template <class E>
void forward_impl(const char* op, const Cuda& ctx, Form form, const RetentionConfig& cfg,
                  const RetentionInputs<E, Device, float>& in, const RetentionOutputs<E, Device, float>& out,
                  RetentionSaved* saved) {
  const RetentionDims d = validate_forward(op, cfg, in, out);
  check_common<E>(op, cfg, d);
  check_device_args(op, in);
  expect_device_view(op, "o", out.o);
  expect_device_view(op, "state_kv (out)", out.state_kv);
  expect_device_view(op, "state_scale (out)", out.state_scale, 4);
  keep_pool_memory();
  const bool ts = cfg.normalization() == Normalization::torchscale;
  const int64_t B = d.batch, T = d.length;
  const int H = static_cast<int>(d.heads), dk = static_cast<int>(d.key_dim), dv = static_cast<int>(d.value_dim);
  const HeadDecays dec = head_decays(cfg);
  const bool chunk_norm = ts && form == Form::chunkwise;
  const int fixed_seg = chunk_norm ? static_cast<int>(std::min<int64_t>(cfg.chunk_size(), T)) : 0;
  const int64_t ns = max_segments(B, T, H, dv, fixed_seg);
  const size_t st_bytes = align_up(states_floats(B, T, H, dk, dv) * static_cast<size_t>(ns) * sizeof(float));
  const size_t cs_bytes = chunk_norm ? align_up(static_cast<size_t>(B * H * ns * dv) * sizeof(float)) : 0;
  const size_t mu_bytes = ts ? align_up(static_cast<size_t>(B * T * H) * sizeof(float)) : 0;
  // What `saved` keeps: the multipliers, and the states where the split is ours (torchscale's chunks make one
  // segment per chunk, whose states would cost the dq run more to read than to compute on its own split).
  const bool keep_states = saved != nullptr && fixed_seg == 0, keep_mu = saved != nullptr && ts;
  const size_t kept_bytes = (keep_states ? st_bytes : 0) + (keep_mu ? mu_bytes : 0);
  float* kept = saved ? SavedAccess::begin(*saved, kept_bytes / sizeof(float), ctx.stream, op) : nullptr;
  Workspace ws(ctx.stream, (keep_states ? 0 : st_bytes) + cs_bytes + (keep_mu ? 0 : mu_bytes));
  float* states = keep_states ? kept : ws.as<float>();
  float* colsum = chunk_norm ? ws.as<float>(keep_states ? 0 : st_bytes) : nullptr;
  float* mu = keep_mu ? kept + (keep_states ? st_bytes : 0) / sizeof(float)
              : ts    ? ws.as<float>((keep_states ? 0 : st_bytes) + cs_bytes)
                      : nullptr;
  const float* s0 = ts ? in.state_scale.data() : nullptr;

  Run r;
  r.q = in.q.data();
  r.k = in.k.data();
  r.v = in.v.data();
  r.o = out.o.data();
  r.mu = mu;
  r.dqk = dk;
  r.dval = dv;
  r.init = in.state_kv.data();
  r.init_scale = ts ? InitScale::sqrt_s0 : InitScale::one;
  r.s0 = s0;
  r.final_state = out.state_kv.data();
  r.final_scale = ts ? FinalScale::rsqrt_final : FinalScale::one;
  r.colsum = colsum;
  r.seg = fixed_seg;
  r.states_reused = keep_states;
  const Geometry geo = run_states<E>(ctx, r, B, T, H, dec, states);
  if (ts) compute_mu<E>(ctx, form, cfg, d, r.q, r.k, s0, colsum, geo.NS, mu, dec);
  run_output<E>(ctx, r, B, T, H, dec, states, geo);
  if (!out.state_scale.empty()) {
    final_scale_kernel<<<static_cast<unsigned>((B * H + 127) / 128), 128, 0, ctx.stream>>>(s0, out.state_scale.data(),
                                                                                           B * H, H, T, dec);
    RETNET_CUDA_CHECK_LAUNCH("retention final scale");
  }
  if (saved) {
    SavedRecord rec;
    rec.key = saved_key(ctx, form, cfg, d, in);
    rec.geo = geo;
    rec.states = keep_states && !geo.init_direct ? states : nullptr;
    rec.mu = keep_mu ? mu : nullptr;
    SavedAccess::finish(*saved, std::move(rec));
  }
}

template <class E>
void backward_impl(const char* op, const Cuda& ctx, Form form, const RetentionConfig& cfg,
                   const RetentionInputs<E, Device, float>& in, const RetentionOutputGrads<E, Device, float>& gout,
                   const RetentionInputGrads<E, Device, float>& gin, const RetentionSaved* saved) {
  const RetentionDims d = validate_backward(op, cfg, in, gout, gin);
  check_common<E>(op, cfg, d);
  check_device_args(op, in);
  expect_device_view(op, "d_o", gout.d_o);
  expect_device_view(op, "d_state_kv (of the final state)", gout.d_state_kv);
  expect_device_view(op, "dq", gin.dq);
  expect_device_view(op, "dk", gin.dk);
  expect_device_view(op, "dv", gin.dv);
  expect_device_view(op, "d_state_kv (of the initial state)", gin.d_state_kv);
  keep_pool_memory();
  const bool ts = cfg.normalization() == Normalization::torchscale;
  const int64_t B = d.batch, T = d.length;
  const int H = static_cast<int>(d.heads), dk = static_cast<int>(d.key_dim), dv = static_cast<int>(d.value_dim);
  const HeadDecays dec = head_decays(cfg);
  const bool chunk_norm = ts && form == Form::chunkwise;
  const int fixed_seg = chunk_norm ? static_cast<int>(std::min<int64_t>(cfg.chunk_size(), T)) : 0;
  const SavedRecord* rec = saved ? &SavedAccess::expect(*saved, saved_key(ctx, form, cfg, d, in), op) : nullptr;
  const int64_t ns = std::max(max_segments(B, T, H, dv, fixed_seg), max_segments(B, T, H, dk, 0));
  const size_t st_bytes = align_up(states_floats(B, T, H, dk, dv) * static_cast<size_t>(ns) * sizeof(float));
  const bool mu_saved = rec && rec->mu;
  const size_t cs_bytes = chunk_norm && !mu_saved ? align_up(static_cast<size_t>(B * H * ns * dv) * sizeof(float)) : 0;
  const size_t mu_bytes = ts && !mu_saved ? align_up(static_cast<size_t>(B * T * H) * sizeof(float)) : 0;
  const size_t g_bytes = ts ? align_up(static_cast<size_t>(B * T * H * dv) * sizeof(E)) : 0;
  Workspace ws(ctx.stream, st_bytes + cs_bytes + mu_bytes + g_bytes);
  float* states = ws.as<float>();
  float* colsum = cs_bytes ? ws.as<float>(st_bytes) : nullptr;
  float* mu = mu_bytes ? ws.as<float>(st_bytes + cs_bytes) : nullptr;
  const float* s0 = ts ? in.state_scale.data() : nullptr;
  const void* g = gout.d_o.data();
  if (ts) {
    if (!mu_saved) {  // else the forward's
      int NS = 0;
      if (chunk_norm) {  // the multipliers need the column sums of the chunk-entering states
        Run f;
        f.q = in.q.data();
        f.k = in.k.data();
        f.v = in.v.data();
        f.dqk = dk;
        f.dval = dv;
        f.init = in.state_kv.data();
        f.init_scale = InitScale::sqrt_s0;
        f.s0 = s0;
        f.colsum = colsum;
        f.seg = fixed_seg;
        NS = run_states<E>(ctx, f, B, T, H, dec, states).NS;
      }
      compute_mu<E>(ctx, form, cfg, d, in.q.data(), in.k.data(), s0, colsum, NS, mu, dec);
    }
    E* gs = ws.as<E>(st_bytes + cs_bytes + mu_bytes);
    const int64_t n = B * T * H * dv;
    scale_rows_kernel<E><<<static_cast<unsigned>((n + 255) / 256), 256, 0, ctx.stream>>>(
        gout.d_o.data(), mu_saved ? rec->mu : mu, gs, B * T * H, dv);
    RETNET_CUDA_CHECK_LAUNCH("retention backward: g = mu d_o");
    g = gs;
  }
  auto run_dq = [&] {  // dq: forward (q=g, k=v, v=k) from U0^T
    Run r;
    r.q = g;
    r.k = in.v.data();
    r.v = in.k.data();
    r.o = gin.dq.data();
    r.dqk = dv;
    r.dval = dk;
    r.init = in.state_kv.data();
    r.init_transposed = true;
    r.init_scale = ts ? InitScale::sqrt_s0 : InitScale::one;
    r.s0 = s0;
    if (rec && rec->states) {  // the forward's entering states U_n, read transposed on the forward's split
      r.states_transposed = true;
      return run_output<E>(ctx, r, B, T, H, dec, const_cast<float*>(rec->states), rec->geo);
    }
    const Geometry geo = run_states<E>(ctx, r, B, T, H, dec, states);
    run_output<E>(ctx, r, B, T, H, dec, states, geo);
  };
  // The reversed runs start from d(final U) / gamma, so that their first row adds q^T g on top of d(final U).
  const InitScale dfin = ts ? InitScale::rsqrt_final_over_gamma : InitScale::inv_gamma;
  {  // dv: reversed (q=k, k=q, v=g) from dU_T; its final state is dU_0
    Run r;
    r.q = in.k.data();
    r.k = in.q.data();
    r.v = g;
    r.o = gin.dv.data();
    r.dqk = dk;
    r.dval = dv;
    r.reverse = true;
    r.init = gout.d_state_kv.data();
    r.init_scale = dfin;
    r.s0 = s0;
    r.final_state = gin.d_state_kv.data();
    r.final_scale = ts ? FinalScale::gamma_sqrt_s0 : FinalScale::gamma;
    bool fused = false, fusable = false;
    dispatch_head_size(dk, [&](auto D) {
      constexpr int DQK = decltype(D)::value;
      fusable = pick_dkdv<E, DQK>(dv, ctx.allow_tf32).fn != nullptr;
      fused = fused_backward_pays<E, DQK>(dv, B, T, H, r.seg, ctx.allow_tf32);
    });
    if (fused) {  // dk from the same walk (chunk_engine_dkdv_kernel)
      r.fused_dkdv = true;
      r.x = in.v.data();
      r.o2 = gin.dk.data();
    } else if (fusable) {
      r.states_reused = true;  // the split that fused_backward_pays costed: dk's outputs pass reads dv's states too
    }
    const Geometry geo = run_states<E>(ctx, r, B, T, H, dec, states);
    run_output<E>(ctx, r, B, T, H, dec, states, geo);
    if (fused) return run_dq();
    // dk: reversed (q=v, k=g, v=q) from dU_T^T. Its states are dU_n^T, the transposes of the dv run's: the
    // outputs pass reads those (same segments) instead of running its own summaries and prefix.
    Run rk;
    rk.q = in.v.data();
    rk.k = g;
    rk.v = in.q.data();
    rk.o = gin.dk.data();
    rk.dqk = dv;
    rk.dval = dk;
    rk.reverse = true;
    rk.states_transposed = true;
    // Where the dv run had no prefix pass its initial state was zero (dfin is never one): geo.direct_state, the
    // zeros rk starts from too.
    run_output<E>(ctx, rk, B, T, H, dec, states, geo);
  }
  run_dq();
}

}  // namespace cuda_detail

// Chunkwise form (torchscale's chunk normaliser with cfg.chunk_size(); raw mode is form-independent).
template <class E>
void retention_chunkwise_forward(const Cuda& ctx, const RetentionConfig& cfg,
                                 const RetentionInputs<E, Device, float>& in,
                                 const RetentionOutputs<E, Device, float>& out, RetentionSaved* saved = nullptr) {
  cuda_detail::forward_impl<E>("retention_chunkwise_forward (CUDA)", ctx, Form::chunkwise, cfg, in, out, saved);
}

template <class E>
void retention_chunkwise_backward(const Cuda& ctx, const RetentionConfig& cfg,
                                  const RetentionInputs<E, Device, float>& in,
                                  const RetentionOutputGrads<E, Device, float>& gout,
                                  const RetentionInputGrads<E, Device, float>& gin,
                                  const RetentionSaved* saved = nullptr) {
  cuda_detail::backward_impl<E>("retention_chunkwise_backward (CUDA)", ctx, Form::chunkwise, cfg, in, gout, gin, saved);
}

}  // namespace retnet
