// GPU retention (every form, forward and backward, float and bf16) against the CPU backend in double.
// Inputs are drawn fresh for every case; outputs are poisoned (NaN) before every run.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu_reference.hpp"
#include "gpu_test.hpp"
#include "retnet/cuda.cuh"

namespace {

using retnet::Form;
using retnet::Normalization;
using retnet_test::RefProblem;

using retnet_test::have_gpu;

template <class E>
E to_e(double x) {
  if constexpr (std::is_same_v<E, float>)
    return static_cast<float>(x);
  else
    return __float2bfloat16(static_cast<float>(x));
}
template <class E>
double from_e(E x) {
  if constexpr (std::is_same_v<E, float>)
    return static_cast<double>(x);
  else
    return static_cast<double>(__bfloat162float(x));
}

template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    if (n) RETNET_CUDA_CHECK(cudaMalloc(&ptr, n * sizeof(T)));
  }
  ~DeviceBuffer() {
    if (ptr) (void)cudaFree(ptr);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(o.ptr), n(o.n) { o.ptr = nullptr; }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void poison() {
    if (n) RETNET_CUDA_CHECK(cudaMemset(ptr, 0xFF, n * sizeof(T)));
  }
};

// Values rounded to the storage type, kept in double for the reference.
template <class E>
std::vector<double> draw(std::mt19937_64& rng, size_t n, double scale = 1.0) {
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> x(n);
  for (auto& e : x) e = from_e<E>(to_e<E>(d(rng)));
  return x;
}
std::vector<double> draw_f(std::mt19937_64& rng, size_t n, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> x(n);
  for (auto& e : x) e = static_cast<double>(static_cast<float>(d(rng)));
  return x;
}

template <class E>
DeviceBuffer<E> upload(const std::vector<double>& x) {
  DeviceBuffer<E> b(x.size());
  std::vector<E> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = to_e<E>(x[i]);
  if (!x.empty()) RETNET_CUDA_CHECK(cudaMemcpy(b.ptr, h.data(), x.size() * sizeof(E), cudaMemcpyHostToDevice));
  return b;
}
template <class E>
std::vector<double> download(const DeviceBuffer<E>& b) {
  std::vector<E> h(b.n);
  if (b.n) RETNET_CUDA_CHECK(cudaMemcpy(h.data(), b.ptr, b.n * sizeof(E), cudaMemcpyDeviceToHost));
  std::vector<double> x(b.n);
  for (size_t i = 0; i < b.n; ++i) x[i] = from_e<E>(h[i]);
  return x;
}

// ||got - ref|| / ||ref||; NaN (unwritten or broken) fails.
double rel_err(const std::vector<double>& got, const std::vector<double>& ref) {
  REQUIRE(got.size() == ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

struct Case {
  int64_t B, T, H, dk, dv, chunk;
  bool state;
};

// Float within 1e-5, bf16 within 1e-2; float with Cuda::allow_tf32 (one tf32 product per product) within 5e-3,
// and visibly less exact than float (else the option would not be in effect).
constexpr double kTf32Tol = 5e-3;

// decays: a custom decay per head (empty: the default schedule).
template <class E>
void check_case(const Case& c, Form form, Normalization norm, uint64_t seed, bool backward = true, bool tf32 = false,
                const std::vector<double>& decays = {}) {
  const double tol = tf32 ? kTf32Tol : std::is_same_v<E, float> ? 1e-5 : 1e-2;
  retnet::RetentionOptions opt;
  opt.heads = c.H;
  opt.key_dim = c.dk;
  opt.value_dim = c.dv;
  opt.chunk_size = c.chunk;
  opt.normalization = norm;
  if (c.H > 32) opt.decay_schedule = retnet::DecaySchedule::paper;  // torchscale's gamma_h rounds to 1 past h = 47
  if (!decays.empty()) {
    opt.decay_schedule = retnet::DecaySchedule::custom;
    opt.decays = decays;
  }
  const retnet::RetentionConfig cfg(opt);
  std::mt19937_64 rng(seed);
  RefProblem p;
  p.B = c.B;
  p.T = c.T;
  p.H = c.H;
  p.dk = c.dk;
  p.dv = c.dv;
  const size_t nq = static_cast<size_t>(c.B * c.T * c.H * c.dk), nv = static_cast<size_t>(c.B * c.T * c.H * c.dv);
  const size_t ns = static_cast<size_t>(c.B * c.H * c.dk * c.dv), nsc = static_cast<size_t>(c.B * c.H);
  p.q = draw<E>(rng, nq);
  p.k = draw<E>(rng, nq, 1.0 / std::sqrt(static_cast<double>(c.dk)));
  p.v = draw<E>(rng, nv);
  if (c.state) {
    p.kv0 = draw<float>(rng, ns, 0.1);
    p.s0 = draw_f(rng, nsc, 0.5, 20.0);
  }
  p.d_o = draw<E>(rng, nv);
  if (c.state) p.d_kv1 = draw<float>(rng, ns, 0.5);

  auto q = upload<E>(p.q), k = upload<E>(p.k), v = upload<E>(p.v);
  auto kv0 = upload<float>(p.kv0), s0 = upload<float>(p.s0);
  DeviceBuffer<E> o(nv);
  DeviceBuffer<float> kv1(ns), s1(nsc);
  o.poison();
  kv1.poison();
  s1.poison();
  const retnet::Shape sq{c.B, c.T, c.H, c.dk}, sv{c.B, c.T, c.H, c.dv}, ss{c.B, c.H, c.dk, c.dv}, sc{c.B, c.H};
  retnet::RetentionInputs<E, retnet::Device, float> in;
  in.q = {q.ptr, sq};
  in.k = {k.ptr, sq};
  in.v = {v.ptr, sv};
  if (c.state) {
    in.state_kv = {kv0.ptr, ss};
    in.state_scale = {s0.ptr, sc};
  }
  retnet::RetentionOutputs<E, retnet::Device, float> out;
  out.o = {o.ptr, sv};
  out.state_kv = {kv1.ptr, ss};
  out.state_scale = {s1.ptr, sc};
  retnet::Cuda ctx{};
  ctx.allow_tf32 = tf32;
  // Every other pair of seeds, the forward keeps what the backward needs and the backward runs a second time from it.
  const bool keep = (seed >> 1) % 2 == 0 && retnet::cuda_detail::value_split(cfg) == 1;  // split heads keep none
  retnet::RetentionSaved saved;
  retnet::retention_forward(ctx, form, cfg, in, out, keep ? &saved : nullptr);
  RETNET_CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(saved.empty() == !keep);

  const auto ref = retnet_test::ref_forward(form, cfg, p);
  INFO("form " << retnet::to_string(form) << ", " << retnet::to_string(norm) << ", "
               << (std::is_same_v<E, float> ? (tf32 ? "float (tf32)" : "float") : "bf16") << ", B " << c.B << " T "
               << c.T << " H " << c.H << " dk " << c.dk << " dv " << c.dv << " chunk " << c.chunk
               << (c.state ? " with state" : ""));
  const double eo = rel_err(download(o), ref.o), es = rel_err(download(kv1), ref.kv1),
               esc = rel_err(download(s1), ref.s1);
  INFO("forward errors: o " << eo << ", state " << es << ", scale " << esc);
  CHECK(eo <= tol);
  CHECK(es <= tol);
  CHECK(esc <= 1e-6);
  if (tf32 && c.T >= 50) CHECK(eo > 1e-5);
  if (!backward) return;

  auto d_o = upload<E>(p.d_o);
  auto d_kv1 = upload<float>(p.d_kv1);
  DeviceBuffer<E> dq(nq), dk(nq), dv(nv);
  DeviceBuffer<float> dkv0(ns);
  retnet::RetentionOutputGrads<E, retnet::Device, float> go;
  go.d_o = {d_o.ptr, sv};
  if (c.state) go.d_state_kv = {d_kv1.ptr, ss};
  retnet::RetentionInputGrads<E, retnet::Device, float> gi;
  gi.dq = {dq.ptr, sq};
  gi.dk = {dk.ptr, sq};
  gi.dv = {dv.ptr, sv};
  gi.d_state_kv = {dkv0.ptr, ss};
  const auto rb = retnet_test::ref_backward(form, cfg, p);
  for (const bool from_saved : {false, true}) {
    if (from_saved && !keep) break;
    for (auto* b : {&dq, &dk, &dv}) b->poison();
    dkv0.poison();
    retnet::retention_backward(ctx, form, cfg, in, go, gi, from_saved ? &saved : nullptr);
    RETNET_CUDA_CHECK(cudaDeviceSynchronize());
    const double edq = rel_err(download(dq), rb.dq), edk = rel_err(download(dk), rb.dk),
                 edv = rel_err(download(dv), rb.dv), eds = rel_err(download(dkv0), rb.dkv0);
    INFO("backward" << (from_saved ? " from the forward's saved states" : "") << " errors: dq " << edq << ", dk " << edk
                    << ", dv " << edv << ", d_state " << eds);
    CHECK(edq <= tol);
    CHECK(edk <= tol);
    CHECK(edv <= tol);
    CHECK(eds <= tol);
  }
}

const Case odd_cases[] = {
    {2, 77, 3, 64, 128, 16, true}, {1, 130, 2, 128, 64, 64, false}, {1, 50, 2, 256, 64, 100, true},
    {2, 200, 2, 64, 64, 7, true},  {1, 1, 2, 64, 64, 64, true},     {1, 300, 1, 128, 256, 128, false},
};

template <class E>
void run_odd_cases(uint64_t seed, bool tf32 = false) {
  for (Form form : {Form::chunkwise, Form::recurrent, Form::parallel})
    for (Normalization norm : {Normalization::torchscale, Normalization::raw})
      for (const Case& c : odd_cases) check_case<E>(c, form, norm, seed++, true, tf32);
}

}  // namespace

TEST_CASE("cuda retention float matches the CPU on odd shapes", "[cuda][retention][float]") {
  if (!have_gpu()) return;
  run_odd_cases<float>(1000);
}

TEST_CASE("cuda retention float with allow_tf32 matches the CPU within tf32 accuracy", "[cuda][retention][tf32]") {
  if (!have_gpu()) return;
  run_odd_cases<float>(4000, true);
  const Case shapes[] = {{1, 4096, 16, 128, 128, 64, false}, {1, 2048, 4, 64, 128, 64, true}};
  uint64_t seed = 4100;
  for (const Case& c : shapes) check_case<float>(c, Form::chunkwise, Normalization::raw, seed++, true, true);
}

TEST_CASE("cuda retention bf16 matches the CPU on odd shapes", "[cuda][retention][bf16]") {
  if (!have_gpu()) return;
  run_odd_cases<__nv_bfloat16>(2000);
}

TEST_CASE("cuda retention with value heads wider than 256 runs them as split heads", "[cuda][retention][split]") {
  if (!have_gpu()) return;
  const Case cases[] = {
      {1, 150, 2, 256, 512, 64, true}, {2, 77, 2, 128, 384, 32, true}, {1, 100, 3, 64, 320, 64, false}};
  uint64_t seed = 5000;
  for (Form form : {Form::chunkwise, Form::recurrent, Form::parallel})
    for (Normalization norm : {Normalization::torchscale, Normalization::raw})
      for (const Case& c : cases) {
        if (form == Form::chunkwise && norm == Normalization::torchscale) {
          // its state normaliser takes a maximum over the whole value head: refused, with the reason
          CHECK_THROWS_WITH(check_case<float>(c, form, norm, seed), Catch::Contains("split heads"));
          continue;
        }
        check_case<float>(c, form, norm, seed++);
        check_case<__nv_bfloat16>(c, form, norm, seed++);
      }
}

TEST_CASE("cuda retention on the benchmark shapes (batch 1)", "[cuda][retention][bench-shapes]") {
  if (!have_gpu()) return;
  const Case shapes[] = {{1, 4096, 16, 128, 128, 64, false},  {1, 4096, 64, 128, 128, 64, false},
                         {1, 16384, 16, 128, 128, 64, false}, {1, 2048, 16, 128, 128, 64, false},
                         {1, 1024, 8, 64, 64, 64, false},     {1, 8192, 8, 256, 256, 64, true}};
  uint64_t seed = 3000;
  for (const Case& c : shapes) {
    check_case<__nv_bfloat16>(c, Form::chunkwise, Normalization::raw, seed++);
    check_case<float>(c, Form::chunkwise, Normalization::raw, seed++);
  }
  check_case<__nv_bfloat16>(shapes[0], Form::chunkwise, Normalization::torchscale, seed++);
}

// Strong decays: the bf16 wgmma walks (sm_90a builds; key size 128 and 256) scale chunk rows by gamma^(+-32) and
// hand heads with gamma < 2^-3 to the mma.sync walks; both kinds of head run in one launch here. Such a launch
// keeps off the roles kernels: its in-range heads take chunk_engine_kernel's roles walk (one outputs warpgroup, where
// the split takes value tiles of 64) and chunk_engine_dkdv_kernel's wgmma_dkdv_walk (the torchscale cases' fixed
// segments take the fused backward).
TEST_CASE("cuda retention with custom decays from 0.999 down to 0.02", "[cuda][retention][decays]") {
  if (!have_gpu()) return;
  const std::vector<double> decays = {0.999, 0.97, 0.8, 0.3, 0.1, 0.02};
  const Case shapes[] = {
      {2, 300, 6, 128, 128, 64, true}, {1, 1000, 6, 128, 256, 64, false}, {1, 500, 6, 256, 128, 64, true}};
  uint64_t seed = 6000;
  for (const Case& c : shapes)
    for (Normalization norm : {Normalization::raw, Normalization::torchscale}) {
      check_case<__nv_bfloat16>(c, Form::chunkwise, norm, seed++, true, false, decays);
      check_case<float>(c, Form::chunkwise, norm, seed++, true, false, decays);
    }
}

// The wgmma walks load through TMA only where every segment is whole 64-row tiles; torchscale's chunkwise form with
// a chunk size that is not a multiple of 64 gives them segments of other lengths, which they load through cp.async:
// the 128-column walk, the narrow walk without roles, the fused backward, and key size 256 on the merged walk.
TEST_CASE("cuda retention bf16 on fixed segments that are not whole 64-row tiles", "[cuda][retention][cp-async]") {
  if (!have_gpu()) return;
  const Case shapes[] = {{2, 250, 3, 128, 128, 96, true},
                         {1, 300, 2, 128, 64, 80, false},
                         {1, 200, 2, 256, 64, 96, true},
                         {1, 200, 2, 128, 256, 48, true}};
  uint64_t seed = 7000;
  for (const Case& c : shapes) check_case<__nv_bfloat16>(c, Form::chunkwise, Normalization::torchscale, seed++);
}

TEST_CASE("cuda retention with summary blocks finer than the segments and a ragged last segment",
          "[cuda][retention][split]") {
  if (!have_gpu()) return;
  const Case c{1, 3000, 32, 128, 128, 64, true};
  // The split this shape gets on an H200 (132 multiprocessors): 4 segments of 768 rows, the last ragged, each
  // summed by 4 blocks but the last, whose outputs blocks write the final state. Elsewhere the split may differ.
  int sms = 0;
  RETNET_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  if (sms == 132) {
    for (const bool fused : {false, true}) {
      const auto geo = retnet::cuda_detail::geometry<__nv_bfloat16, 128>(128, c.B, c.T, c.H, 0, false, fused);
      INFO((fused ? "fused backward" : "forward")
           << ": " << geo.NS << " segments of " << geo.seg << " rows, " << geo.sub << " summary blocks each");
      CHECK(geo.NS > 1);
      CHECK(geo.sub > 1);
      CHECK(geo.outputs_final);
      CHECK(geo.summaries == (geo.NS - 1) * geo.sub);
      CHECK(c.T % geo.seg != 0);
    }
  }
  uint64_t seed = 5000;
  for (Normalization norm : {Normalization::raw, Normalization::torchscale}) {
    check_case<__nv_bfloat16>(c, Form::chunkwise, norm, seed++);
    check_case<float>(c, Form::chunkwise, norm, seed++);
  }
}

// Device buffers and views of one raw bf16 retention problem (no initial state), for forward and backward.
struct GraphProblem {
  using E = __nv_bfloat16;
  RefProblem p;
  DeviceBuffer<E> q, k, v, d_o, o, dq, dk, dv;
  DeviceBuffer<float> kv1, dkv0;
  retnet::RetentionInputs<E, retnet::Device, float> in;
  retnet::RetentionOutputs<E, retnet::Device, float> out;
  retnet::RetentionOutputGrads<E, retnet::Device, float> go;
  retnet::RetentionInputGrads<E, retnet::Device, float> gi;
  GraphProblem(int64_t B, int64_t T, int64_t H, int64_t D, uint64_t seed)
      : p(make(B, T, H, D, seed)),
        q(upload<E>(p.q)),
        k(upload<E>(p.k)),
        v(upload<E>(p.v)),
        d_o(upload<E>(p.d_o)),
        o(p.v.size()),
        dq(p.q.size()),
        dk(p.k.size()),
        dv(p.v.size()),
        kv1(static_cast<size_t>(B * H * D * D)),
        dkv0(static_cast<size_t>(B * H * D * D)) {
    const retnet::Shape sx{B, T, H, D}, ss{B, H, D, D};
    in.q = {q.ptr, sx};
    in.k = {k.ptr, sx};
    in.v = {v.ptr, sx};
    out.o = {o.ptr, sx};
    out.state_kv = {kv1.ptr, ss};
    go.d_o = {d_o.ptr, sx};
    gi.dq = {dq.ptr, sx};
    gi.dk = {dk.ptr, sx};
    gi.dv = {dv.ptr, sx};
    gi.d_state_kv = {dkv0.ptr, ss};
  }
  static RefProblem make(int64_t B, int64_t T, int64_t H, int64_t D, uint64_t seed) {
    std::mt19937_64 rng(seed);
    RefProblem r;
    r.B = B;
    r.T = T;
    r.H = H;
    r.dk = D;
    r.dv = D;
    const size_t n = static_cast<size_t>(B * T * H * D);
    r.q = draw<E>(rng, n);
    r.k = draw<E>(rng, n, 1.0 / std::sqrt(static_cast<double>(D)));
    r.v = draw<E>(rng, n);
    r.d_o = draw<E>(rng, n);
    return r;
  }
  void run(const retnet::Cuda& ctx, const retnet::RetentionConfig& cfg) {
    retnet::retention_forward(ctx, Form::chunkwise, cfg, in, out);
    retnet::retention_backward(ctx, Form::chunkwise, cfg, in, go, gi);
  }
};

retnet::RetentionConfig raw_config(int64_t heads, int64_t head_size) {
  retnet::RetentionOptions opt;
  opt.heads = heads;
  opt.key_dim = head_size;
  opt.value_dim = head_size;
  opt.chunk_size = 64;
  opt.normalization = Normalization::raw;
  return retnet::RetentionConfig(opt);
}

TEST_CASE("cuda retention backward from the forward's saved states", "[cuda][retention][saved]") {
  if (!have_gpu()) return;
  // A run on several segments, so that the forward saves the states entering them (check_case keeps and reuses on
  // seeds 7000, 7001, 7004, 7005); torchscale saves the row multipliers too, the parallel form's from its
  // quadratic pass.
  const Case c{1, 3000, 32, 128, 128, 64, true};
  CHECK(retnet::cuda_detail::geometry<__nv_bfloat16, 128>(128, c.B, c.T, c.H, 0, false, false).NS > 1);
  check_case<__nv_bfloat16>(c, Form::chunkwise, Normalization::raw, 7000);
  check_case<float>(c, Form::chunkwise, Normalization::torchscale, 7001);
  const Case d{2, 77, 3, 64, 128, 16, true};
  check_case<float>(d, Form::parallel, Normalization::torchscale, 7004);
  check_case<__nv_bfloat16>(d, Form::chunkwise, Normalization::torchscale, 7005);

  // A backward of another problem, or from an empty object, is refused.
  const retnet::Cuda ctx{};
  const auto cfg = raw_config(2, 128);
  GraphProblem a(1, 256, 2, 128, 7100), shorter(1, 128, 2, 128, 7101), other(1, 256, 2, 128, 7102);
  retnet::RetentionSaved saved;
  CHECK_THROWS_WITH(retnet::retention_backward(ctx, Form::chunkwise, cfg, a.in, a.go, a.gi, &saved),
                    Catch::Contains("`saved` is empty"));
  retnet::retention_forward(ctx, Form::chunkwise, cfg, a.in, a.out, &saved);
  CHECK_FALSE(saved.empty());
  CHECK_THROWS_WITH(retnet::retention_backward(ctx, Form::chunkwise, cfg, shorter.in, shorter.go, shorter.gi, &saved),
                    Catch::Contains("length 256 there, 128 here"));
  CHECK_THROWS_WITH(retnet::retention_backward(ctx, Form::chunkwise, cfg, other.in, other.go, other.gi, &saved),
                    Catch::Contains("q is another tensor"));
  CHECK_THROWS_WITH(retnet::retention_backward(ctx, Form::parallel, cfg, a.in, a.go, a.gi, &saved),
                    Catch::Contains("form chunkwise there, parallel here"));
  retnet::retention_backward(ctx, Form::chunkwise, cfg, a.in, a.go, a.gi, &saved);
  RETNET_CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(rel_err(download(a.dq), retnet_test::ref_backward(Form::chunkwise, cfg, a.p).dq) <= 1e-2);
  retnet::RetentionSaved moved = std::move(saved);
  CHECK(saved.empty());
  CHECK_FALSE(moved.empty());
  moved.release();
  CHECK(moved.empty());
  CHECK(moved.bytes() == 0);
}

TEST_CASE("cuda retention forward and backward replay from a captured CUDA graph", "[cuda][retention][graph]") {
  if (!have_gpu()) return;
  const auto cfg = raw_config(32, 128);
  retnet::Cuda ctx{};
  RETNET_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx.stream, cudaStreamNonBlocking));
  // The ops' first call on a device sets up its kernels and memory pool, which capture does not allow: warm up
  // outside it, on a smaller batch.
  GraphProblem warm(1, 64, 32, 128, 6000);
  warm.run(ctx, cfg);
  RETNET_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  // One chunk per sequence: single-segment runs without an initial state, which start from the shared zero
  // buffer. B * H = 1024 asks for a larger one than the warm-up and the other tests, so it would have to grow
  // during the capture, where allocating is not allowed: the ops must take the prefix pass instead.
  GraphProblem g(32, 64, 32, 128, 6001);
  cudaGraph_t graph = nullptr;
  RETNET_CUDA_CHECK(cudaStreamBeginCapture(ctx.stream, cudaStreamCaptureModeGlobal));
  g.run(ctx, cfg);
  RETNET_CUDA_CHECK(cudaStreamEndCapture(ctx.stream, &graph));
  cudaGraphExec_t exec = nullptr;
  RETNET_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  const auto ref = retnet_test::ref_forward(Form::chunkwise, cfg, g.p);
  const auto rb = retnet_test::ref_backward(Form::chunkwise, cfg, g.p);
  for (int replay = 0; replay < 2; ++replay) {
    for (auto* b : {&g.o, &g.dq, &g.dk, &g.dv}) b->poison();
    g.kv1.poison();
    g.dkv0.poison();
    RETNET_CUDA_CHECK(cudaGraphLaunch(exec, ctx.stream));
    RETNET_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    INFO("replay " << replay);
    CHECK(rel_err(download(g.o), ref.o) <= 1e-2);
    CHECK(rel_err(download(g.kv1), ref.kv1) <= 1e-2);
    CHECK(rel_err(download(g.dq), rb.dq) <= 1e-2);
    CHECK(rel_err(download(g.dk), rb.dk) <= 1e-2);
    CHECK(rel_err(download(g.dv), rb.dv) <= 1e-2);
    CHECK(rel_err(download(g.dkv0), rb.dkv0) <= 1e-2);
  }
  RETNET_CUDA_CHECK(cudaGraphExecDestroy(exec));
  RETNET_CUDA_CHECK(cudaGraphDestroy(graph));
  RETNET_CUDA_CHECK(cudaStreamDestroy(ctx.stream));
}

template <class E>
void check_steps(int64_t B, int64_t H, int64_t dk, int64_t dv, Normalization norm, uint64_t seed) {
  const double tol = std::is_same_v<E, float> ? 1e-5 : 1e-2;
  retnet::RetentionOptions opt;
  opt.heads = H;
  opt.key_dim = dk;
  opt.value_dim = dv;
  opt.normalization = norm;
  const retnet::RetentionConfig cfg(opt);
  std::mt19937_64 rng(seed);
  std::vector<double> kv = draw<float>(rng, static_cast<size_t>(B * H * dk * dv), 0.1);
  std::vector<double> s = draw_f(rng, static_cast<size_t>(B * H), 0.0, 10.0);
  auto dkv = upload<float>(kv), ds = upload<float>(s);
  const retnet::Cuda ctx{};
  for (int step = 0; step < 3; ++step) {
    auto q = draw<E>(rng, static_cast<size_t>(B * H * dk)), k = draw<E>(rng, static_cast<size_t>(B * H * dk));
    auto v = draw<E>(rng, static_cast<size_t>(B * H * dv));
    auto gq = upload<E>(q), gk = upload<E>(k), gv = upload<E>(v);
    DeviceBuffer<E> o(static_cast<size_t>(B * H * dv));
    o.poison();
    retnet::retention_recurrent_step<E>(ctx, cfg, {gq.ptr, {B, H, dk}}, {gk.ptr, {B, H, dk}}, {gv.ptr, {B, H, dv}},
                                        {dkv.ptr, {B, H, dk, dv}}, {ds.ptr, {B, H}}, {o.ptr, {B, H, dv}});
    RETNET_CUDA_CHECK(cudaDeviceSynchronize());
    const auto ro = retnet_test::ref_step(cfg, B, q, k, v, kv, s);
    INFO("step " << step << " B " << B << " " << retnet::to_string(norm));
    CHECK(rel_err(download(o), ro) <= tol);
    CHECK(rel_err(download(dkv), kv) <= 1e-5);
    if (norm == Normalization::torchscale) CHECK(rel_err(download(ds), s) <= 1e-6);
  }
}

TEST_CASE("cuda recurrent step for batched decoding", "[cuda][retention][step]") {
  if (!have_gpu()) return;
  check_steps<float>(256, 4, 64, 128, Normalization::torchscale, 10);
  check_steps<__nv_bfloat16>(256, 8, 256, 256, Normalization::torchscale, 11);
  check_steps<float>(3, 2, 128, 64, Normalization::raw, 12);
}

TEST_CASE("cuda retention rejects bad arguments", "[cuda][retention][errors]") {
  if (!have_gpu()) return;
  retnet::RetentionOptions opt;
  opt.heads = 2;
  opt.key_dim = 96;
  opt.value_dim = 64;
  const retnet::RetentionConfig bad(opt);
  DeviceBuffer<float> q(2 * 8 * 96), v(2 * 8 * 64), o(2 * 8 * 64);
  retnet::RetentionInputs<float, retnet::Device, float> in;
  in.q = {q.ptr, {1, 8, 2, 96}};
  in.k = {q.ptr, {1, 8, 2, 96}};
  in.v = {v.ptr, {1, 8, 2, 64}};
  retnet::RetentionOutputs<float, retnet::Device, float> out;
  out.o = {o.ptr, {1, 8, 2, 64}};
  const retnet::Cuda ctx{};
  CHECK_THROWS_WITH(retnet::retention_forward(ctx, Form::chunkwise, bad, in, out), Catch::Contains("head size 96"));
  opt.key_dim = 64;
  const retnet::RetentionConfig good(opt);
  std::vector<float> host(2 * 8 * 64);
  in.q = {host.data(), {1, 8, 2, 64}};
  in.k = {q.ptr, {1, 8, 2, 64}};
  CHECK_THROWS_WITH(retnet::retention_forward(ctx, Form::chunkwise, good, in, out), Catch::Contains("q is not"));
  in.q = {q.ptr + 1, {1, 8, 2, 64}};
  CHECK_THROWS_WITH(retnet::retention_forward(ctx, Form::chunkwise, good, in, out), Catch::Contains("aligned"));
}

// A small set that reaches every kernel instantiation, for compute-sanitizer (memcheck, racecheck).
TEST_CASE("cuda retention sanitizer subset", "[cuda][sanitize]") {
  if (!have_gpu()) return;
  const Case a{2, 77, 3, 64, 128, 16, true}, b{1, 70, 2, 256, 128, 100, true}, c{1, 40, 1, 128, 64, 64, false};
  const Case d{1, 150, 2, 128, 128, 64, true};  // the wgmma walks (sm_90a builds), forward and fused backward
  const Case e{1, 333, 2, 128, 64, 64, true};   // the key-128 roles walk: its three stages wrap, the last chunk ragged
  // Two (batch, head) pairs of 2000 rows: several segments, so the summary walk runs (reversed in the backward), its
  // stages wrapping and the last chunk ragged.
  const Case f{1, 2000, 2, 128, 128, 64, true};
  const Case g{1, 300, 2, 256, 64, 64, true};  // the float key-256 walk: four slices per chunk, the last chunk ragged
  const auto geo = retnet::cuda_detail::geometry<__nv_bfloat16, 128>(128, f.B, f.T, f.H, 0, false, false);
  INFO("case f: " << geo.NS << " segments, " << geo.summaries << " summary blocks");
  CHECK(geo.summaries > 0);
  check_case<__nv_bfloat16>(d, Form::chunkwise, Normalization::torchscale, 76);
  check_case<__nv_bfloat16>(e, Form::chunkwise, Normalization::torchscale, 84);
  check_case<__nv_bfloat16>(f, Form::chunkwise, Normalization::raw, 85);
  check_case<__nv_bfloat16>(a, Form::chunkwise, Normalization::torchscale, 77);
  check_case<float>(a, Form::chunkwise, Normalization::raw, 78);
  check_case<float>(e, Form::chunkwise, Normalization::torchscale, 86);  // the float wgmma walk (sm_90a builds)
  check_case<float>(g, Form::chunkwise, Normalization::raw, 87);
  check_case<float>(b, Form::parallel, Normalization::torchscale, 79);
  check_case<__nv_bfloat16>(b, Form::recurrent, Normalization::raw, 80);
  check_case<float>(c, Form::recurrent, Normalization::torchscale, 81);
  check_case<__nv_bfloat16>(c, Form::parallel, Normalization::raw, 82);
  check_steps<__nv_bfloat16>(4, 2, 64, 64, Normalization::torchscale, 83);
}
