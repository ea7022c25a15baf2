// The CUDA element-wise, row-wise and dense ops against the CPU ops (run in double, or in float where the
// comparison is bit for bit), table-driven over shapes that include odd sizes, sizes that are no multiple of the
// vector width, misaligned starts and rows with large values. Reductions are also run twice and compared bit for
// bit. A failure names the op, the type, the shape and the first element that differs.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "gpu_test.hpp"
#include "ops_reference.hpp"
#include "retnet/cuda/ops.cuh"

namespace {

using V = std::vector<double>;
using bf16 = __nv_bfloat16;
using retnet::Activation;
using retnet::GradMode;

using retnet_test::have_gpu;

// One context for the whole program: the default stream and one cuBLAS handle.
retnet::Cuda& ctx() {
  static retnet::Cuda c = [] {
    retnet::Cuda r;
    RETNET_CUBLAS_CHECK(cublasCreate(&r.cublas));
    return r;
  }();
  c.allow_tf32 = false;
  return c;
}

template <class T>
T to_t(double x) {
  if constexpr (std::is_same_v<T, float>)
    return static_cast<float>(x);
  else
    return __float2bfloat16(static_cast<float>(x));
}
template <class T>
double from_t(T x) {
  if constexpr (std::is_same_v<T, float>)
    return static_cast<double>(x);
  else
    return static_cast<double>(__bfloat162float(x));
}
template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "bf16";
}
// Tolerance relative to |ref| + rms(ref): 1e-5 (or the given float tolerance) for float, bf16 rounding for bf16.
template <class T>
double tol(double float_tol = 1e-5) {
  return std::is_same_v<T, float> ? float_tol : 1.5e-2;
}

// Device memory of `n` values of T starting `offset` elements into the allocation (offset 1: a misaligned start,
// which takes the ops' scalar paths).
template <class T>
struct Dev {
  T* base = nullptr;
  T* p = nullptr;
  size_t n = 0;
  Dev(size_t count, size_t offset = 0) : n(count) {
    RETNET_CUDA_CHECK(cudaMalloc(&base, (count + offset + 1) * sizeof(T)));
    p = base + offset;
    poison();
  }
  Dev(const std::vector<T>& host, size_t offset = 0) : Dev(host.size(), offset) { upload(host); }
  ~Dev() {
    if (base) (void)cudaFree(base);
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void poison() { RETNET_CUDA_CHECK(cudaMemset(p, 0xFF, n * sizeof(T))); }  // NaN for float and bf16
  void upload(const std::vector<T>& host) {
    if (n) RETNET_CUDA_CHECK(cudaMemcpy(p, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> raw() const {
    RETNET_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> h(n);
    if (n) RETNET_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  V get() const {
    const std::vector<T> h = raw();
    V r(n);
    for (size_t i = 0; i < n; ++i) r[i] = from_t(h[i]);
    return r;
  }
};

template <class T>
std::vector<T> to_storage(const V& x) {
  std::vector<T> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = to_t<T>(x[i]);
  return r;
}

// Normal values (scale `s`) already rounded to T, so the CPU sees exactly what the GPU sees.
template <class T>
V draw(std::mt19937_64& rng, size_t n, double s = 1.0) {
  std::normal_distribution<double> d(0.0, s);
  V x(n);
  for (auto& e : x) e = from_t(to_t<T>(d(rng)));
  return x;
}

// Fails (once, with the first bad element) unless every |got − ref| <= rtol · (|ref| + rms(ref)) + atol. atol is the
// rounding floor of outputs that cancel to (nearly) zero, e.g. a norm's input gradient over one or two values.
void expect_close(const std::string& what, const V& got, const V& ref, double rtol, double atol = 0) {
  REQUIRE(got.size() == ref.size());
  double ss = 0;
  for (double r : ref) ss += r * r;
  const double scale = ref.empty() ? 0.0 : std::sqrt(ss / static_cast<double>(ref.size()));
  size_t bad = 0, first = 0;
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(got[i] - ref[i]);
    const double lim = rtol * (std::fabs(ref[i]) + scale) + atol;
    if (!(err <= lim)) {
      if (bad == 0) first = i;
      ++bad;
    }
    if (err > worst) worst = err;
  }
  if (bad) {
    std::ostringstream m;
    m << what << ": " << bad << " of " << ref.size() << " elements differ; first at element " << first << ": got "
      << got[first] << ", want " << ref[first] << " (tolerance " << rtol << " relative to |want| + rms " << scale
      << ")";
    FAIL_CHECK(m.str());
  }
  SUCCEED();
}

double rms(const V& x) {
  double ss = 0;
  for (double e : x) ss += e * e;
  return x.empty() ? 0.0 : std::sqrt(ss / static_cast<double>(x.size()));
}
double max_abs(const V& x) {
  double m = 0;
  for (double e : x) m = std::max(m, std::fabs(e));
  return m;
}

void expect_close(const std::string& what, double got, double ref, double rtol) {
  if (!(std::fabs(got - ref) <= rtol * std::fabs(ref) + 1e-300)) {
    std::ostringstream m;
    m << what << ": got " << got << ", want " << ref << " (relative tolerance " << rtol << ")";
    FAIL_CHECK(m.str());
  }
}

template <class T>
void expect_same_bits(const std::string& what, const std::vector<T>& a, const std::vector<T>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) {
      std::ostringstream m;
      m << what << ": element " << i << " differs between two runs (" << from_t(a[i]) << " vs " << from_t(b[i]) << ")";
      FAIL_CHECK(m.str());
      return;
    }
  SUCCEED();
}

std::string shape(std::initializer_list<int64_t> dims) {
  std::ostringstream s;
  s << "[";
  bool firstd = true;
  for (int64_t d : dims) {
    s << (firstd ? "" : ", ") << d;
    firstd = false;
  }
  s << "]";
  return s.str();
}

template <class T>
std::string label(const char* op, const std::string& shp, const std::string& extra = "") {
  return std::string(op) + " <" + type_name<T>() + "> " + shp + (extra.empty() ? "" : " " + extra);
}

// ---- element-wise --------------------------------------------------------------------------------------------

template <class T>
void check_elementwise(int64_t n, size_t offset) {
  std::mt19937_64 rng(1000 + static_cast<uint64_t>(n) + offset);
  const std::string shp = shape({n}) + (offset ? " misaligned" : "");
  const V x = draw<T>(rng, static_cast<size_t>(n), 3.0);
  Dev<T> dx(to_storage<T>(x), offset);
  {
    Dev<T> dst(static_cast<size_t>(n), offset);
    retnet::copy_elements(ctx(), dst.p, dx.p, n);
    expect_same_bits(label<T>("copy_elements", shp), dst.raw(), dx.raw());
    retnet::zero_elements(ctx(), dst.p, n);
    expect_close(label<T>("zero_elements", shp), dst.get(), V(static_cast<size_t>(n), 0.0), 0.0);
  }
  {
    Dev<T> y(to_storage<T>(x), offset);
    retnet::scale_elements(ctx(), y.p, to_t<T>(0.75), n);
    V ref = x;
    for (auto& e : ref) e *= 0.75;
    expect_close(label<T>("scale_elements", shp), y.get(), ref, tol<T>());
  }
  const double got = retnet::sum_squares(ctx(), dx.p, n);
  expect_close(label<T>("sum_squares", shp), got, ops_ref::sum_squares(x), 1e-12);
  const double again = retnet::sum_squares(ctx(), dx.p, n);
  if (std::memcmp(&got, &again, sizeof(double)) != 0) FAIL_CHECK(label<T>("sum_squares", shp) << ": two runs differ");
}

// ---- dropout ---------------------------------------------------------------------------------------------------

template <class T>
void check_dropout(int64_t B, int64_t Tn, int64_t width, double p, double p_path, bool with_starts) {
  const std::string shp = shape({B, Tn, width});
  std::ostringstream ex;
  ex << "p=" << p << " p_path=" << p_path << (with_starts ? " starts" : "");
  retnet::DropoutKey key{1234, 17, 3};
  const retnet::DropoutMaskParams mp(key, 2, retnet::DropoutSite::ffn_output, p, p_path);
  std::vector<int64_t> starts;
  if (with_starts)
    for (int64_t b = 0; b < B; ++b) starts.push_back(7 + 31 * b);
  const size_t n = static_cast<size_t>(B * Tn * width);
  std::vector<float> ref(n);
  ops_ref::fill_dropout_mask(ref, mp, B, Tn, width, starts);
  Dev<int64_t> dstarts(starts.empty() ? std::vector<int64_t>(1, 0) : starts);
  Dev<T> mask(n);
  retnet::fill_dropout_mask(ctx(), mask.p, mp, B, Tn, width, with_starts ? dstarts.p : nullptr);
  // Masks must equal the CPU's bit for bit (bf16: the float mask's values rounded to bf16).
  const std::vector<T> got = mask.raw();
  for (size_t i = 0; i < n; ++i) {
    const T want = to_t<T>(ref[i]);
    if (std::memcmp(&got[i], &want, sizeof(T)) != 0) {
      FAIL_CHECK(label<T>("fill_dropout_mask", shp, ex.str())
                 << ": element " << i << " (row " << i / static_cast<size_t>(width) << ", column "
                 << i % static_cast<size_t>(width) << ") is " << from_t(got[i]) << ", want " << ref[i]);
      return;
    }
  }
  // The element-wise uses of the mask.
  std::mt19937_64 rng(77 + n);
  const V m = mask.get(), x = draw<T>(rng, n), res = draw<T>(rng, n);
  {
    Dev<T> dx(to_storage<T>(x));
    retnet::apply_mask(ctx(), dx.p, mask.p, static_cast<int64_t>(n));
    V ref_x = x;
    ops_ref::apply_mask(ref_x, m);
    expect_close(label<T>("apply_mask", shp, ex.str()), dx.get(), ref_x, tol<T>());
    Dev<T> src(to_storage<T>(x)), y(n);
    retnet::masked_copy(ctx(), y.p, src.p, mask.p, static_cast<int64_t>(n));
    expect_close(label<T>("masked_copy", shp, ex.str()), y.get(), ref_x, tol<T>());
    retnet::masked_copy(ctx(), src.p, src.p, mask.p, static_cast<int64_t>(n));  // in place
    expect_close(label<T>("masked_copy in place", shp, ex.str()), src.get(), ref_x, tol<T>());
  }
  {
    Dev<T> br(to_storage<T>(x)), dres(to_storage<T>(res));
    retnet::masked_residual_add(ctx(), br.p, mask.p, dres.p, static_cast<int64_t>(n));
    V ref_b = x;
    ops_ref::masked_residual_add(ref_b, m, res);
    expect_close(label<T>("masked_residual_add", shp, ex.str()), br.get(), ref_b, tol<T>());
  }
}

// ---- rotation --------------------------------------------------------------------------------------------------

template <class T>
void check_rotation(int64_t B, int64_t L, int64_t H, int64_t dk, double scale, bool inverse) {
  const std::string shp = shape({B, L, H, dk});
  std::ostringstream ex;
  ex << "scale=" << scale << (inverse ? " inverse" : "");
  std::vector<int64_t> row_off;
  for (int64_t b = 0; b < B; ++b) row_off.push_back(3 * b + (b % 2) * 11);
  const int64_t rows = 3 * B + 11 + L;
  V sn, cs;
  ops_ref::rotation_table(sn, cs, rows, dk);
  for (auto& e : sn) e = from_t(to_t<T>(e));
  for (auto& e : cs) e = from_t(to_t<T>(e));
  std::mt19937_64 rng(5 + static_cast<uint64_t>(B * L * H * dk));
  const V x = draw<T>(rng, static_cast<size_t>(B * L * H * dk));
  V ref = x;
  ops_ref::rotate_heads(ref, sn, cs, row_off, B, L, H, dk, scale, inverse);
  Dev<T> dx(to_storage<T>(x)), dsn(to_storage<T>(sn)), dcs(to_storage<T>(cs));
  Dev<int64_t> doff(row_off);
  retnet::rotate_heads(ctx(), dx.p, dsn.p, dcs.p, doff.p, B, L, H, dk, to_t<T>(scale), inverse);
  expect_close(label<T>("rotate_heads", shp, ex.str()), dx.get(), ref, tol<T>());
}

// ---- activations -------------------------------------------------------------------------------------------

template <class T>
void check_activation(Activation a, int64_t n) {
  const std::string shp = shape({n});
  const std::string ex = a == Activation::gelu ? "gelu" : "swish";
  const size_t N = static_cast<size_t>(n);
  std::mt19937_64 rng(9 + N);
  const V x = draw<T>(rng, N, 3.0), dy = draw<T>(rng, N), b = draw<T>(rng, N);
  Dev<T> dxin(to_storage<T>(x)), ddy(to_storage<T>(dy)), db(to_storage<T>(b)), y(N), y2(N);
  V ref(N), ref2(N);
  retnet::activation_forward(ctx(), a, y.p, dxin.p, n);
  ops_ref::activation_forward(a, ref, x);
  expect_close(label<T>("activation_forward", shp, ex), y.get(), ref, tol<T>());
  {
    Dev<T> g(to_storage<T>(dy));  // dx aliases dy
    retnet::activation_backward(ctx(), a, g.p, g.p, dxin.p, n);
    ops_ref::activation_backward(a, ref, dy, x);
    expect_close(label<T>("activation_backward", shp, ex), g.get(), ref, tol<T>());
  }
  retnet::glu_forward(ctx(), a, y.p, dxin.p, db.p, n);
  ops_ref::glu_forward(a, ref, x, b);
  expect_close(label<T>("glu_forward", shp, ex), y.get(), ref, tol<T>());
  {
    Dev<T> g(to_storage<T>(dy));  // da aliases dy
    retnet::glu_backward(ctx(), a, g.p, y2.p, g.p, dxin.p, db.p, n);
    ops_ref::glu_backward(a, ref, ref2, dy, x, b);
    expect_close(label<T>("glu_backward da", shp, ex), g.get(), ref, tol<T>());
    expect_close(label<T>("glu_backward db", shp, ex), y2.get(), ref2, tol<T>());
  }
}

// ---- norms -----------------------------------------------------------------------------------------------------

template <class T>
void check_norms(int64_t n, int64_t c, bool affine, bool accumulate, double xscale, size_t offset) {
  const std::string shp = shape({n, c});
  std::ostringstream exs;
  exs << (affine ? "affine" : "plain") << (accumulate ? " accumulate" : "") << " x~" << xscale
      << (offset ? " misaligned" : "");
  const std::string ex = exs.str();
  const size_t N = static_cast<size_t>(n * c), C = static_cast<size_t>(c), R = static_cast<size_t>(n);
  std::mt19937_64 rng(31 + N + C);
  const V x = draw<T>(rng, N, xscale), dy = draw<T>(rng, N), w = draw<T>(rng, C), b = draw<T>(rng, C),
          dx0 = draw<T>(rng, N), dw0 = draw<T>(rng, C), db0 = draw<T>(rng, C);
  const double eps = 1e-5;
  const V* wp = affine ? &w : nullptr;
  Dev<T> dX(to_storage<T>(x), offset), dDY(to_storage<T>(dy), offset), dW(to_storage<T>(w)), dB(to_storage<T>(b));
  T* wdev = affine ? dW.p : nullptr;
  T* bdev = affine ? dB.p : nullptr;
  const double t = tol<T>(2e-5);

  // RMSNorm
  V y(N), rstd(R);
  ops_ref::rmsnorm_forward(y, rstd, x, wp, n, c, eps);
  Dev<T> dY(N, offset), dR(R);
  retnet::rmsnorm_forward(ctx(), dY.p, dR.p, dX.p, wdev, n, c, eps);
  expect_close(label<T>("rmsnorm_forward y", shp, ex), dY.get(), y, t);
  expect_close(label<T>("rmsnorm_forward rstd", shp, ex), dR.get(), rstd, t);
  {
    const V r_used = dR.get();  // the backward reads the GPU's saved statistic (rounded to T)
    V dx = dx0, dw = dw0;
    ops_ref::rmsnorm_backward(dx, &dw, dy, x, wp, r_used, n, c, accumulate);
    Dev<T> dDX(to_storage<T>(dx0), offset), dDW(to_storage<T>(dw0)), dDW2(to_storage<T>(dw0));
    retnet::rmsnorm_backward(ctx(), dDX.p, dDW.p, dDY.p, dX.p, wdev, dR.p, n, c, accumulate);
    // the scale of dx's terms (dy · w · rstd), the floor of its rounding where the terms cancel
    const double floor = t * rms(dy) * max_abs(r_used) * (affine ? max_abs(w) : 1.0);
    expect_close(label<T>("rmsnorm_backward dx", shp, ex), dDX.get(), dx, t, floor);
    expect_close(label<T>("rmsnorm_backward dw", shp, ex), dDW.get(), dw, t);
    Dev<T> scratch(to_storage<T>(dx0), offset);
    retnet::rmsnorm_backward(ctx(), scratch.p, dDW2.p, dDY.p, dX.p, wdev, dR.p, n, c, accumulate);
    expect_same_bits(label<T>("rmsnorm_backward dw (determinism)", shp, ex), dDW.raw(), dDW2.raw());
  }
  // In place forward (y aliases x) matches the out-of-place result.
  {
    Dev<T> inplace(to_storage<T>(x), offset);
    retnet::rmsnorm_forward(ctx(), inplace.p, static_cast<T*>(nullptr), inplace.p, wdev, n, c, eps);
    expect_same_bits(label<T>("rmsnorm_forward in place", shp, ex), inplace.raw(), dY.raw());
  }

  // LayerNorm
  V mean(R);
  ops_ref::layernorm_forward(y, mean, rstd, x, wp, affine ? &b : nullptr, n, c, eps);
  Dev<T> dM(R);
  retnet::layernorm_forward(ctx(), dY.p, dM.p, dR.p, dX.p, wdev, bdev, n, c, eps);
  expect_close(label<T>("layernorm_forward y", shp, ex), dY.get(), y, t);
  expect_close(label<T>("layernorm_forward mean", shp, ex), dM.get(), mean, t);
  expect_close(label<T>("layernorm_forward rstd", shp, ex), dR.get(), rstd, t);
  {
    const V m_used = dM.get(), r_used = dR.get();
    V dx = dx0, dw = dw0, db = db0;
    ops_ref::layernorm_backward(dx, &dw, &db, dy, x, wp, m_used, r_used, n, c, accumulate);
    Dev<T> dDX(to_storage<T>(dx0), offset), dDW(to_storage<T>(dw0)), dDB(to_storage<T>(db0));
    retnet::layernorm_backward(ctx(), dDX.p, dDW.p, dDB.p, dDY.p, dX.p, wdev, dM.p, dR.p, n, c, accumulate);
    const double floor = t * rms(dy) * max_abs(r_used) * (affine ? max_abs(w) : 1.0);
    expect_close(label<T>("layernorm_backward dx", shp, ex), dDX.get(), dx, t, floor);
    expect_close(label<T>("layernorm_backward dw", shp, ex), dDW.get(), dw, t);
    expect_close(label<T>("layernorm_backward db", shp, ex), dDB.get(), db, t);
    Dev<T> scratch(to_storage<T>(dx0), offset), dDW2(to_storage<T>(dw0)), dDB2(to_storage<T>(db0));
    retnet::layernorm_backward(ctx(), scratch.p, dDW2.p, dDB2.p, dDY.p, dX.p, wdev, dM.p, dR.p, n, c, accumulate);
    expect_same_bits(label<T>("layernorm_backward dw (determinism)", shp, ex), dDW.raw(), dDW2.raw());
    expect_same_bits(label<T>("layernorm_backward db (determinism)", shp, ex), dDB.raw(), dDB2.raw());
  }
}

// ---- group norm ------------------------------------------------------------------------------------------------

template <class T>
void check_group_norm(int64_t rows, int64_t width, double oscale) {
  const std::string shp = shape({rows, width});
  const std::string ex = oscale > 1 ? "large o" : "";
  const size_t N = static_cast<size_t>(rows * width), R = static_cast<size_t>(rows);
  std::mt19937_64 rng(41 + N);
  const V o = draw<T>(rng, N, oscale), g = draw<T>(rng, N, 2.0), dz = draw<T>(rng, N);
  V z(N), rstd(R);
  ops_ref::group_norm_gate_forward(z, rstd, o, g, rows, width, 1e-6);
  Dev<T> dO(to_storage<T>(o)), dG(to_storage<T>(g)), dZ(N), dR(R);
  retnet::group_norm_gate_forward(ctx(), dZ.p, dR.p, dO.p, dG.p, rows, width, 1e-6);
  expect_close(label<T>("group_norm_gate_forward z", shp, ex), dZ.get(), z, tol<T>(2e-5));
  expect_close(label<T>("group_norm_gate_forward rstd", shp, ex), dR.get(), rstd, tol<T>(2e-5));
  V d_o(N), dg(N);
  ops_ref::group_norm_gate_backward(d_o, dg, dz, o, g, dR.get(), rows, width);
  Dev<T> dDZ(to_storage<T>(dz)), dDG(N);
  // d_o written over dz (allowed: dz is scratch).
  retnet::group_norm_gate_backward(ctx(), dDZ.p, dDG.p, dDZ.p, dO.p, dG.p, dR.p, rows, width);
  const double floor = tol<T>(2e-5) * rms(dz) * max_abs(dR.get()) * max_abs(g);  // d_o's term scale
  expect_close(label<T>("group_norm_gate_backward d_o", shp, ex), dDZ.get(), d_o, tol<T>(2e-5), floor);
  expect_close(label<T>("group_norm_gate_backward dg", shp, ex), dDG.get(), dg, tol<T>(2e-5));
}

// ---- linear ----------------------------------------------------------------------------------------------------

template <class T>
void check_linear(int64_t n, int64_t in, int64_t out, bool tf32) {
  const std::string shp = shape({n, in, out});
  const std::string ex = tf32 ? "tf32" : "";
  const size_t X = static_cast<size_t>(n * in), W = static_cast<size_t>(out * in), Y = static_cast<size_t>(n * out);
  std::mt19937_64 rng(53 + X + W);
  const V x = draw<T>(rng, X), w = draw<T>(rng, W), dy = draw<T>(rng, Y), y0 = draw<T>(rng, Y), dx0 = draw<T>(rng, X),
          dw0 = draw<T>(rng, W);
  retnet::Cuda& c = ctx();
  c.allow_tf32 = tf32;
  const double t = tf32 ? 1e-2 : tol<T>();
  Dev<T> dX(to_storage<T>(x)), dW(to_storage<T>(w)), dDY(to_storage<T>(dy));
  for (bool acc : {false, true}) {
    V y = y0;
    ops_ref::linear_forward(y, x, w, n, in, out, acc);
    Dev<T> dY(to_storage<T>(y0));
    retnet::linear_forward(c, dY.p, dX.p, dW.p, n, in, out, acc);
    expect_close(label<T>("linear_forward", shp, ex + (acc ? " accumulate" : "")), dY.get(), y, t);
  }
  for (GradMode mode : {GradMode::overwrite, GradMode::accumulate, GradMode::ignore}) {
    const char* mname = mode == GradMode::overwrite    ? "overwrite"
                        : mode == GradMode::accumulate ? "accumulate"
                                                       : "ignore";
    V dx = dx0, dw = dw0;
    ops_ref::linear_backward(&dx, &dw, dy, x, w, n, in, out, mode);
    Dev<T> dDX(to_storage<T>(dx0)), dDW(to_storage<T>(dw0));
    retnet::linear_backward(c, dDX.p, dDW.p, dDY.p, dX.p, dW.p, n, in, out, mode);
    expect_close(label<T>("linear_backward dx", shp, ex + " " + mname), dDX.get(), dx, t);
    expect_close(label<T>("linear_backward dw", shp, ex + " " + mname), dDW.get(), dw, t);
  }
  {  // dw null: only dx.
    V dx = dx0;
    ops_ref::linear_backward(&dx, nullptr, dy, x, w, n, in, out, GradMode::overwrite);
    Dev<T> dDX(to_storage<T>(dx0));
    retnet::linear_backward(c, dDX.p, static_cast<T*>(nullptr), dDY.p, dX.p, dW.p, n, in, out);
    expect_close(label<T>("linear_backward dx (no dw)", shp, ex), dDX.get(), dx, t);
  }
  c.allow_tf32 = false;
}

// ---- embedding ---------------------------------------------------------------------------------------------

template <class T>
void check_embedding(int64_t n, int64_t vocab, int64_t d, double scale) {
  const std::string shp = shape({n, vocab, d});
  const size_t N = static_cast<size_t>(n), D = static_cast<size_t>(d), E = static_cast<size_t>(vocab * d);
  std::mt19937_64 rng(61 + N * 7 + E);
  std::uniform_int_distribution<int64_t> tok(0, vocab - 1);
  std::vector<int64_t> tokens(N);
  for (auto& e : tokens) e = (rng() % 3 == 0) ? 0 : tok(rng);  // many repeats of token 0
  const V table = draw<T>(rng, E), dout = draw<T>(rng, N * D), dtable0 = draw<T>(rng, E);
  Dev<int64_t> dtok(tokens);
  Dev<T> dtab(to_storage<T>(table)), out(N * D), ddout(to_storage<T>(dout));
  V ref(N * D);
  ops_ref::embedding_forward(ref, tokens, table, d, from_t(to_t<T>(scale)));
  retnet::embedding_forward(ctx(), out.p, dtok.p, dtab.p, n, d, to_t<T>(scale));
  expect_close(label<T>("embedding_forward", shp), out.get(), ref, tol<T>());
  V dref = dtable0;
  ops_ref::embedding_backward(dref, dout, tokens, d, from_t(to_t<T>(scale)));
  Dev<T> g1(to_storage<T>(dtable0)), g2(to_storage<T>(dtable0));
  retnet::embedding_backward(ctx(), g1.p, ddout.p, dtok.p, n, d, to_t<T>(scale));
  retnet::embedding_backward(ctx(), g2.p, ddout.p, dtok.p, n, d, to_t<T>(scale));
  // a token's row sums its positions' rows in float: allow the rounding of a few dozen additions
  expect_close(label<T>("embedding_backward", shp), g1.get(), dref, tol<T>(3e-5));
  expect_same_bits(label<T>("embedding_backward (determinism)", shp), g1.raw(), g2.raw());
}

// ---- loss ------------------------------------------------------------------------------------------------------

template <class T>
void check_loss(int64_t n, int64_t vocab, double lscale, int64_t ignore_index, bool alias) {
  const std::string shp = shape({n, vocab});
  std::ostringstream exs;
  exs << "logits~" << lscale << " ignore=" << ignore_index << (alias ? " dlogits aliases logits" : "");
  const std::string ex = exs.str();
  const size_t N = static_cast<size_t>(n), L = static_cast<size_t>(n * vocab);
  std::mt19937_64 rng(71 + L);
  const V logits = draw<T>(rng, L, lscale);
  std::vector<int64_t> targets(N);
  for (size_t i = 0; i < N; ++i) targets[i] = (i % 4 == 3) ? ignore_index : static_cast<int64_t>(rng() % vocab);
  const double gs = 1.0 / 37.0;
  V dref(L), rref(N);
  const retnet::LossSum want = ops_ref::cross_entropy(logits, targets, n, vocab, &dref, gs, ignore_index, &rref);
  Dev<int64_t> dt(targets);
  Dev<T> dl(to_storage<T>(logits)), dg(L), rl(N);
  T* g = alias ? dl.p : dg.p;
  const retnet::LossSum got =
      retnet::cross_entropy_forward_backward(ctx(), dl.p, dt.p, n, vocab, g, gs, ignore_index, rl.p);
  CHECK(got.count == want.count);
  expect_close(label<T>("cross_entropy sum", shp, ex), got.sum, want.sum, std::is_same_v<T, float> ? 1e-5 : 1e-2);
  expect_close(label<T>("cross_entropy dlogits", shp, ex), alias ? dl.get() : dg.get(), dref, tol<T>());
  expect_close(label<T>("cross_entropy row_loss", shp, ex), rl.get(), rref, tol<T>());
  if (!alias) {  // determinism of the sum and the gradient
    Dev<T> dg2(L);
    const retnet::LossSum again =
        retnet::cross_entropy_forward_backward(ctx(), dl.p, dt.p, n, vocab, dg2.p, gs, ignore_index);
    if (std::memcmp(&again.sum, &got.sum, sizeof(double)) != 0)
      FAIL_CHECK(label<T>("cross_entropy sum (determinism)", shp, ex) << ": two runs differ");
    expect_same_bits(label<T>("cross_entropy dlogits (determinism)", shp, ex), dg.raw(), dg2.raw());
    // Loss only (no gradient) gives the same sum.
    const retnet::LossSum only =
        retnet::cross_entropy_forward_backward(ctx(), dl.p, dt.p, n, vocab, static_cast<T*>(nullptr), gs, ignore_index);
    CHECK(only.sum == got.sum);
  }
}

}  // namespace

TEST_CASE("cuda ops: copies, fills, scaling and sum of squares", "[cuda][ops]") {
  if (!have_gpu()) return;
  for (int64_t n : {1, 7, 1000, 4099, 100003})
    for (size_t off : {0, 1}) {
      check_elementwise<float>(n, off);
      check_elementwise<bf16>(n, off);
    }
}

TEST_CASE("cuda ops: dropout masks equal the CPU's bit for bit; mask uses", "[cuda][ops]") {
  if (!have_gpu()) return;
  struct S {
    int64_t B, Tn, width;
  };
  for (S s : {S{1, 1, 1}, S{2, 5, 7}, S{3, 17, 130}, S{2, 64, 1024}})
    for (double p : {0.0, 0.1, 0.5})
      for (double pp : {0.0, 0.25})
        for (bool st : {false, true}) {
          check_dropout<float>(s.B, s.Tn, s.width, p, pp, st);
          check_dropout<bf16>(s.B, s.Tn, s.width, p, pp, st);
        }
}

TEST_CASE("cuda ops: rotation of heads", "[cuda][ops]") {
  if (!have_gpu()) return;
  struct S {
    int64_t B, L, H, dk;
  };
  for (S s : {S{1, 1, 1, 2}, S{2, 7, 3, 10}, S{2, 33, 4, 64}, S{3, 20, 2, 256}})
    for (double scale : {1.0, 0.125})
      for (bool inv : {false, true}) {
        check_rotation<float>(s.B, s.L, s.H, s.dk, scale, inv);
        check_rotation<bf16>(s.B, s.L, s.H, s.dk, scale, inv);
      }
}

TEST_CASE("cuda ops: activations and GLU", "[cuda][ops]") {
  if (!have_gpu()) return;
  for (Activation a : {Activation::gelu, Activation::swish})
    for (int64_t n : {1, 7, 1029, 70001}) {
      check_activation<float>(a, n);
      check_activation<bf16>(a, n);
    }
}

TEST_CASE("cuda ops: RMSNorm and LayerNorm", "[cuda][ops]") {
  if (!have_gpu()) return;
  struct S {
    int64_t n, c;
  };
  for (S s : {S{1, 1}, S{3, 7}, S{37, 129}, S{64, 1024}, S{1100, 64}})
    for (bool affine : {false, true})
      for (bool acc : {false, true}) {
        check_norms<float>(s.n, s.c, affine, acc, 1.0, 0);
        check_norms<bf16>(s.n, s.c, affine, acc, 1.0, 0);
      }
  check_norms<float>(16, 2048, true, false, 300.0, 0);  // rows with large values
  check_norms<bf16>(16, 2048, true, false, 300.0, 0);
  check_norms<float>(9, 64, true, true, 1.0, 1);  // misaligned rows: the scalar path
  check_norms<bf16>(9, 64, true, true, 1.0, 1);
}

TEST_CASE("cuda ops: group norm with swish gate", "[cuda][ops]") {
  if (!have_gpu()) return;
  struct S {
    int64_t rows, width;
  };
  for (S s : {S{1, 1}, S{5, 7}, S{48, 64}, S{300, 256}, S{7, 1000}}) {
    check_group_norm<float>(s.rows, s.width, 1.0);
    check_group_norm<bf16>(s.rows, s.width, 1.0);
  }
  check_group_norm<float>(20, 128, 500.0);
  check_group_norm<bf16>(20, 128, 500.0);
}

TEST_CASE("cuda ops: linear forward and backward (cuBLAS)", "[cuda][ops]") {
  if (!have_gpu()) return;
  struct S {
    int64_t n, in, out;
  };
  for (S s : {S{1, 1, 1}, S{3, 5, 7}, S{37, 129, 65}, S{128, 256, 512}, S{2, 1024, 300}}) {
    check_linear<float>(s.n, s.in, s.out, false);
    check_linear<bf16>(s.n, s.in, s.out, false);
  }
  check_linear<float>(64, 512, 256, true);
}

TEST_CASE("cuda ops: embedding forward and deterministic backward", "[cuda][ops]") {
  if (!have_gpu()) return;
  struct S {
    int64_t n, vocab, d;
  };
  for (S s : {S{1, 1, 1}, S{7, 3, 5}, S{200, 50, 64}, S{1000, 37, 130}, S{4096, 1000, 256}}) {
    check_embedding<float>(s.n, s.vocab, s.d, 1.0);
    check_embedding<float>(s.n, s.vocab, s.d, 1.5);
    check_embedding<bf16>(s.n, s.vocab, s.d, 1.5);
  }
}

TEST_CASE("cuda ops: cross-entropy loss and gradient", "[cuda][ops]") {
  if (!have_gpu()) return;
  struct S {
    int64_t n, vocab;
  };
  for (S s : {S{1, 1}, S{3, 7}, S{17, 1000}, S{5, 50000}, S{300, 4097}, S{2, 131072}})
    for (double ls : {1.0, 30.0})
      for (bool alias : {false, true}) {
        check_loss<float>(s.n, s.vocab, ls, retnet::kIgnoreIndex, alias);
        check_loss<bf16>(s.n, s.vocab, ls, retnet::kIgnoreIndex, alias);
      }
  check_loss<float>(40, 100, 1.0, 0, false);  // an ignore index inside [0, vocab)
}

TEST_CASE("cuda ops: cross-entropy rejects targets outside the vocabulary", "[cuda][ops]") {
  if (!have_gpu()) return;
  Dev<float> logits(std::vector<float>(3 * 5, 0.5f)), g(3 * 5);
  Dev<int64_t> t(std::vector<int64_t>{1, 7, retnet::kIgnoreIndex});
  CHECK_THROWS_AS(retnet::cross_entropy_forward_backward(ctx(), logits.p, t.p, 3, 5, g.p), retnet::Error);
}

TEST_CASE("cuda ops: AdamW over ranges in one launch", "[cuda][ops]") {
  if (!have_gpu()) return;
  const std::vector<retnet::AdamWRange> ranges = {
      {0, 10, 1}, {16, 1001, 0}, {1100, 3, 1}, {2000, 4096, 1}, {6097, 5, 0}};
  const size_t total = 6200;
  std::mt19937_64 rng(91);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> p(total), m(total), v(total);
  for (size_t i = 0; i < total; ++i) p[i] = d(rng), m[i] = 0.1f * d(rng), v[i] = std::fabs(0.01f * d(rng));
  Dev<float> dp(p), dm(m), dv(v), master(p);
  std::vector<bf16> pb(total);
  for (size_t i = 0; i < total; ++i) pb[i] = __float2bfloat16(p[i]);
  Dev<bf16> dpb(pb);
  Dev<retnet::AdamWRange> dr(ranges);
  for (int64_t t = 1; t <= 3; ++t) {
    std::vector<float> g(total);
    for (auto& e : g) e = d(rng);
    Dev<float> dg(g);
    retnet::AdamWStepScalars s;
    s.lr = 1e-3;
    s.weight_decay = 0.1;
    s.t = t;
    ops_ref::adamw_update(p, g, m, v, ranges, s);
    retnet::adamw_update(ctx(), dp.p, dg.p, dm.p, dv.p, dr.p, static_cast<int64_t>(ranges.size()), s);
    retnet::adamw_update(ctx(), master.p, dpb.p, dg.p, dm.p, dv.p, dr.p, 0, s);  // count 0: nothing
    const std::string what = "adamw_update step " + std::to_string(t);
    V gp = dp.get(), gm = dm.get(), gv = dv.get(), rp(p.begin(), p.end()), rm(m.begin(), m.end()),
      rv(v.begin(), v.end());
    expect_close(what + " params", gp, rp, 1e-6);
    expect_close(what + " m", gm, rm, 1e-6);
    expect_close(what + " v", gv, rv, 1e-6);
  }
  // Elements outside every range are untouched (the poisoned tail past the last range included).
  const std::vector<float> after = dp.raw();
  for (size_t i :
       {size_t{10}, size_t{15}, size_t{1017}, size_t{1099}, size_t{1103}, size_t{1999}, size_t{6096}, size_t{6150}})
    CHECK(std::memcmp(&after[i], &p[i], sizeof(float)) == 0);
}

TEST_CASE("cuda ops: AdamW with float master weights and bf16 parameters", "[cuda][ops]") {
  if (!have_gpu()) return;
  const std::vector<retnet::AdamWRange> ranges = {{0, 513, 1}, {520, 77, 0}};
  const size_t total = 600;
  std::mt19937_64 rng(93);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> p(total), g(total), zero(total, 0.0f);
  for (size_t i = 0; i < total; ++i) p[i] = d(rng), g[i] = d(rng);
  Dev<float> master(p), plain(p), dg(g), m1(zero), v1(zero), m2(zero), v2(zero);
  std::vector<bf16> pb(total, __float2bfloat16(7.0f));
  Dev<bf16> dpb(pb);
  Dev<retnet::AdamWRange> dr(ranges);
  retnet::AdamWStepScalars s;
  s.lr = 1e-2;
  s.weight_decay = 0.05;
  retnet::adamw_update(ctx(), master.p, dpb.p, dg.p, m1.p, v1.p, dr.p, 2, s);
  retnet::adamw_update(ctx(), plain.p, dg.p, m2.p, v2.p, dr.p, 2, s);
  const std::vector<float> mp = master.raw(), pp = plain.raw();
  const std::vector<bf16> b = dpb.raw();
  expect_same_bits("adamw_update master vs float update", mp, pp);
  for (const auto& r : ranges)
    for (int64_t i = r.offset; i < r.offset + r.numel; ++i) {
      const bf16 want = __float2bfloat16(mp[static_cast<size_t>(i)]);
      if (std::memcmp(&b[static_cast<size_t>(i)], &want, sizeof(bf16)) != 0) {
        FAIL_CHECK("adamw_update bf16 params: element " << i << " is " << from_t(b[static_cast<size_t>(i)])
                                                        << ", want the master's rounding " << from_t(want));
        break;
      }
    }
  CHECK(from_t(b[515]) == 7.0);  // between the ranges: untouched
}

TEST_CASE("cuda ops: bad sizes are rejected, empty sizes are no-ops", "[cuda][ops]") {
  if (!have_gpu()) return;
  Dev<float> x(std::vector<float>(8, 1.0f));
  CHECK_THROWS_AS(retnet::sum_squares(ctx(), x.p, -1), retnet::Error);
  CHECK_THROWS_AS(retnet::scale_elements(ctx(), x.p, 2.0f, -3), retnet::Error);
  CHECK_THROWS_AS(retnet::rmsnorm_forward(ctx(), x.p, x.p, x.p, static_cast<float*>(nullptr), 2, 0, 1e-5),
                  retnet::Error);
  CHECK_THROWS_AS(retnet::linear_forward(ctx(), x.p, x.p, x.p, -1, 2, 2), retnet::Error);
  CHECK_THROWS_AS(retnet::rotate_heads(ctx(), x.p, x.p, x.p, static_cast<int64_t*>(nullptr), 1, 1, 1, 3, 1.0f, false),
                  retnet::Error);
  CHECK(retnet::sum_squares(ctx(), x.p, 0) == 0.0);
  retnet::scale_elements(ctx(), x.p, 2.0f, 0);
  retnet::linear_forward(ctx(), x.p, x.p, x.p, 0, 2, 2);
  const retnet::LossSum l = retnet::cross_entropy_forward_backward(ctx(), x.p, static_cast<int64_t*>(nullptr), 0, 4);
  CHECK(l.count == 0);
  CHECK(x.get() == V(8, 1.0));
}
