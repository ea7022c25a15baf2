// The CPU side of the op comparisons (see ops_reference.hpp).
#include "ops_reference.hpp"

#include "retnet/core/rotation.hpp"
#include "retnet/cpu/activation.hpp"
#include "retnet/cpu/adamw.hpp"
#include "retnet/cpu/dropout.hpp"
#include "retnet/cpu/elementwise.hpp"
#include "retnet/cpu/embedding.hpp"
#include "retnet/cpu/group_norm.hpp"
#include "retnet/cpu/linear.hpp"
#include "retnet/cpu/loss.hpp"
#include "retnet/cpu/norm.hpp"
#include "retnet/cpu/rotation.hpp"

namespace ops_ref {

using retnet::cpu;

namespace {
const double* opt(const V* v) { return v ? v->data() : nullptr; }
double* opt(V* v) { return v ? v->data() : nullptr; }
}  // namespace

void linear_forward(V& y, const V& x, const V& w, int64_t n, int64_t in, int64_t out, bool accumulate) {
  retnet::linear_forward(cpu, y.data(), x.data(), w.data(), n, in, out, accumulate);
}
void linear_backward(V* dx, V* dw, const V& dy, const V& x, const V& w, int64_t n, int64_t in, int64_t out,
                     retnet::GradMode mode) {
  retnet::linear_backward(cpu, opt(dx), opt(dw), dy.data(), x.data(), w.data(), n, in, out, mode);
}

void rmsnorm_forward(V& y, V& rstd, const V& x, const V* w, int64_t n, int64_t c, double eps) {
  retnet::rmsnorm_forward(cpu, y.data(), rstd.data(), x.data(), opt(w), n, c, eps);
}
void rmsnorm_backward(V& dx, V* dw, const V& dy, const V& x, const V* w, const V& rstd, int64_t n, int64_t c,
                      bool accumulate) {
  retnet::rmsnorm_backward(cpu, dx.data(), opt(dw), dy.data(), x.data(), opt(w), rstd.data(), n, c, accumulate);
}
void layernorm_forward(V& y, V& mean, V& rstd, const V& x, const V* w, const V* b, int64_t n, int64_t c, double eps) {
  retnet::layernorm_forward(cpu, y.data(), mean.data(), rstd.data(), x.data(), opt(w), opt(b), n, c, eps);
}
void layernorm_backward(V& dx, V* dw, V* db, const V& dy, const V& x, const V* w, const V& mean, const V& rstd,
                        int64_t n, int64_t c, bool accumulate) {
  retnet::layernorm_backward(cpu, dx.data(), opt(dw), opt(db), dy.data(), x.data(), opt(w), mean.data(), rstd.data(), n,
                             c, accumulate);
}

void activation_forward(retnet::Activation a, V& y, const V& x) {
  retnet::activation_forward(cpu, a, y.data(), x.data(), static_cast<int64_t>(x.size()));
}
void activation_backward(retnet::Activation a, V& dx, const V& dy, const V& x) {
  retnet::activation_backward(cpu, a, dx.data(), dy.data(), x.data(), static_cast<int64_t>(x.size()));
}
void glu_forward(retnet::Activation a, V& y, const V& ga, const V& gb) {
  retnet::glu_forward(cpu, a, y.data(), ga.data(), gb.data(), static_cast<int64_t>(ga.size()));
}
void glu_backward(retnet::Activation a, V& da, V& db, const V& dy, const V& ga, const V& gb) {
  retnet::glu_backward(cpu, a, da.data(), db.data(), dy.data(), ga.data(), gb.data(), static_cast<int64_t>(ga.size()));
}

void embedding_forward(V& out, const std::vector<int64_t>& tokens, const V& table, int64_t d, double scale) {
  retnet::embedding_forward(cpu, out.data(), tokens.data(), table.data(), static_cast<int64_t>(tokens.size()), d,
                            scale);
}
void embedding_backward(V& dtable, const V& dout, const std::vector<int64_t>& tokens, int64_t d, double scale) {
  retnet::embedding_backward(cpu, dtable.data(), dout.data(), tokens.data(), static_cast<int64_t>(tokens.size()), d,
                             scale);
}

void rotation_table(V& sin, V& cos, int64_t rows, int64_t dk) {
  const retnet::RotationTable<double> t(dk, 0, rows);
  sin = t.sin;
  cos = t.cos;
}
void rotate_heads(V& x, const V& sin, const V& cos, const std::vector<int64_t>& row_off, int64_t batch, int64_t length,
                  int64_t heads, int64_t dk, double scale, bool inverse) {
  retnet::rotate_heads(cpu, x.data(), sin.data(), cos.data(), row_off.data(), batch, length, heads, dk, scale, inverse);
}

void group_norm_gate_forward(V& z, V& rstd, const V& o, const V& g, int64_t rows, int64_t width, double eps) {
  retnet::group_norm_gate_forward(cpu, z.data(), rstd.data(), o.data(), g.data(), rows, width, eps);
}
void group_norm_gate_backward(V& d_o, V& dg, V dz, const V& o, const V& g, const V& rstd, int64_t rows, int64_t width) {
  retnet::group_norm_gate_backward(cpu, d_o.data(), dg.data(), dz.data(), o.data(), g.data(), rstd.data(), rows, width);
}

void fill_dropout_mask(std::vector<float>& mask, const retnet::DropoutMaskParams& mp, int64_t B, int64_t Tn,
                       int64_t width, const std::vector<int64_t>& starts) {
  retnet::fill_dropout_mask(cpu, mask.data(), mp, B, Tn, width, starts.empty() ? nullptr : starts.data());
}
void apply_mask(V& x, const V& mask) { retnet::apply_mask(cpu, x.data(), mask.data(), static_cast<int64_t>(x.size())); }
void masked_residual_add(V& branch, const V& mask, const V& residual) {
  retnet::masked_residual_add(cpu, branch.data(), mask.data(), residual.data(), static_cast<int64_t>(branch.size()));
}

double sum_squares(const V& x) { return retnet::sum_squares(cpu, x.data(), static_cast<int64_t>(x.size())); }

void adamw_update(std::vector<float>& p, const std::vector<float>& g, std::vector<float>& m, std::vector<float>& v,
                  const std::vector<retnet::AdamWRange>& ranges, const retnet::AdamWStepScalars& s) {
  retnet::adamw_update(cpu, p.data(), g.data(), m.data(), v.data(), ranges.data(), static_cast<int64_t>(ranges.size()),
                       s);
}

retnet::LossSum cross_entropy(const V& logits, const std::vector<int64_t>& targets, int64_t n, int64_t vocab,
                              V* dlogits, double grad_scale, int64_t ignore_index, V* row_loss) {
  return retnet::cross_entropy_forward_backward(cpu, logits.data(), targets.data(), n, vocab, opt(dlogits), grad_scale,
                                                ignore_index, opt(row_loss));
}

}  // namespace ops_ref
