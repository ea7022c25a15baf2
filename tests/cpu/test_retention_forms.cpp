// The three CPU retention forms agree with each other and with a naive reference; states carry across
// segments and into the decoding step.
#include <catch2/catch.hpp>

#include "cpu/retention_helpers.hpp"

using namespace rtest;

namespace {

// A covering set of odd shapes: lengths 1, 7, 64, 130; chunk sizes 1, 3, 16, 64 and longer than the sequence;
// head sizes 8, 24, 64 with value size != key size; 1, 3, 8 heads; batch 1 and 3; with and without state.
const std::vector<Case> cases = {
    {1, 1, 1, 8, 12, 1, false},   {3, 7, 3, 8, 16, 3, true},      {3, 7, 1, 24, 8, 16, false},
    {1, 64, 8, 24, 40, 16, true}, {1, 64, 3, 64, 48, 64, false},  {3, 130, 8, 64, 32, 64, true},
    {1, 130, 3, 8, 24, 3, false}, {1, 130, 1, 24, 16, 200, true}, {3, 64, 8, 8, 16, 1, true},
    {1, 7, 8, 64, 24, 64, true},  {3, 1, 3, 24, 8, 3, true},
};

std::string describe(const Case& c) {
  return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
         " dk=" + std::to_string(c.dk) + " dv=" + std::to_string(c.dv) + " C=" + std::to_string(c.C) +
         (c.state ? " with state" : "");
}

// Stored final state the reference predicts: U / sqrt(scale) in torchscale mode.
Tensor<double> expected_state(const RetentionConfig& cfg, const Problem<double>& p, const RawRef& ref,
                              Tensor<double>* scale_out) {
  Tensor<double> kv = ref.U;
  Tensor<double> scale({p.B, p.H});
  const int64_t per = p.dk * p.dv;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.H; ++h) {
      const bool ts = cfg.normalization() == Normalization::torchscale;
      const double s0 = ts && p.has_state ? p.s0[b * p.H + h] : 0.0;
      const double s = final_scale(s0, cfg.gammas()[static_cast<size_t>(h)], p.T);
      scale[b * p.H + h] = s;
      if (ts)
        for (int64_t i = 0; i < per; ++i) kv[(b * p.H + h) * per + i] /= std::sqrt(s);
    }
  if (scale_out) *scale_out = scale;
  return kv;
}

}  // namespace

TEST_CASE("retention forms agree in torchscale mode after RMS normalisation (double)") {
  uint64_t seed = 100;
  for (const Case& c : cases) {
    INFO(describe(c));
    const RetentionConfig cfg = make_config(c, Normalization::torchscale);
    const Problem<double> p = make_problem(c, seed++);
    const RawRef ref = raw_reference(cfg.gammas(), p.q, p.k, p.v, raw_initial_state(p, Normalization::torchscale));
    const Tensor<double> want = rms_normalised(ref.r);
    Tensor<double> want_scale;
    const Tensor<double> want_kv = expected_state(cfg, p, ref, &want_scale);
    for (Form f : all_forms) {
      INFO(name(f));
      const Result<double> r = forward(f, cfg, p);
      CHECK(max_abs_diff(rms_normalised(r.o), want) < 1e-10);
      CHECK(max_rel_diff(r.kv, want_kv) < 1e-12);
      CHECK(max_rel_diff(r.scale, want_scale) < 1e-13);
    }
    // The recurrent form's multiplier is exactly 1 / sqrt(scale_n): o = r / sqrt(scale_n) without normalising.
    const Result<double> rec = forward(Form::recurrent, cfg, p);
    Tensor<double> scaled = ref.r;
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t n = 0; n < p.T; ++n)
        for (int64_t h = 0; h < p.H; ++h) {
          const double s0 = p.has_state ? p.s0[b * p.H + h] : 0.0;
          const double s = final_scale(s0, cfg.gammas()[static_cast<size_t>(h)], n + 1);
          for (int64_t j = 0; j < p.dv; ++j) scaled[((b * p.T + n) * p.H + h) * p.dv + j] /= std::sqrt(s);
        }
    CHECK(max_rel_diff(rec.o, scaled) < 1e-12);
  }
}

TEST_CASE("retention forms agree exactly in raw mode (double)") {
  uint64_t seed = 200;
  for (const Case& c : cases) {
    INFO(describe(c));
    const RetentionConfig cfg = make_config(c, Normalization::raw);
    const Problem<double> p = make_problem(c, seed++);
    const RawRef ref = raw_reference(cfg.gammas(), p.q, p.k, p.v, raw_initial_state(p, Normalization::raw));
    Tensor<double> want_scale;
    const Tensor<double> want_kv = expected_state(cfg, p, ref, &want_scale);
    for (Form f : all_forms) {
      INFO(name(f));
      const Result<double> r = forward(f, cfg, p);
      CHECK(max_rel_diff(r.o, ref.r) < 1e-12);
      CHECK(max_rel_diff(r.kv, want_kv) < 1e-12);
      CHECK(max_rel_diff(r.scale, want_scale) < 1e-13);  // raw mode reports S_{T-1}
    }
  }
}

TEST_CASE("retention forms agree in float") {
  uint64_t seed = 300;
  for (const Case& c : cases) {
    for (Normalization norm : {Normalization::torchscale, Normalization::raw}) {
      INFO(describe(c) << " " << to_string(norm));
      const RetentionConfig cfg = make_config(c, norm);
      const Problem<double> p = make_problem(c, seed++);
      const Problem<float> pf = convert<float>(p);
      const RawRef ref = raw_reference(cfg.gammas(), p.q, p.k, p.v, raw_initial_state(p, norm));
      const Tensor<double> want = rms_normalised(ref.r);
      const Tensor<double> want_kv = expected_state(cfg, p, ref, nullptr);
      for (Form f : all_forms) {
        INFO(name(f));
        const Result<float> r = forward(f, cfg, pf);
        CHECK(max_abs_diff(rms_normalised(r.o), want) < 1e-4);
        if (norm == Normalization::raw) CHECK(max_rel_diff(r.o, ref.r) < 1e-5);
        CHECK(max_rel_diff(r.kv, want_kv) < 1e-5);
      }
    }
  }
}

TEST_CASE("state after a prefill equals the state after feeding tokens one by one") {
  const Case c{3, 37, 3, 8, 12, 5, true};
  for (Normalization norm : {Normalization::torchscale, Normalization::raw}) {
    for (bool with_state : {false, true}) {
      INFO(to_string(norm) << (with_state ? " with initial state" : " from empty"));
      Case cc = c;
      cc.state = with_state;
      const RetentionConfig cfg = make_config(cc, norm);
      const Problem<double> p = make_problem(cc, 400);
      // Decode token by token.
      Tensor<double> kv = with_state ? p.kv0 : Tensor<double>(p.kv0.shape());
      Tensor<double> scale = with_state ? p.s0 : Tensor<double>(p.s0.shape());
      Tensor<double> o_steps({p.B, p.T, p.H, p.dv});
      Tensor<double> qs({p.B, p.H, p.dk}), ks({p.B, p.H, p.dk}), vs({p.B, p.H, p.dv}), os({p.B, p.H, p.dv});
      for (int64_t n = 0; n < p.T; ++n) {
        for (int64_t b = 0; b < p.B; ++b) {
          std::copy_n(p.q.data() + (b * p.T + n) * p.H * p.dk, p.H * p.dk, qs.data() + b * p.H * p.dk);
          std::copy_n(p.k.data() + (b * p.T + n) * p.H * p.dk, p.H * p.dk, ks.data() + b * p.H * p.dk);
          std::copy_n(p.v.data() + (b * p.T + n) * p.H * p.dv, p.H * p.dv, vs.data() + b * p.H * p.dv);
        }
        HostView<double> sv = norm == Normalization::torchscale ? scale.view() : HostView<double>{};
        retention_recurrent_step(cpu, cfg, qs.cview(), ks.cview(), vs.cview(), kv.view(), sv, os.view());
        for (int64_t b = 0; b < p.B; ++b)
          std::copy_n(os.data() + b * p.H * p.dv, p.H * p.dv, o_steps.data() + (b * p.T + n) * p.H * p.dv);
      }
      for (Form f : all_forms) {
        INFO(name(f));
        const Result<double> r = forward(f, cfg, p);
        CHECK(max_rel_diff(kv, r.kv) < 1e-12);
        if (norm == Normalization::torchscale) CHECK(max_rel_diff(scale, r.scale) < 1e-13);
        if (f == Form::recurrent) CHECK(max_rel_diff(o_steps, r.o) < 1e-12);
      }
    }
  }
}

TEST_CASE("splitting a sequence into segments with state carry equals one pass") {
  const Case c{2, 130, 3, 8, 12, 16, true};
  const std::vector<std::vector<int64_t>> splits = {{0, 50, 51, 130}, {0, 64, 128, 130}};
  for (Normalization norm : {Normalization::torchscale, Normalization::raw}) {
    const RetentionConfig cfg = make_config(c, norm);
    const Problem<double> p = make_problem(c, 500);
    const Tensor<double> d_o = random_like(p.v.shape(), 501), d_kv = random_like(p.kv0.shape(), 502);
    for (const auto& split : splits) {
      const bool aligned = split[1] % c.C == 0 && split[2] % c.C == 0;
      for (Form f : all_forms) {
        INFO(to_string(norm) << " " << name(f) << " split at " << split[1] << ", " << split[2]);
        const Result<double> whole = forward(f, cfg, p);
        const Grads<double> gwhole = backward(f, cfg, p, d_o, &d_kv);
        // Forward, segment by segment.
        std::vector<Problem<double>> segs;
        Result<double> joined{Tensor<double>(whole.o.shape()), p.kv0, p.s0};
        for (size_t s = 0; s + 1 < split.size(); ++s) {
          Problem<double> seg = p;
          seg.T = split[s + 1] - split[s];
          seg.q = slice_time(p.q, split[s], seg.T);
          seg.k = slice_time(p.k, split[s], seg.T);
          seg.v = slice_time(p.v, split[s], seg.T);
          seg.kv0 = joined.kv, seg.s0 = joined.scale, seg.has_state = s > 0 || p.has_state;
          const Result<double> r = forward(f, cfg, seg);
          paste_time(joined.o, r.o, split[s]);
          joined.kv = r.kv, joined.scale = r.scale;
          segs.push_back(seg);
        }
        CHECK(max_rel_diff(joined.kv, whole.kv) < 1e-12);
        // Raw mode ignores the incoming scale (docs/SEMANTICS.md), so only torchscale's scale carries.
        if (norm == Normalization::torchscale) CHECK(max_rel_diff(joined.scale, whole.scale) < 1e-13);
        // Multipliers of the parallel form depend on the segment; chunkwise ones only when not aligned.
        const bool exact = norm == Normalization::raw || f == Form::recurrent || (f == Form::chunkwise && aligned);
        if (exact)
          CHECK(max_rel_diff(joined.o, whole.o) < 1e-12);
        else
          CHECK(max_abs_diff(rms_normalised(joined.o), rms_normalised(whole.o)) < 1e-10);
        if (!exact) continue;
        // Backward, last segment first, carrying the state gradient.
        Grads<double> gj{Tensor<double>(p.q.shape()), Tensor<double>(p.k.shape()), Tensor<double>(p.v.shape()), d_kv};
        for (size_t s = segs.size(); s-- > 0;) {
          const Tensor<double> d_o_s = slice_time(d_o, split[s], segs[s].T);
          const Grads<double> g = backward(f, cfg, segs[s], d_o_s, &gj.dkv0);
          paste_time(gj.dq, g.dq, split[s]);
          paste_time(gj.dk, g.dk, split[s]);
          paste_time(gj.dv, g.dv, split[s]);
          gj.dkv0 = g.dkv0;
        }
        CHECK(max_rel_diff(gj, gwhole) < 1e-12);
      }
    }
  }
}

TEST_CASE("backward overwrites its outputs and forms agree on gradients in raw mode") {
  const Case c{2, 45, 3, 8, 12, 8, true};
  const RetentionConfig cfg = make_config(c, Normalization::raw);
  const Problem<double> p = make_problem(c, 600);
  const Tensor<double> d_o = random_like(p.v.shape(), 601), d_kv = random_like(p.kv0.shape(), 602);
  const Grads<double> ref = backward(Form::recurrent, cfg, p, d_o, &d_kv);
  for (Form f : all_forms) {
    INFO(name(f));
    Grads<double> g{Tensor<double>(p.q.shape(), 7.0), Tensor<double>(p.k.shape(), -3.0),
                    Tensor<double>(p.v.shape(), 1e30), Tensor<double>(p.kv0.shape(), 5.0)};
    retention_backward(cpu, f, cfg, p.inputs(), RetentionOutputGrads<double>{d_o.cview(), d_kv.cview()},
                       RetentionInputGrads<double>{g.dq.view(), g.dk.view(), g.dv.view(), g.dkv0.view()});
    CHECK(max_rel_diff(g, ref) < 1e-12);
  }
}

TEST_CASE("the final state may overwrite the initial state in place") {
  const Case c{2, 23, 3, 8, 12, 5, true};
  for (Normalization norm : {Normalization::torchscale, Normalization::raw}) {
    const RetentionConfig cfg = make_config(c, norm);
    const Problem<double> p = make_problem(c, 700);
    const Tensor<double> d_o = random_like(p.v.shape(), 701), d_kv = random_like(p.kv0.shape(), 702);
    for (Form f : all_forms) {
      INFO(to_string(norm) << " " << name(f));
      const Result<double> want = forward(f, cfg, p);
      const Grads<double> gwant = backward(f, cfg, p, d_o, &d_kv);
      Tensor<double> kv = p.kv0, scale = p.s0, o(p.v.shape());
      retention_forward(cpu, f, cfg,
                        RetentionInputs<double>{p.q.cview(), p.k.cview(), p.v.cview(), kv.cview(), scale.cview()},
                        RetentionOutputs<double>{o.view(), kv.view(), scale.view()});
      CHECK(max_rel_diff(o, want.o) < 1e-15);
      CHECK(max_rel_diff(kv, want.kv) < 1e-15);
      CHECK(max_rel_diff(scale, want.scale) < 1e-15);
      Tensor<double> dq(p.q.shape()), dk(p.k.shape()), dv(p.v.shape()), dstate = d_kv;
      retention_backward(cpu, f, cfg, p.inputs(), RetentionOutputGrads<double>{d_o.cview(), dstate.cview()},
                         RetentionInputGrads<double>{dq.view(), dk.view(), dv.view(), dstate.view()});
      CHECK(max_rel_diff(dstate, gwant.dkv0) < 1e-15);
      CHECK(max_rel_diff(dq, gwant.dq) < 1e-15);
    }
  }
}
