#pragma once
// The CPU ops that tests/cuda/test_ops.cu compares the CUDA ops against, run in their own translation unit (no Eigen
// reaches nvcc). Values travel as double (the CPU op runs in double: a reference more accurate than either GPU
// type) except the dropout mask and AdamW, which run in float as the GPU does, for bit-level comparisons.
#include <cstdint>
#include <vector>

#include "retnet/core/dropout.hpp"
#include "retnet/core/op_types.hpp"

namespace ops_ref {

using V = std::vector<double>;

void linear_forward(V& y, const V& x, const V& w, int64_t n, int64_t in, int64_t out, bool accumulate);
void linear_backward(V* dx, V* dw, const V& dy, const V& x, const V& w, int64_t n, int64_t in, int64_t out,
                     retnet::GradMode mode);

void rmsnorm_forward(V& y, V& rstd, const V& x, const V* w, int64_t n, int64_t c, double eps);
void rmsnorm_backward(V& dx, V* dw, const V& dy, const V& x, const V* w, const V& rstd, int64_t n, int64_t c,
                      bool accumulate);
void layernorm_forward(V& y, V& mean, V& rstd, const V& x, const V* w, const V* b, int64_t n, int64_t c, double eps);
void layernorm_backward(V& dx, V* dw, V* db, const V& dy, const V& x, const V* w, const V& mean, const V& rstd,
                        int64_t n, int64_t c, bool accumulate);

void activation_forward(retnet::Activation a, V& y, const V& x);
void activation_backward(retnet::Activation a, V& dx, const V& dy, const V& x);
void glu_forward(retnet::Activation a, V& y, const V& ga, const V& gb);
void glu_backward(retnet::Activation a, V& da, V& db, const V& dy, const V& ga, const V& gb);

void embedding_forward(V& out, const std::vector<int64_t>& tokens, const V& table, int64_t d, double scale);
void embedding_backward(V& dtable, const V& dout, const std::vector<int64_t>& tokens, int64_t d, double scale);

// sin/cos [rows, dk/2] in double from the rotation angles.
void rotation_table(V& sin, V& cos, int64_t rows, int64_t dk);
void rotate_heads(V& x, const V& sin, const V& cos, const std::vector<int64_t>& row_off, int64_t batch, int64_t length,
                  int64_t heads, int64_t dk, double scale, bool inverse);

void group_norm_gate_forward(V& z, V& rstd, const V& o, const V& g, int64_t rows, int64_t width, double eps);
void group_norm_gate_backward(V& d_o, V& dg, V dz, const V& o, const V& g, const V& rstd, int64_t rows, int64_t width);

// starts empty: null.
void fill_dropout_mask(std::vector<float>& mask, const retnet::DropoutMaskParams& mp, int64_t B, int64_t Tn,
                       int64_t width, const std::vector<int64_t>& starts);
void apply_mask(V& x, const V& mask);
void masked_residual_add(V& branch, const V& mask, const V& residual);

double sum_squares(const V& x);

void adamw_update(std::vector<float>& p, const std::vector<float>& g, std::vector<float>& m, std::vector<float>& v,
                  const std::vector<retnet::AdamWRange>& ranges, const retnet::AdamWStepScalars& s);

retnet::LossSum cross_entropy(const V& logits, const std::vector<int64_t>& targets, int64_t n, int64_t vocab,
                              V* dlogits, double grad_scale, int64_t ignore_index, V* row_loss);

}  // namespace ops_ref
