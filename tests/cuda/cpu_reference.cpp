#include "cpu_reference.hpp"

#include "retnet/cpu/retention.hpp"

namespace retnet_test {

using retnet::HostView;
using retnet::Shape;

RefForward ref_forward(retnet::Form form, const retnet::RetentionConfig& cfg, const RefProblem& p) {
  const Shape sq{p.B, p.T, p.H, p.dk}, sv{p.B, p.T, p.H, p.dv}, ss{p.B, p.H, p.dk, p.dv}, sc{p.B, p.H};
  RefForward r;
  r.o.assign(static_cast<size_t>(sv.numel()), 0.0);
  r.kv1.assign(static_cast<size_t>(ss.numel()), 0.0);
  r.s1.assign(static_cast<size_t>(sc.numel()), 0.0);
  retnet::RetentionInputs<double> in;
  in.q = HostView<const double>(p.q.data(), sq);
  in.k = HostView<const double>(p.k.data(), sq);
  in.v = HostView<const double>(p.v.data(), sv);
  if (!p.kv0.empty()) in.state_kv = HostView<const double>(p.kv0.data(), ss);
  if (!p.s0.empty()) in.state_scale = HostView<const double>(p.s0.data(), sc);
  retnet::RetentionOutputs<double> out;
  out.o = HostView<double>(r.o.data(), sv);
  out.state_kv = HostView<double>(r.kv1.data(), ss);
  out.state_scale = HostView<double>(r.s1.data(), sc);
  retnet::retention_forward(retnet::cpu, form, cfg, in, out);
  return r;
}

RefBackward ref_backward(retnet::Form form, const retnet::RetentionConfig& cfg, const RefProblem& p) {
  const Shape sq{p.B, p.T, p.H, p.dk}, sv{p.B, p.T, p.H, p.dv}, ss{p.B, p.H, p.dk, p.dv}, sc{p.B, p.H};
  RefBackward r;
  r.dq.assign(static_cast<size_t>(sq.numel()), 0.0);
  r.dk.assign(static_cast<size_t>(sq.numel()), 0.0);
  r.dv.assign(static_cast<size_t>(sv.numel()), 0.0);
  r.dkv0.assign(static_cast<size_t>(ss.numel()), 0.0);
  retnet::RetentionInputs<double> in;
  in.q = HostView<const double>(p.q.data(), sq);
  in.k = HostView<const double>(p.k.data(), sq);
  in.v = HostView<const double>(p.v.data(), sv);
  if (!p.kv0.empty()) in.state_kv = HostView<const double>(p.kv0.data(), ss);
  if (!p.s0.empty()) in.state_scale = HostView<const double>(p.s0.data(), sc);
  retnet::RetentionOutputGrads<double> go;
  go.d_o = HostView<const double>(p.d_o.data(), sv);
  if (!p.d_kv1.empty()) go.d_state_kv = HostView<const double>(p.d_kv1.data(), ss);
  retnet::RetentionInputGrads<double> gi;
  gi.dq = HostView<double>(r.dq.data(), sq);
  gi.dk = HostView<double>(r.dk.data(), sq);
  gi.dv = HostView<double>(r.dv.data(), sv);
  gi.d_state_kv = HostView<double>(r.dkv0.data(), ss);
  retnet::retention_backward(retnet::cpu, form, cfg, in, go, gi);
  return r;
}

std::vector<double> ref_step(const retnet::RetentionConfig& cfg, int64_t B, const std::vector<double>& q,
                             const std::vector<double>& k, const std::vector<double>& v, std::vector<double>& kv,
                             std::vector<double>& s) {
  const int64_t H = cfg.heads(), dk = cfg.key_dim(), dv = cfg.value_dim();
  std::vector<double> o(static_cast<size_t>(B * H * dv), 0.0);
  retnet::retention_recurrent_step(
      retnet::cpu, cfg, HostView<const double>(q.data(), {B, H, dk}), HostView<const double>(k.data(), {B, H, dk}),
      HostView<const double>(v.data(), {B, H, dv}), HostView<double>(kv.data(), {B, H, dk, dv}),
      HostView<double>(s.data(), {B, H}), HostView<double>(o.data(), {B, H, dv}));
  return o;
}

}  // namespace retnet_test
