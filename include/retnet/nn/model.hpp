#pragma once
// The RetNet language model (torchscale's RetNetDecoder with its embedding and LM head), on any backend.
//
//   x = embed_scale · E[tokens]  (→ RMSNorm if layernorm_embedding)  → dropout
//   x = DecoderLayer_l(x)  for l = 0 .. L-1
//   logits = Norm(x) · W_outᵀ   (W_out = E when share_decoder_input_output_embed)
//
// Parameters live in one flat buffer described by a ParamTable whose names are exactly those of
// torchscale's RetNetDecoder.state_dict() (output_projection.weight is absent when tied).
// Training: forward_train() keeps every activation in a Workspace; backward() writes the parameter
// gradients (accumulating, +=) from the logits gradient the caller puts into ws.dlogits(). Both take
// optional per-layer recurrent states so long sequences can be trained in segments (train/trainer.hpp).
// Training mode (a DropoutKey passed to forward_train) applies torchscale's dropout: after the embedding,
// on the retention branch (then drop path), after the FFN activation (activation_dropout) and on the FFN
// branch (dropout after fc2, then drop path); the masks are kept in the workspace for backward().
// Without a key (evaluation, inference) or with all rates 0 nothing of this runs.
// Recurrent inference: a State (make_state) holds each layer's retention state in backend memory (state_t<T>) with
// the buffers of its decoding step; prefill / prefill_rows run prompts chunkwise into all or some of its rows,
// step runs one token per row (ids from the host, checked, or already in backend memory), and step_enqueue is the
// step's backend work alone, which a CUDA graph can hold (cuda/decode_graph.cuh). Logits stay in state.logits();
// the calls taking host ids also return a host copy.
// bf16 inference weights (opt-in, off by default): set_inference_weights(WeightPrecision::bf16) makes a bf16
// copy (round to nearest even) of the float parameters; forward(), prefill() and step() then multiply with it
// (activations, norms, retention and sums stay in T), halving the bytes decoding streams per token.
// forward_train()/backward() (training, evaluation) always use the float parameters. The copy is a snapshot:
// any later non-const params() access (a Trainer step, load_weights, load_checkpoint) marks it stale, and
// forward()/prefill()/step() then throw retnet::Error until set_inference_weights(bf16) is called again.
// Checkpoints always hold the float parameters.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "retnet/core/backend_tensor.hpp"
#include "retnet/core/buffer.hpp"
#include "retnet/core/checked.hpp"
#include "retnet/core/dropout.hpp"
#include "retnet/core/params.hpp"
#include "retnet/core/precision.hpp"
#include "retnet/core/rotation.hpp"
#include "retnet/core/tensor.hpp"
#include "retnet/nn/backend_ops.hpp"
#include "retnet/nn/block.hpp"
#include "retnet/nn/config.hpp"

namespace retnet {

template <class T, Backend BackendT = Cpu>
class Model {
 public:
  using backend_type = BackendT;
  using space = typename BackendT::space;
  using grad_type = grad_t<T>;      // parameter gradients
  using state_type = state_t<T>;    // recurrent state
  using scalar_type = scalar_t<T>;  // scalar factors, rotation tables
  // Offsets of one layer's tensors in the flat buffer (-1: absent).
  struct LayerOffsets {
    int64_t q, k, v, g, out, rn_w, rn_b, fc1, fc2, gate, fn_w, fn_b;
    int64_t gn = -1;  // retention group-norm weight (ModelConfig::group_norm_weight)
  };

  // Whether training keeps one buffer, shared by the layers, for what is cheap to recompute (the norms' outputs, the
  // gated retention output, the FFN product: about a third of the activations) and recomputes it in the backward
  // pass: on the GPU, where memory bounds the batch; not on the CPU, where memory is plentiful and the extra
  // element-wise passes cost about 3 % of a training step.
  static constexpr bool recompute_activations = !host_backend<BackendT>;

  // Saved activations for one (batch, length); reuse it across steps of the same shape.
  class Workspace {
   public:
    Workspace(const Model& m, int64_t batch, int64_t length, bool with_grad = true)
        : batch_(batch), length_(length), with_grad_(with_grad) {
      const BackendT& be = m.be_;
      require(batch > 0 && length > 0, "Model::Workspace: batch = ", batch, " and length = ", length,
              " must be positive");
      const ModelConfig& c = m.cfg_;
      const int64_t N = batch * length, d = c.decoder_embed_dim, Vd = c.decoder_value_embed_dim,
                    F = c.decoder_ffn_embed_dim, H = c.decoder_retention_heads, V = c.vocab_size, L = c.decoder_layers;
      const bool glu = c.ffn_type == "glu";
      // Key width, and the extra buffers of grouped heads and of a group-norm weight (0 when unused).
      const int64_t Kd = c.key_embed_dim(), kv = c.kv_heads();
      const int64_t kv_tmp = kv < H ? N * kv * std::max(c.key_dim(), c.value_dim()) : 0;
      const int64_t gn_y = c.group_norm_weight ? N * Vd : 0;
      int64_t total = 0;
      auto take = [&](int64_t n) {
        const int64_t o = total;
        total += (n + 15) / 16 * 16;
        return o;
      };
      // First pass computes offsets, second binds pointers.
      std::vector<int64_t> offs;
      auto plan = [&](int64_t n) { offs.push_back(take(n)); };
      // Without gradients (inference) the layers share one set of saved buffers and the residual stream
      // ping-pongs between two buffers, so memory does not grow with the depth.
      const int64_t planned_layers = with_grad ? L : 1, planned_res = with_grad ? L + 1 : 2;
      for (int64_t l = 0; l < planned_res; ++l) plan(N * d);  // res
      plan(N * d), plan(N), plan(N);                          // emb, emb mean, emb rstd
      // With recompute_activations the norms' outputs, the gated retention output (z, gn_y) and the FFN product (a)
      // are recomputed by the backward pass (element-wise work, no products): layer 0's buffers serve every layer
      // (`own` sizes them for layer 0 only). The grouped heads' temporary is never read by the backward.
      for (int64_t l = 0; l < planned_layers; ++l) {
        auto own = [&](int64_t n) { return l == 0 || !recompute_activations ? n : 0; };
        plan(own(N * d)), plan(N), plan(N);                           // n1 mean1 rstd1
        plan(N * Kd), plan(N * Kd);                                   // q k
        plan(N * Vd), plan(N * Vd), plan(N * Vd), plan(own(N * Vd));  // v g o z
        plan(N * H);                                                  // gn_rstd
        plan(l == 0 ? kv_tmp : 0), plan(own(gn_y));
        plan(N * d);                                           // x1
        plan(own(N * d)), plan(N), plan(N);                    // n2 mean2 rstd2
        plan(N * F), plan(glu ? N * F : 0), plan(own(N * F));  // h gt a
      }
      plan(N * d), plan(N), plan(N);  // nf meanf rstdf
      plan(N * V);                    // logits
      if (with_grad) {
        plan(N * d), plan(N * d), plan(N * Kd), plan(N * Kd);    // dres dn dq dk
        plan(N * Vd), plan(N * Vd), plan(N * Vd), plan(N * Vd);  // dv dg dz do
        plan(N * F), plan(N * F);                                // da dgt
        plan(kv_tmp);                                            // dkv
      }
      // Dropout masks (training only), only for the sites with a nonzero rate.
      const bool masks = with_grad && c.has_dropout();
      auto branch_masked = [&](int64_t l) { return c.dropout > 0 || drop_path_rate_of(c.drop_path_rate, l, L) > 0; };
      if (masks) {
        plan(c.dropout > 0 ? N * d : 0);  // embedding
        for (int64_t l = 0; l < L; ++l) {
          plan(branch_masked(l) ? N * d : 0), plan(branch_masked(l) ? N * d : 0);  // retention, ffn branches
          plan(c.activation_dropout > 0 ? N * F : 0);                              // ffn activation
        }
        plan(N * d);  // dbranch
      }
      buf_ = Buffer<T, BackendT>(be, total);
      tokens_dev_ = Buffer<int64_t, BackendT>(be, N);
      starts_dev_ = Buffer<int64_t, BackendT>(be, batch);
      row_off_dev_ = Buffer<int64_t, BackendT>(be, batch);
      size_t i = 0;
      auto next = [&]() { return buf_.data() + offs[i++]; };
      res_.resize(static_cast<size_t>(L + 1));
      for (int64_t l = 0; l < planned_res; ++l) res_[static_cast<size_t>(l)] = next();
      for (int64_t l = planned_res; l <= L; ++l) res_[static_cast<size_t>(l)] = res_[static_cast<size_t>(l % 2)];
      emb_ = next(), emb_mean_ = next(), emb_rstd_ = next();
      layers_.resize(static_cast<size_t>(L));
      for (int64_t l = 0; l < planned_layers; ++l) {
        auto& s = layers_[static_cast<size_t>(l)];
        s.n1 = next(), s.mean1 = next(), s.rstd1 = next();
        s.msr.q = next(), s.msr.k = next();
        s.msr.v = next(), s.msr.g = next(), s.msr.o = next(), s.msr.z = next();
        s.msr.gn_rstd = next();
        s.msr.kv_tmp = next(), s.msr.gn_y = next();
        if (kv_tmp == 0) s.msr.kv_tmp = nullptr;
        if (gn_y == 0) s.msr.gn_y = nullptr;
        s.x1 = next();
        s.n2 = next(), s.mean2 = next(), s.rstd2 = next();
        s.ffn.h = next(), s.ffn.gt = next(), s.ffn.a = next();
        if (!glu) s.ffn.gt = nullptr;
        s.recompute = s.msr.recompute = s.ffn.recompute = recompute_activations && with_grad;
        if (l > 0) {
          const auto& first = layers_[0];
          s.msr.kv_tmp = first.msr.kv_tmp;
          if (recompute_activations)
            s.n1 = first.n1, s.n2 = first.n2, s.msr.z = first.msr.z, s.msr.gn_y = first.msr.gn_y, s.ffn.a = first.ffn.a;
        }
      }
      for (int64_t l = planned_layers; l < L; ++l) layers_[static_cast<size_t>(l)] = layers_[0];
      nf_ = next(), meanf_ = next(), rstdf_ = next();
      logits_ = next();
      if (with_grad) {
        sc_.dn = nullptr;
        dres_ = next();
        sc_.dn = next();
        sc_.msr.dq = next(), sc_.msr.dk = next();
        sc_.msr.dv = next(), sc_.msr.dg = next(), sc_.msr.dz = next(), sc_.msr.do_ = next();
        sc_.ffn.da = next(), sc_.ffn.dgt = next();
        sc_.msr.dkv = next();
        if (kv_tmp == 0) sc_.msr.dkv = nullptr;
      }
      if (masks) {
        auto next_if = [&](bool used) {
          T* p = next();
          return used ? p : nullptr;
        };
        emb_mask_store_ = next_if(c.dropout > 0);
        mask_store_.resize(static_cast<size_t>(L));
        for (int64_t l = 0; l < L; ++l) {
          LayerMasks& lm = mask_store_[static_cast<size_t>(l)];
          lm.ret = next_if(branch_masked(l)), lm.ffn = next_if(branch_masked(l));
          lm.act = next_if(c.activation_dropout > 0);
        }
        sc_.dbranch = next();
      }
    }
    int64_t batch() const { return batch_; }
    int64_t length() const { return length_; }
    // Logits of the last forward_train [batch·length, vocab] in the backend's memory; the caller writes the loss
    // gradient into dlogits() (the same memory) before backward().
    T* logits() { return logits_; }
    const T* logits() const { return logits_; }
    T* dlogits() { return logits_; }
    // Final hidden state (after the last layer, before the final norm) [batch·length, d].
    const T* hidden() const { return res_.back(); }

   private:
    friend class Model;
    int64_t batch_, length_;
    bool with_grad_;
    Buffer<T, BackendT> buf_;
    std::vector<T*> res_;
    T *emb_, *emb_mean_, *emb_rstd_;
    std::vector<BlockSaved<T>> layers_;
    T *nf_, *meanf_, *rstdf_, *logits_;
    T* dres_ = nullptr;
    BlockScratch<T> sc_{};
    struct LayerMasks {
      T *ret, *ffn, *act;
    };
    T* emb_mask_store_ = nullptr;  // storage (null: site unused)
    std::vector<LayerMasks> mask_store_;
    T* emb_mask_ = nullptr;  // the embedding mask of the last forward_train (null: none)
    // Recorded by forward_train for backward.
    Form form_ = Form::chunkwise;
    std::vector<int64_t> tokens_, row_off_, starts_;  // host copies
    Buffer<int64_t, BackendT> tokens_dev_, starts_dev_, row_off_dev_;
    std::unique_ptr<RotationTable<scalar_type>> rot_;
    Buffer<scalar_type, BackendT> rot_sin_, rot_cos_;  // the table in backend memory (not used by host backends)
    RotationRows<scalar_type> rot_rows_;
    std::vector<StatePtrs<state_type>> state_in_;
  };

  explicit Model(ModelConfig cfg, const BackendT& backend = BackendT{})
      : cfg_(std::move(cfg)), rc_(init_rc(cfg_)), be_(backend) {
    const int64_t d = cfg_.decoder_embed_dim, Vd = cfg_.decoder_value_embed_dim, F = cfg_.decoder_ffn_embed_dim,
                  V = cfg_.vocab_size, Kd = cfg_.key_embed_dim(), kv = cfg_.kv_heads();
    const bool ln = cfg_.norm_type == "layernorm";
    embed_ = table_.add("embed_tokens.weight", {V, d}).offset;
    if (!cfg_.share_decoder_input_output_embed) head_ = table_.add("output_projection.weight", {V, d}).offset;
    if (cfg_.layernorm_embedding) {
      emb_norm_w_ = table_.add("layernorm_embedding.weight", {d}).offset;
      if (ln) emb_norm_b_ = table_.add("layernorm_embedding.bias", {d}).offset;
    }
    for (int64_t l = 0; l < cfg_.decoder_layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      LayerOffsets o{};
      o.q = table_.add(p + "retention.q_proj.weight", {Kd, d}).offset;
      o.k = table_.add(p + "retention.k_proj.weight", {kv * cfg_.key_dim(), d}).offset;
      o.v = table_.add(p + "retention.v_proj.weight", {kv * cfg_.value_dim(), d}).offset;
      o.g = table_.add(p + "retention.g_proj.weight", {Vd, d}).offset;
      o.out = table_.add(p + "retention.out_proj.weight", {d, Vd}).offset;
      if (cfg_.group_norm_weight) o.gn = table_.add(p + "retention.group_norm.weight", {cfg_.value_dim()}).offset;
      o.rn_w = table_.add(p + "retention_layer_norm.weight", {d}).offset;
      o.rn_b = ln ? table_.add(p + "retention_layer_norm.bias", {d}).offset : -1;
      o.fc1 = table_.add(p + "ffn.fc1.weight", {F, d}).offset;
      o.fc2 = table_.add(p + "ffn.fc2.weight", {d, F}).offset;
      o.gate = cfg_.ffn_type == "glu" ? table_.add(p + "ffn.gate.weight", {F, d}).offset : -1;
      o.fn_w = table_.add(p + "final_layer_norm.weight", {d}).offset;
      o.fn_b = ln ? table_.add(p + "final_layer_norm.bias", {d}).offset : -1;
      layers_.push_back(o);
    }
    final_w_ = table_.add("layer_norm.weight", {d}).offset;
    if (ln) final_b_ = table_.add("layer_norm.bias", {d}).offset;
    params_ = Buffer<T, BackendT>(be_, table_.total());
    spec_ = BlockSpec{rc_, NormSpec{ln, cfg_.layernorm_eps}, cfg_.layernorm_eps,
                      activation_from_string(cfg_.activation_fn), F};
    set_norms_to_one();
  }

  const ModelConfig& config() const { return cfg_; }
  const BackendT& backend() const { return be_; }
  const ParamTable& param_table() const { return table_; }
  // The flat parameter buffer in the backend's memory. Non-const access may change the parameters, so it marks a
  // bf16 inference copy stale.
  T* params() {
    ++params_version_;
    return params_.data();
  }
  const T* params() const { return params_.data(); }
  // Counts non-const params() accesses: a change of it means the parameters may have changed.
  uint64_t params_version() const { return params_version_; }
  const RetentionConfig& retention_config() const { return rc_; }
  const LayerOffsets& layer_offsets(int64_t l) const { return layers_[static_cast<size_t>(l)]; }

  int64_t param_count() const { return params_.size(); }
  // The parameters through host memory (a copy on device backends).
  std::vector<T> params_to_host() const { return params_.to_host(); }
  void params_from_host(const T* src, int64_t n) {
    require(n == params_.size(), "Model::params_from_host: ", n, " values for ", params_.size(), " parameters");
    ++params_version_;
    params_.copy_from_host(src, n);
  }

  // Weights used by forward(), prefill() and step(): float32 (default) uses the parameters themselves; bf16
  // (re)builds a bf16 copy of the current parameters (call again after changing them). Costs 2 bytes per
  // parameter while on; float32 frees it. CPU only.
  void set_inference_weights(WeightPrecision p) requires host_backend<BackendT> {
    if (p == WeightPrecision::float32) {
      std::vector<uint16_t>().swap(bf16_);
    } else {
      require(p == WeightPrecision::bf16, "Model::set_inference_weights: unknown precision ", static_cast<int>(p));
      bf16_.resize(params_.size());
      to_bf16(bf16_.data(), params_.data(), params_.size());
      bf16_version_ = params_version_;
    }
    precision_ = p;
  }
  WeightPrecision inference_weights() const { return precision_; }

  // torchscale's initialisation (see the class comment of MultiScaleRetention and RetNetDecoder).
  void init_torchscale(uint64_t seed) {
    std::vector<scalar_type> host(static_cast<size_t>(params_.size()));
    init_torchscale(seed, host);
    if constexpr (std::is_same_v<scalar_type, T>) {
      params_from_host(host.data(), static_cast<int64_t>(host.size()));
    } else {  // drawn in the scalar type, stored rounded
      const std::vector<T> stored(host.begin(), host.end());
      params_from_host(stored.data(), static_cast<int64_t>(stored.size()));
    }
  }

 private:
  void init_torchscale(uint64_t seed, std::vector<scalar_type>& host) const {
    std::mt19937_64 gen(seed);
    const int64_t d = cfg_.decoder_embed_dim;
    auto uniform = [&](int64_t off, int64_t n, double bound) {
      std::uniform_real_distribution<double> u(-bound, bound);
      for (int64_t i = 0; i < n; ++i) host[static_cast<size_t>(off + i)] = static_cast<scalar_type>(u(gen));
    };
    auto normal = [&](int64_t off, int64_t n, double std) {
      std::normal_distribution<double> nd(0.0, std);
      for (int64_t i = 0; i < n; ++i) host[static_cast<size_t>(off + i)] = static_cast<scalar_type>(nd(gen));
    };
    for (const ParamInfo& p : table_.entries()) {
      const std::string& n = p.name;
      auto ends = [&](const char* s) {
        const std::string e(s);
        return n.size() >= e.size() && n.compare(n.size() - e.size(), e.size(), e) == 0;
      };
      if (p.shape.rank() == 1) {
        std::fill_n(host.data() + p.offset, p.numel(), ends(".bias") ? scalar_type(0) : scalar_type(1));
      } else if (n == "embed_tokens.weight" || n == "output_projection.weight") {
        normal(p.offset, p.numel(), std::pow(static_cast<double>(d), -0.5));
      } else {
        const double fan_out = static_cast<double>(p.shape[0]), fan_in = static_cast<double>(p.shape[1]);
        if (ends("q_proj.weight") || ends("k_proj.weight") || ends("v_proj.weight") || ends("g_proj.weight"))
          uniform(p.offset, p.numel(), std::pow(2.0, -2.5) * std::sqrt(6.0 / (fan_in + fan_out)));
        else if (ends("out_proj.weight"))
          uniform(p.offset, p.numel(), 0.5 * std::sqrt(6.0 / (fan_in + fan_out)));
        else  // ffn: PyTorch's nn.Linear default, kaiming_uniform(a = sqrt 5) = U(±1/sqrt(fan_in))
          uniform(p.offset, p.numel(), 1.0 / std::sqrt(fan_in));
      }
    }
  }

 public:
  // ---------------------------------------------------------------- training interface
  // Forward pass keeping activations. tokens [B, T] (B, T = the workspace's). start_positions: absolute
  // position of each row's first token (null: all 0). state_in / state_out: per-layer retention states
  // (empty vectors: none). logits_rows_last_only: compute the head only for each row's last position (the
  // logits land in ws.logits() rows 0..B-1); backward is then not available. dropout: non-null selects
  // training mode, with the masks a pure function of the key (core/dropout.hpp, cpu/dropout.hpp); null is evaluation.
  void forward_train(const int64_t* tokens, Form form, Workspace& ws, const int64_t* start_positions = nullptr,
                     const std::vector<StatePtrs<state_type>>& state_in = {},
                     const std::vector<StatePtrs<state_type>>& state_out = {}, bool logits_last_only = false,
                     bool step = false, const DropoutKey* dropout = nullptr) {
    forward_impl(tokens, form, ws, start_positions, state_in, state_out, logits_last_only, step, dropout, false);
  }

 private:
  // forward_train's body; bf16 = true multiplies with the bf16 inference copy (never in training).
  void forward_impl(const int64_t* tokens, Form form, Workspace& ws, const int64_t* start_positions,
                    const std::vector<StatePtrs<state_type>>& state_in,
                    const std::vector<StatePtrs<state_type>>& state_out, bool logits_last_only, bool step,
                    const DropoutKey* dropout, bool bf16) {
    const int64_t B = ws.batch_, Tn = ws.length_, N = B * Tn, V = cfg_.vocab_size;
    validate_tokens("Model::forward", tokens, B, Tn, V);
    const bool train = dropout && cfg_.has_dropout();
    require(!train || (ws.with_grad_ && !step),
            "Model::forward_train: dropout (training mode) needs a workspace with gradients and no recurrent step");
    ws.form_ = form;
    ws.tokens_.assign(tokens, tokens + N);
    ws.starts_.assign(static_cast<size_t>(B), 0);
    if (start_positions) ws.starts_.assign(start_positions, start_positions + B);
    ws.tokens_dev_.copy_from_host(tokens, N);
    ws.starts_dev_.copy_from_host(ws.starts_.data(), B);
    prepare_rotation(ws);
    set_masks(ws, train ? dropout : nullptr);
    ws.state_in_ = state_in;
    run_forward(ws, ws.tokens_dev_.data(), form, state_in, state_out, logits_last_only, step, bf16);
  }
  // The backend work of a forward pass over token ids `tok` in backend memory, with the workspace's rotation rows
  // and masks already bound: no host work, so a decoding step can be captured into a CUDA graph.
  void run_forward(Workspace& ws, const int64_t* tok, Form form, const std::vector<StatePtrs<state_t<T>>>& state_in,
                   const std::vector<StatePtrs<state_t<T>>>& state_out, bool logits_last_only, bool step, bool bf16) {
    const int64_t B = ws.batch_, Tn = ws.length_, N = B * Tn, d = cfg_.decoder_embed_dim, V = cfg_.vocab_size;
    const T* P = params_.data();
    const BackendT& be = be_;
    const scalar_type scale =
        cfg_.no_scale_embedding ? scalar_type(1) : static_cast<scalar_type>(std::sqrt(static_cast<double>(d)));
    const NormSpec ns = spec_.norm;
    if (cfg_.layernorm_embedding) {
      embedding_forward(be, ws.emb_, tok, P + embed_, N, d, scale);
      norm_forward(be, ns, ws.res_[0], ws.emb_mean_, ws.emb_rstd_, ws.emb_, norm_w(emb_norm_w_, emb_norm_b_), N, d);
    } else {
      embedding_forward(be, ws.res_[0], tok, P + embed_, N, d, scale);
    }
    if (ws.emb_mask_) apply_mask(be, ws.res_[0], ws.emb_mask_, N * d);
    const MsrDims dm = dims(B, Tn);
    for (int64_t l = 0; l < cfg_.decoder_layers; ++l) {
      const size_t li = static_cast<size_t>(l);
      block_forward(be, spec_, form, dm, bf16 ? weights_bf16(l) : weights(l), ws.res_[li], ws.layers_[li],
                    ws.res_[li + 1], ws.rot_rows_, state_in.empty() ? StatePtrs<state_type>{} : state_in[li],
                    state_out.empty() ? StatePtrs<state_type>{} : state_out[li], step);
    }
    const T* xf = ws.res_.back();
    int64_t rows = N;
    if (logits_last_only && Tn > 1) {
      // gather each row's last position into nf (as scratch input), then normalise in place
      for (int64_t b = 0; b < B; ++b) copy_elements(be, ws.nf_ + b * d, xf + (b * Tn + Tn - 1) * d, d);
      xf = ws.nf_;
      rows = B;
    }
    norm_forward(be, ns, ws.nf_, ws.meanf_, ws.rstdf_, xf, norm_w(final_w_, final_b_), rows, d);
    project(be, ws.logits_, ws.nf_, P + head_offset(), bf16 ? bf16_.data() + head_offset() : nullptr, rows, d, V);
    if constexpr (host_backend<BackendT>)
      if (checked()) check_finite("Model::forward", "logits", ws.logits_, Shape{rows, V});
  }
  // True when the inference calls use the bf16 copy; rejects a stale copy.
  bool use_bf16(const char* op) const {
    if constexpr (!host_backend<BackendT>) return false;
    if (precision_ != WeightPrecision::bf16) return false;
    require(bf16_version_ == params_version_, op,
            ": the parameters may have changed since set_inference_weights(WeightPrecision::bf16) built the bf16 "
            "copy (non-const params() was called); call set_inference_weights again");
    return true;
  }
  BlockWeights<T> weights_bf16(int64_t l) const {
    BlockWeights<T> w = weights(l);
    const LayerOffsets& o = layers_[static_cast<size_t>(l)];
    auto at = [&](int64_t off) { return off < 0 ? nullptr : bf16_.data() + off; };
    w.msr.q16 = at(o.q), w.msr.k16 = at(o.k), w.msr.v16 = at(o.v), w.msr.g16 = at(o.g), w.msr.out16 = at(o.out);
    w.ffn.fc1_16 = at(o.fc1), w.ffn.gate16 = at(o.gate), w.ffn.fc2_16 = at(o.fc2);
    return w;
  }

 public:
  // Backward of the last forward_train on ws. Reads ws.dlogits() [B·T, V]; grads (param_table().total()
  // elements) accumulate. d_state_out: per-layer gradients of the final states (empty: none);
  // d_state_in: per-layer outputs for the gradients of the initial states (empty: not wanted).
  // layer_done (optional): called with l as soon as layer l's parameter gradients are final (l = L-1 .. 0; the
  // head and the final norm are final before the call for L-1), so a data-parallel run can start summing them
  // over ranks while the backward pass goes on; the embedding's are final when backward() returns.
  void backward(Workspace& ws, grad_type* grads, const std::vector<const state_type*>& d_state_out = {},
                const std::vector<state_type*>& d_state_in = {}, const std::function<void(int64_t)>& layer_done = {}) {
    require(ws.with_grad_, "Model::backward: the workspace was made without gradient buffers");
    const int64_t B = ws.batch_, Tn = ws.length_, N = B * Tn, d = cfg_.decoder_embed_dim, V = cfg_.vocab_size;
    const T* P = params_.data();
    const NormSpec ns = spec_.norm;
    T* dres = ws.dres_;
    T* dn = ws.sc_.dn;
    const BackendT& be = be_;
    // head
    linear_backward(be, dn, grads + head_offset(), ws.logits_, ws.nf_, P + head_offset(), N, d, V);
    norm_backward(be, ns, dres, norm_g(grads, final_w_, final_b_), dn, ws.res_.back(), norm_w(final_w_, final_b_),
                  ws.meanf_, ws.rstdf_, N, d, false);
    const MsrDims dm = dims(B, Tn);
    for (int64_t l = cfg_.decoder_layers - 1; l >= 0; --l) {
      const size_t li = static_cast<size_t>(l);
      block_backward(be, spec_, ws.form_, dm, weights(l), grads_of(grads, l), ws.res_[li], ws.layers_[li], ws.sc_, dres,
                     ws.rot_rows_, ws.state_in_.empty() ? StatePtrs<state_type>{} : ws.state_in_[li],
                     d_state_out.empty() ? nullptr : d_state_out[li], d_state_in.empty() ? nullptr : d_state_in[li]);
      if (layer_done) layer_done(l);
    }
    if (ws.emb_mask_) apply_mask(be, dres, ws.emb_mask_, N * d);
    const scalar_type scale =
        cfg_.no_scale_embedding ? scalar_type(1) : static_cast<scalar_type>(std::sqrt(static_cast<double>(d)));
    const T* demb = dres;
    if (cfg_.layernorm_embedding) {
      norm_backward(be, ns, dn, norm_g(grads, emb_norm_w_, emb_norm_b_), dres, ws.emb_,
                    norm_w(emb_norm_w_, emb_norm_b_), ws.emb_mean_, ws.emb_rstd_, N, d, false);
      demb = dn;
    }
    embedding_backward(be, grads + embed_, demb, ws.tokens_dev_.data(), N, d, scale);
  }

  // ---------------------------------------------------------------- inference interface
  // logits [B, T, V]
  Tensor<T> forward(HostView<const int64_t> tokens, Form form) {
    require(tokens.rank() == 2, "Model::forward: tokens has shape ", tokens.shape().to_string(),
            ", expected [batch, length]");
    const bool bf16 = use_bf16("Model::forward");
    Workspace ws(*this, tokens.size(0), tokens.size(1), /*with_grad=*/false);
    forward_impl(tokens.data(), form, ws, nullptr, {}, {}, false, false, nullptr, bf16);
    Tensor<T> out({tokens.size(0), tokens.size(1), cfg_.vocab_size});
    be_.copy_to_host(out.data(), ws.logits(), sizeof(T) * static_cast<size_t>(out.numel()));
    return out;
  }

  // One layer's recurrent state: a host tensor on host backends, a tensor in backend memory otherwise.
  using StateTensor =
      std::conditional_t<host_backend<BackendT>, Tensor<state_type>, BackendTensor<state_type, BackendT>>;

  // The recurrent state of a batch of sequences together with the buffers of its decoding step, all allocated by
  // make_state: a step allocates nothing, so it can be captured into a CUDA graph and replayed. Move-only.
  class State {
   public:
    std::vector<StateTensor> kv;     // per layer [B, H, dk, dv] (torchscale's scaled storage)
    std::vector<StateTensor> scale;  // per layer [B, H]
    std::vector<int64_t> positions;  // [B]: next absolute position of each row (host)
    int64_t batch() const { return static_cast<int64_t>(positions.size()); }
    // The last logits of every row [B, V] in backend memory, written by prefill and step.
    T* logits() { return ws_ ? ws_->logits_ : nullptr; }
    const T* logits() const { return ws_ ? ws_->logits_ : nullptr; }
    // The token ids step_enqueue reads [B], in backend memory.
    int64_t* tokens() { return ws_ ? ws_->tokens_dev_.data() : nullptr; }
    // `positions` in backend memory, read and advanced by step_enqueue.
    int64_t* device_positions() { return ws_ ? ws_->starts_dev_.data() : nullptr; }

   private:
    friend class Model;
    std::unique_ptr<Workspace> ws_;  // the step's activations, token ids, positions and rotation rows
  };

  // A zero state for `batch` rows at position 0, with the buffers of its decoding step.
  State make_state(int64_t batch) const {
    require(batch > 0, "Model::make_state: batch = ", batch, " must be positive");
    State s;
    const int64_t H = cfg_.decoder_retention_heads;
    for (int64_t l = 0; l < cfg_.decoder_layers; ++l) {
      s.kv.push_back(state_tensor({batch, H, cfg_.key_dim(), cfg_.value_dim()}));
      s.scale.push_back(state_tensor({batch, H}));
    }
    s.positions.assign(static_cast<size_t>(batch), 0);
    s.ws_ = std::make_unique<Workspace>(*this, batch, 1, /*with_grad=*/false);
    if constexpr (!host_backend<BackendT>) {
      // Rotation rows: row b of the step's table is row b's position, filled on the device at each step.
      Workspace& ws = *s.ws_;
      ws.row_off_.resize(static_cast<size_t>(batch));
      for (int64_t b = 0; b < batch; ++b) ws.row_off_[static_cast<size_t>(b)] = b;
      ws.row_off_dev_.copy_from_host(ws.row_off_.data(), batch);
      const int64_t n = batch * (cfg_.key_dim() / 2);
      ws.rot_sin_ = decltype(ws.rot_sin_)(be_, n);
      ws.rot_cos_ = decltype(ws.rot_cos_)(be_, n);
      ws.rot_rows_ = {ws.rot_sin_.data(), ws.rot_cos_.data(), ws.row_off_dev_.data()};
    }
    return s;
  }

  // Runs the prompt [B, T] with `form`, continuing from and updating `state`; logits of each row's last token
  // [B, V], copied to the host (they also stay in state.logits()).
  Tensor<T> prefill(HostView<const int64_t> tokens, State& state, Form form = Form::chunkwise) {
    require(tokens.rank() == 2, "Model::prefill: tokens has shape ", tokens.shape().to_string(),
            ", expected [batch, length]");
    check_state("Model::prefill", state, tokens.size(0));
    prefill_rows(tokens, state, 0, form);
    return logits_to_host(state);
  }

  // Prefills rows [first_row, first_row + n) of `state` with tokens [n, T] (host memory, checked), continuing from
  // those rows' state; other rows are untouched. Their last logits land in the same rows of state.logits().
  void prefill_rows(HostView<const int64_t> tokens, State& state, int64_t first_row, Form form = Form::chunkwise) {
    const char* op = "Model::prefill";
    require(tokens.rank() == 2, op, ": tokens has shape ", tokens.shape().to_string(), ", expected [batch, length]");
    const int64_t n = tokens.size(0), Tn = tokens.size(1), V = cfg_.vocab_size, H = cfg_.decoder_retention_heads;
    check_state(op, state, state.batch());
    require(first_row >= 0 && n >= 0 && first_row + n <= state.batch(), op, ": rows [", first_row, ", ", first_row + n,
            ") lie outside the state's batch of ", state.batch());
    const bool bf16 = use_bf16(op);
    Workspace ws(*this, n, Tn, /*with_grad=*/false);
    const int64_t kv_row = H * cfg_.key_dim() * cfg_.value_dim();
    std::vector<StatePtrs<state_type>> in, out;
    std::vector<StateTensor> kv_out, sc_out;
    for (size_t l = 0; l < state.kv.size(); ++l) {
      kv_out.push_back(state_tensor({n, H, cfg_.key_dim(), cfg_.value_dim()}));
      sc_out.push_back(state_tensor({n, H}));
      in.push_back({state.kv[l].data() + first_row * kv_row, state.scale[l].data() + first_row * H});
      out.push_back({kv_out[l].data(), sc_out[l].data()});
    }
    const auto first = state.positions.begin() + first_row;
    const std::vector<int64_t> starts(first, first + n);
    forward_impl(tokens.data(), form, ws, starts.data(), in, out, /*logits_last_only=*/true, false, nullptr, bf16);
    for (size_t l = 0; l < state.kv.size(); ++l) {
      // Device states keep their buffers (a CUDA graph of the step holds their addresses); host ones swap.
      if (host_backend<BackendT> && n == state.batch()) {
        std::swap(state.kv[l], kv_out[l]);
        std::swap(state.scale[l], sc_out[l]);
      } else {
        copy_elements(be_, state.kv[l].data() + first_row * kv_row, kv_out[l].data(), n * kv_row);
        copy_elements(be_, state.scale[l].data() + first_row * H, sc_out[l].data(), n * H);
      }
    }
    for (int64_t b = first_row; b < first_row + n; ++b) state.positions[static_cast<size_t>(b)] += Tn;
    state.ws_->starts_dev_.copy_from_host(state.positions.data() + first_row, n, first_row);
    copy_elements(be_, state.logits() + first_row * V, ws.logits_, n * V);
  }

  // Clears rows [first_row, first_row + n) of `state`: zero retention state at position 0 (a new sequence).
  void reset_rows(State& state, int64_t first_row, int64_t n) const {
    check_state("Model::reset_rows", state, state.batch());
    require(first_row >= 0 && n >= 0 && first_row + n <= state.batch(), "Model::reset_rows: rows [", first_row, ", ",
            first_row + n, ") lie outside the state's batch of ", state.batch());
    const int64_t H = cfg_.decoder_retention_heads, kv_row = H * cfg_.key_dim() * cfg_.value_dim();
    for (size_t l = 0; l < state.kv.size(); ++l) {
      be_.zero(state.kv[l].data() + first_row * kv_row, sizeof(state_type) * static_cast<size_t>(n * kv_row));
      be_.zero(state.scale[l].data() + first_row * H, sizeof(state_type) * static_cast<size_t>(n * H));
    }
    for (int64_t b = first_row; b < first_row + n; ++b) state.positions[static_cast<size_t>(b)] = 0;
    sync_positions(state);
  }

  // Copies state.positions to state.device_positions(): needed after editing `positions` by hand before a step
  // that takes its ids in backend memory (the other calls keep both in step).
  void sync_positions(State& state) const {
    check_state("Model::sync_positions", state, state.batch());
    state.ws_->starts_dev_.copy_from_host(state.positions.data(), state.batch());
  }

  // One token per row (ids in host memory, checked): logits [B, V] copied to the host (they also stay in
  // state.logits()); O(1) work and memory per token.
  Tensor<T> step(HostView<const int64_t> tokens, State& state) {
    require(tokens.rank() == 1, "Model::step: tokens has shape ", tokens.shape().to_string(), ", expected [batch]");
    const int64_t B = tokens.size(0);
    check_state("Model::step", state, B);
    (void)use_bf16("Model::step");
    validate_tokens("Model::forward", tokens.data(), B, 1, cfg_.vocab_size);
    state.ws_->tokens_dev_.copy_from_host(tokens.data(), B);
    sync_positions(state);
    step_enqueue(state);
    for (auto& p : state.positions) p += 1;
    return logits_to_host(state);
  }

  // One token per row with ids already in backend memory (for instance written by a GPU sampler), which are not
  // checked (an id outside [0, vocab) would read outside the embedding); the logits stay in state.logits().
  void step(TensorView<const int64_t, space> tokens, State& state) requires(!host_backend<BackendT>) {
    require(tokens.rank() == 1, "Model::step: tokens has shape ", tokens.shape().to_string(), ", expected [batch]");
    const int64_t B = tokens.size(0);
    check_state("Model::step", state, B);
    if (tokens.data() != state.tokens()) copy_elements(be_, state.tokens(), tokens.data(), B);
    step_enqueue(state);
    for (auto& p : state.positions) p += 1;
  }

  // Enqueues one decoding step of every row on the backend: reads the ids in state.tokens() and the positions in
  // state.device_positions(), updates the state, writes state.logits() and advances state.device_positions() by
  // one. It does no host work that a CUDA graph could not hold: it neither checks the ids nor advances
  // state.positions (the caller does).
  void step_enqueue(State& state) {
    check_state("Model::step", state, state.batch());
    const bool bf16 = use_bf16("Model::step");
    Workspace& ws = *state.ws_;
    const int64_t B = state.batch();
    if constexpr (host_backend<BackendT>) {
      ws.starts_.assign(ws.starts_dev_.data(), ws.starts_dev_.data() + B);
      prepare_rotation(ws);
    } else {
      step_rotation_rows(be_, ws.rot_sin_.data(), ws.rot_cos_.data(), ws.starts_dev_.data(), B, cfg_.key_dim(),
                         rotation_style());
    }
    std::vector<StatePtrs<state_type>> in;
    for (size_t l = 0; l < state.kv.size(); ++l) in.push_back({state.kv[l].data(), state.scale[l].data()});
    run_forward(ws, ws.tokens_dev_.data(), Form::recurrent, in, {}, false, /*step=*/true, bf16);
    if constexpr (host_backend<BackendT>) {
      for (int64_t b = 0; b < B; ++b) ws.starts_dev_.data()[b] += 1;
    } else {
      advance_positions(be_, ws.starts_dev_.data(), B, 1);
    }
  }

  // The last logits of every row [B, V], copied to the host.
  Tensor<T> logits_to_host(const State& state) const {
    require(state.logits() != nullptr, "Model::logits_to_host: the state was not made by make_state");
    Tensor<T> out({state.batch(), cfg_.vocab_size});
    be_.copy_to_host(out.data(), state.logits(), sizeof(T) * static_cast<size_t>(out.numel()));
    return out;
  }

  // Pointers for a gradient buffer laid out like params().
  BlockWeights<T> weights(int64_t l) const {
    const LayerOffsets& o = layers_[static_cast<size_t>(l)];
    const T* P = params_.data();
    auto at = [&](int64_t off) { return off < 0 ? nullptr : P + off; };
    BlockWeights<T> w{{at(o.rn_w), at(o.rn_b)},
                      {at(o.q), at(o.k), at(o.v), at(o.g), at(o.out)},
                      {at(o.fn_w), at(o.fn_b)},
                      {at(o.fc1), at(o.gate), at(o.fc2)}};
    w.msr.gn = at(o.gn);
    return w;
  }

 private:
  static RetentionConfig init_rc(const ModelConfig& c) {
    c.validate();
    return c.retention_config();
  }
  int64_t head_offset() const { return head_ < 0 ? embed_ : head_; }
  RotationStyle rotation_style() const {
    return cfg_.rotation == "rope" ? RotationStyle::rope : RotationStyle::torchscale;
  }
  NormWeights<T> norm_w(int64_t w, int64_t b) const {
    return {w < 0 ? nullptr : params_.data() + w, b < 0 ? nullptr : params_.data() + b};
  }
  static NormGrads<grad_type> norm_g(grad_type* g, int64_t w, int64_t b) {
    return {w < 0 ? nullptr : g + w, b < 0 ? nullptr : g + b};
  }
  BlockGrads<grad_type> grads_of(grad_type* grads, int64_t l) const {
    const LayerOffsets& o = layers_[static_cast<size_t>(l)];
    auto at = [&](int64_t off) { return off < 0 ? nullptr : grads + off; };
    BlockGrads<grad_type> g{{at(o.rn_w), at(o.rn_b)},
                            {at(o.q), at(o.k), at(o.v), at(o.g), at(o.out)},
                            {at(o.fn_w), at(o.fn_b)},
                            {at(o.fc1), at(o.gate), at(o.fc2)}};
    g.msr.gn = at(o.gn);
    return g;
  }
  MsrDims dims(int64_t B, int64_t Tn) const {
    return MsrDims{
        B, Tn, cfg_.decoder_embed_dim, cfg_.decoder_retention_heads, cfg_.key_dim(), cfg_.value_dim(), cfg_.kv_heads()};
  }
  void set_norms_to_one() {
    for (const ParamInfo& p : table_.entries())
      if (p.shape.rank() == 1 && p.name.size() > 7 && p.name.compare(p.name.size() - 7, 7, ".weight") == 0) {
        const std::vector<T> ones(static_cast<size_t>(p.numel()), static_cast<T>(scalar_type(1)));
        params_.copy_from_host(ones.data(), p.numel(), p.offset);
      }
  }
  StateTensor state_tensor(Shape shape) const {
    if constexpr (host_backend<BackendT>)
      return StateTensor(shape);
    else
      return StateTensor(be_, shape);
  }
  void check_state(const char* op, const State& s, int64_t B) const {
    require(s.ws_ != nullptr, op, ": the state was not made by make_state");
    require(static_cast<int64_t>(s.kv.size()) == cfg_.decoder_layers &&
                static_cast<int64_t>(s.scale.size()) == cfg_.decoder_layers,
            op, ": state has ", s.kv.size(), " layers, the model ", cfg_.decoder_layers);
    require(s.batch() == B, op, ": state is for batch ", s.batch(), ", tokens have batch ", B);
    const Shape kv{B, cfg_.decoder_retention_heads, cfg_.key_dim(), cfg_.value_dim()};
    for (size_t l = 0; l < s.kv.size(); ++l) {
      require(s.kv[l].shape() == kv, op, ": state kv of layer ", l, " has shape ", s.kv[l].shape().to_string(),
              ", expected ", kv.to_string());
      require(s.scale[l].shape() == Shape{B, cfg_.decoder_retention_heads}, op, ": state scale of layer ", l,
              " has shape ", s.scale[l].shape().to_string());
    }
    for (size_t b = 0; b < s.positions.size(); ++b)
      require(s.positions[b] >= 0, op, ": state position of row ", b, " is negative (", s.positions[b], ")");
  }
  // Points the workspace's saved masks at fresh masks for `key`, or at none (evaluation).
  void set_masks(Workspace& ws, const DropoutKey* key) const {
    const int64_t L = cfg_.decoder_layers;
    ws.emb_mask_ = nullptr;
    for (auto& s : ws.layers_) s.ret_mask = s.ffn_mask = s.ffn.act_mask = nullptr;
    if (!key) return;
    const int64_t B = ws.batch_, Tn = ws.length_, d = cfg_.decoder_embed_dim, F = cfg_.decoder_ffn_embed_dim;
    const int64_t* starts = ws.starts_dev_.data();
    auto fill = [&](T* mask, int64_t l, DropoutSite site, double p, double p_path, int64_t width) {
      fill_dropout_mask(be_, mask, DropoutMaskParams(*key, l, site, p, p_path), B, Tn, width, starts);
    };
    ws.emb_mask_ = ws.emb_mask_store_;
    if (ws.emb_mask_) fill(ws.emb_mask_, 0, DropoutSite::embedding, cfg_.dropout, 0.0, d);
    for (int64_t l = 0; l < L; ++l) {
      const auto& m = ws.mask_store_[static_cast<size_t>(l)];
      BlockSaved<T>& s = ws.layers_[static_cast<size_t>(l)];
      const double path = drop_path_rate_of(cfg_.drop_path_rate, l, L);
      s.ret_mask = m.ret, s.ffn_mask = m.ffn, s.ffn.act_mask = m.act;
      if (m.ret) fill(m.ret, l, DropoutSite::retention, cfg_.dropout, path, d);
      if (m.ffn) fill(m.ffn, l, DropoutSite::ffn_output, cfg_.dropout, path, d);
      if (m.act) fill(m.act, l, DropoutSite::ffn_activation, cfg_.activation_dropout, 0.0, F);
    }
  }
  // Rotation rows for every (row, position); one shared range when all rows start together.
  void prepare_rotation(Workspace& ws) const {
    const int64_t B = ws.batch_, Tn = ws.length_, dk = cfg_.key_dim();
    const auto& st = ws.starts_;
    const bool same = std::all_of(st.begin(), st.end(), [&](int64_t s) { return s == st[0]; });
    ws.row_off_.assign(static_cast<size_t>(B), 0);
    if (same) {
      if (!ws.rot_ || ws.rot_->start != st[0] || ws.rot_->count != Tn) {
        ws.rot_ = std::make_unique<RotationTable<scalar_type>>(dk, st[0], Tn, rotation_style());
        bind_rotation(ws);
      }
      return;
    }
    auto tab = std::make_unique<RotationTable<scalar_type>>(dk, 0, 0);
    tab->count = B * Tn;
    tab->start = -1;  // marks a per-row table
    for (int64_t b = 0; b < B; ++b) {
      RotationTable<scalar_type> r(dk, st[static_cast<size_t>(b)], Tn, rotation_style());
      tab->sin.insert(tab->sin.end(), r.sin.begin(), r.sin.end());
      tab->cos.insert(tab->cos.end(), r.cos.begin(), r.cos.end());
      ws.row_off_[static_cast<size_t>(b)] = b * Tn;
    }
    ws.rot_ = std::move(tab);
    bind_rotation(ws);
  }
  // Points the layers at the workspace's rotation table and row offsets, in backend memory.
  void bind_rotation(Workspace& ws) const {
    const int64_t B = ws.batch_;
    ws.row_off_dev_.copy_from_host(ws.row_off_.data(), B);
    if constexpr (host_backend<BackendT>) {
      ws.rot_rows_ = {ws.rot_->sin.data(), ws.rot_->cos.data(), ws.row_off_dev_.data()};
    } else {
      const int64_t n = static_cast<int64_t>(ws.rot_->sin.size());
      if (ws.rot_sin_.size() < n) {
        ws.rot_sin_ = Buffer<scalar_type, BackendT>(be_, n);
        ws.rot_cos_ = Buffer<scalar_type, BackendT>(be_, n);
      }
      ws.rot_sin_.copy_from_host(ws.rot_->sin.data(), n);
      ws.rot_cos_.copy_from_host(ws.rot_->cos.data(), n);
      ws.rot_rows_ = {ws.rot_sin_.data(), ws.rot_cos_.data(), ws.row_off_dev_.data()};
    }
  }

  ModelConfig cfg_;
  RetentionConfig rc_;
  ParamTable table_;
  BackendT be_;
  Buffer<T, BackendT> params_;
  std::vector<LayerOffsets> layers_;
  int64_t embed_ = -1, head_ = -1, emb_norm_w_ = -1, emb_norm_b_ = -1, final_w_ = -1, final_b_ = -1;
  BlockSpec spec_{RetentionConfig(RetentionOptions{}), {}, 0, Activation::gelu, 0};
  WeightPrecision precision_ = WeightPrecision::float32;
  std::vector<uint16_t> bf16_;  // bf16 copy of params_ (same offsets) while precision_ is bf16
  uint64_t params_version_ = 0, bf16_version_ = 0;
};

}  // namespace retnet
