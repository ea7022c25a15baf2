#pragma once
// train_lm's training loop, written once over the backend: instantiated for retnet::Cpu in train_lm.cpp and for
// retnet::Cuda in train_lm_cuda.cu. Data parallel over a communicator (MPI under mpirun, else this process
// alone): each rank trains on its rows of every global batch; rank 0 alone prints, evaluates, samples and writes
// files. Includes no CPU op headers (the CUDA translation unit includes this); host-only work goes through
// train_support.hpp.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "memory_check.hpp"
#include "retnet/core/backend.hpp"
#include "retnet/core/error.hpp"
#include "retnet/dist/checkpoint.hpp"
#include "retnet/dist/communicator.hpp"
#include "retnet/io/config_json.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/nn/model.hpp"
#include "retnet/train/checkpoint.hpp"
#include "retnet/train/trainer.hpp"
#include "train_options.hpp"
#include "train_support.hpp"

namespace retnet_examples::train_lm {

// Runs f on every rank, then makes its outcome collective: when f threw on any rank, every rank throws the same
// retnet::Error (the message of the lowest failing rank), so one rank's bad file or full disk ends the job
// cleanly instead of leaving the others in their next collective. f must not call collectives itself.
template <class F>
void agree(retnet::dist::Communicator& comm, F&& f) {
  if (comm.size() == 1) return f();  // the exception as it is (out of memory keeps its own report)
  std::string error;
  try {
    f();
  } catch (const std::bad_alloc&) {
    error = "out of memory (the sizes asked for do not fit this machine)";
  } catch (const std::exception& e) {
    error = e.what();
    if (error.empty()) error = "unknown error";
  }
  const std::vector<int64_t> failed = comm.gather_values(std::vector<int64_t>{error.empty() ? 0 : 1});
  const auto first = std::find(failed.begin(), failed.end(), int64_t{1});
  if (first == failed.end()) return;
  const int rank = static_cast<int>(first - failed.begin());
  const std::string msg = retnet::dist::detail::broadcast_string(comm, error, rank);
  throw retnet::Error(rank == 0 ? msg : "rank " + std::to_string(rank) + ": " + msg);
}

// Runs f; with several ranks an exception ends the whole job with its message (a failure inside the training
// loop may leave the other ranks in a collective).
template <class F>
void abort_on_error(retnet::dist::Communicator& comm, F&& f) {
  if (comm.size() == 1) return f();
  try {
    f();
  } catch (const std::exception& e) {
    comm.abort(std::string("train_lm: error: ") + e.what(), 1);
  }
}

inline retnet::Form parse_form(const std::string& s) {
  if (s == "parallel") return retnet::Form::parallel;
  if (s == "recurrent") return retnet::Form::recurrent;
  return retnet::Form::chunkwise;
}

inline retnet::ModelConfig model_config(const Options& o) {
  retnet::ModelConfig cfg;
  cfg.vocab_size = 256;
  cfg.decoder_embed_dim = o.dim;
  cfg.decoder_retention_heads = o.heads;
  cfg.decoder_value_embed_dim = o.value_dim;
  cfg.decoder_ffn_embed_dim = o.ffn;
  cfg.decoder_layers = o.layers;
  cfg.recurrent_chunk_size = o.chunk;
  cfg.activation_fn = "swish";
  cfg.dropout = o.dropout;
  return cfg;
}

// Trains on `text` (bytes as ids; its last tenth, at least seq + 2 bytes, is held out) with the given backend.
// `device` names it in the first line of output. Returns the exit status.
// T: the storage type of parameters and activations (float, or bf16 on the GPU).
template <class T, class BackendT>
int train(const Options& o, const std::vector<int64_t>& text, const BackendT& backend, retnet::dist::Communicator& comm,
          const std::string& device) {
  using namespace retnet;
  using ModelT = Model<T, BackendT>;
  using TrainerT = Trainer<T, BackendT>;
  const bool root = dist::is_root(comm);
  const int64_t n = static_cast<int64_t>(text.size());
  const int64_t train_end = n - std::max<int64_t>(n / 10, o.seq + 2);
  const dist::RowRange rows = dist::shard_rows(o.batch, comm);
  const std::string ckpt = o.out + "/checkpoint.safetensors", best_path = o.out + "/best.safetensors",
                    csv_path = o.out + "/loss.csv";

  // ---- output directory: rank 0 locks it before anything in it is read or written
  agree(comm, [&] {
    if (!root) return;
    lock_output_dir(o.out);
    if (const int stale = remove_stale_temporaries(o.out))
      std::printf("removed %d temporary file(s) an interrupted run left in %s\n", stale, o.out.c_str());
  });

  // ---- model: the checkpoint's configuration wins on --resume
  ModelConfig cfg = model_config(o);
  const std::string resume_path = o.resume.empty() ? ckpt : o.resume;
  if (o.do_resume) cfg = dist::read_checkpoint_info(comm, resume_path).config;
  agree(comm, [&] {
    require(cfg.vocab_size == 256, resume_path, ": vocab_size ", cfg.vocab_size,
            " is not a byte-level model (train_lm trains vocab_size 256)");
    io::check_config_limits(cfg, "model");
    cfg.validate();
    const std::string what =
        "this run (model, batch " + std::to_string(rows.count) + " x seq " + std::to_string(o.seq) + ", data)";
    if constexpr (host_backend<BackendT>) {
      require_memory(estimate_memory(o, cfg, rows.count, n), what);
    } else {
      require_device_memory(estimate_memory(o, cfg, rows.count, 0), what);
      // host: the text, and the parameters and moments staged for checkpoints and the sample
      require_memory(4.0 * 4.0 * static_cast<double>(io::estimated_parameter_count(cfg)) + 9.0 * static_cast<double>(n),
                     "this run's host side (data, checkpoint staging)");
    }
  });
  TrainerConfig tc;
  tc.adamw.lr = o.lr;
  tc.adamw.weight_decay = o.weight_decay;
  tc.schedule = LrSchedule{o.warmup, o.steps, lr_decay_from_string(o.decay), 0.1};
  tc.grad_clip = o.clip;
  tc.accumulation_steps = o.accum;
  tc.form = parse_form(o.form);
  tc.segment_length = o.segment;
  tc.dropout_seed = o.seed;
  tc.dist.comm = &comm;
  // ZeRO-1 needs a communicator that takes the buffers of the backend (a device run alone has none).
  tc.dist.zero_stage = host_backend<BackendT> || comm.device_buffers() ? static_cast<int>(o.zero) : 0;
  tc.dist.bucket_bytes = std::max<int64_t>(1, static_cast<int64_t>(o.bucket_mb * 1048576.0));
  std::unique_ptr<ModelT> model;
  std::unique_ptr<TrainerT> trainer;
  agree(comm, [&] {
    model = std::make_unique<ModelT>(cfg, backend);
    model->init_torchscale(o.seed);
    trainer = std::make_unique<TrainerT>(*model, tc);
    if (root) io::save_config(cfg, o.out + "/config.json");
  });

  int64_t start = 0;
  if (o.do_resume) {
    start = dist::load_checkpoint(resume_path, *trainer).step;
    if (root) std::printf("resumed from %s at step %lld\n", resume_path.c_str(), static_cast<long long>(start));
  }
  // The best checkpoint so far (a resumed run continues the comparison); rank 0 decides when to replace it.
  double best_val = INFINITY;
  int64_t best_step = 0;
  if (root && o.do_resume && std::filesystem::exists(best_path)) {
    try {
      const auto bf = io::SafetensorsFile::open(best_path);
      best_val = std::stod(bf.metadata().at("val_loss"));
      best_step = std::stoll(bf.metadata().at("step"));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "train_lm: warning: ignoring %s (%s); it will be replaced\n", best_path.c_str(), e.what());
    }
  }
  if (root && start >= o.steps)
    std::printf("train_lm: the checkpoint is at step %lld and --steps is %lld: nothing left to train\n",
                static_cast<long long>(start), static_cast<long long>(o.steps));
  const int64_t params = model->param_table().total();
  if (root) {
    const std::string ranks =
        comm.size() > 1 ? ", " + std::to_string(comm.size()) + " ranks" + (o.zero ? " (ZeRO-1)" : "") : "";
    std::printf(
        "train_lm: %lld bytes of text (%s), model %lld parameters (d %lld, %lld layers, %lld heads), "
        "batch %lld x %lld, %lld steps, form %s%s, on %s%s\n",
        static_cast<long long>(n), o.data.empty() ? "embedded corpus" : o.data.c_str(), static_cast<long long>(params),
        static_cast<long long>(cfg.decoder_embed_dim), static_cast<long long>(cfg.decoder_layers),
        static_cast<long long>(cfg.decoder_retention_heads), static_cast<long long>(o.batch),
        static_cast<long long>(o.seq), static_cast<long long>(o.steps), o.form.c_str(),
        cfg.dropout > 0 ? (", dropout " + std::to_string(cfg.dropout)).c_str() : "", device.c_str(), ranks.c_str());
    std::fflush(stdout);
  }

  // held-out loss on fixed windows (rank 0)
  auto eval = [&]() {
    const int64_t len = o.seq, B = std::min<int64_t>(8, (n - train_end - 1) / len);
    if (B <= 0) return std::nan("");
    std::vector<int64_t> x(static_cast<size_t>(B * len)), y(x.size());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < len; ++t) {
        x[static_cast<size_t>(b * len + t)] = text[static_cast<size_t>(train_end + b * len + t)];
        y[static_cast<size_t>(b * len + t)] = text[static_cast<size_t>(train_end + b * len + t + 1)];
      }
    const Tensor<T> lg = model->forward(HostView<const int64_t>(x.data(), {B, len}), tc.form);
    const std::vector<float> logits(lg.storage().begin(), lg.storage().end());
    return mean_cross_entropy(logits.data(), y.data(), B * len, 256);
  };

  std::FILE* csv = nullptr;
  agree(comm, [&] {
    if (!root) return;
    if (start > 0) trim_loss_csv(csv_path, start);
    csv = std::fopen(csv_path.c_str(), start > 0 ? "ab" : "wb");
    require(csv != nullptr, csv_path, ": cannot open for writing: ", std::strerror(errno));
    if (start == 0) std::fputs("step,loss,val_loss,lr,grad_norm,tokens_per_s,elapsed_s\n", csv);
  });
  // Rows reach the disk before the checkpoint that covers them, so a resumed run finds them all.
  auto sync_csv = [&] {
    if (!csv) return;
    require(std::fflush(csv) == 0, csv_path, ": write failed: ", std::strerror(errno));
    ::fsync(::fileno(csv));
  };
  double ema = 0, first_loss = 0;
  abort_on_error(comm, [&] {
    const bool tty = root && isatty(1);
    std::vector<int64_t> x, y;
    const auto t0 = std::chrono::steady_clock::now();
    int64_t tokens = 0;
    for (int64_t s = start; s < o.steps; ++s) {
      make_batch(text, train_end, o.seed, s, o.batch, o.seq, rows, x, y);
      const StepStats st = trainer->step(HostView<const int64_t>(x.data(), {rows.count, o.seq}),
                                         HostView<const int64_t>(y.data(), {rows.count, o.seq}));
      tokens += st.tokens;  // global
      ema = s == start ? st.loss : 0.9 * ema + 0.1 * st.loss;
      if (s == start) first_loss = st.loss;
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double tps = el > 0 ? static_cast<double>(tokens) / el : 0.0;
      const double eta = el / static_cast<double>(s + 1 - start) * static_cast<double>(o.steps - s - 1);
      const bool last = s + 1 == o.steps;
      const bool evaluate = (o.eval_every > 0 && (s + 1) % o.eval_every == 0) || last;
      double val = std::nan("");
      if (evaluate && root) val = eval();
      // the best checkpoint is written by every rank (collective): rank 0's decision goes to all
      int64_t save_best = root && !std::isnan(val) && val < best_val ? 1 : 0;
      if (evaluate && comm.size() > 1) comm.broadcast(&save_best, 1);
      if (root) {
        std::fprintf(csv, "%lld,%.9g,%s,%g,%.9g,%g,%g\n", static_cast<long long>(s + 1), st.loss,
                     std::isnan(val) ? "" : std::to_string(val).c_str(), st.lr, st.grad_norm, tps, el);
        if (tty) {
          const int width = 30, done = static_cast<int>(width * (s + 1) / o.steps);
          std::printf("\r[%s%s] step %lld/%lld  loss %.3f  %.0f tok/s  ETA %s ", std::string(done, '#').c_str(),
                      std::string(width - done, '.').c_str(), static_cast<long long>(s + 1),
                      static_cast<long long>(o.steps), ema, tps, fmt_time(eta).c_str());
          std::fflush(stdout);
        }
        if (!std::isnan(val) || (!tty && (s + 1) % 25 == 0)) {
          if (tty) std::printf("\n");
          std::printf("step %5lld/%lld  loss %.4f%s  lr %.2e  |g| %.2f  %.0f tok/s  elapsed %s  ETA %s\n",
                      static_cast<long long>(s + 1), static_cast<long long>(o.steps), ema,
                      std::isnan(val) ? "" : ("  val " + std::to_string(val)).c_str(), st.lr, st.grad_norm, tps,
                      fmt_time(el).c_str(), fmt_time(eta).c_str());
          std::fflush(stdout);
        }
      }
      const int64_t position = (s + 1) * o.batch * o.seq;
      if (save_best) {
        if (root) best_val = val, best_step = s + 1;
        dist::save_checkpoint(best_path, *trainer, position, {{"val_loss", std::to_string(val)}});
      }
      if ((o.ckpt_every > 0 && (s + 1) % o.ckpt_every == 0) || last) {
        if (root) sync_csv();
        dist::save_checkpoint(ckpt, *trainer, position);
      }
    }
    if (root) {
      sync_csv();
      std::fclose(csv);
      csv = nullptr;
    }
  });
  if (!root) return 0;
  if (o.steps > start)
    std::printf("\nloss %.3f -> %.3f over steps %lld..%lld; checkpoint %s\n", first_loss, ema,
                static_cast<long long>(start + 1), static_cast<long long>(o.steps), ckpt.c_str());
  if (best_step > 0)
    std::printf("best held-out loss %.4f at step %lld: %s\n", best_val, static_cast<long long>(best_step),
                best_path.c_str());
  if (plot_loss(o.out)) std::printf("loss curve: %s/loss.png\n", o.out.c_str());
  // ---- sample: recurrent decoding on the CPU, from a host copy of the parameters
  if (o.max_new > 0) {
    const std::vector<T> stored = model->params_to_host();
    const std::string sample = sample_text(cfg, std::vector<float>(stored.begin(), stored.end()), o);
    std::printf("\n--- sample (temperature %.2f) ---\n%s\n---\n", o.temperature, sample.c_str());
  }
  return 0;
}

}  // namespace retnet_examples::train_lm
