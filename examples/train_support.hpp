#pragma once
// What train_lm's training loop (train_loop.hpp, instantiated once per backend) calls but does not define: host-only
// helpers defined in train_lm.cpp (files, the loss of host logits, sampling with the CPU model) and the device
// queries defined in train_lm_cuda.cu. Plain declarations, so the CUDA translation unit sees no CPU op headers.
#include <cstdint>
#include <string>
#include <vector>

#include "retnet/dist/communicator.hpp"
#include "retnet/nn/config.hpp"
#include "train_options.hpp"

namespace retnet_examples::train_lm {

// Creates DIR (and its parents) and takes an exclusive lock on DIR/.lock for the rest of the process.
void lock_output_dir(const std::string& dir);
// Removes temporary files of interrupted writes (NAME.tmp.*) from DIR; returns how many.
int remove_stale_temporaries(const std::string& dir);
// loss.csv on resume: keeps the header and the complete rows of steps up to `upto`.
void trim_loss_csv(const std::string& path, int64_t upto);
// Plots DIR/loss.csv into DIR/loss.png with gnuplot when it is installed (no shell); true when written.
bool plot_loss(const std::string& dir);
// Rough memory need in bytes of the model, its training state and a step of `batch` rows (plus the text when
// data_bytes > 0).
double estimate_memory(const Options& o, const retnet::ModelConfig& c, int64_t batch, int64_t data_bytes);
// mm:ss
std::string fmt_time(double seconds);
// The batch of step s: B random windows of text[0, train_end), a pure function of (seed, s); only rows
// [rows.begin, rows.end()) are copied into x and y ([rows.count, T]).
void make_batch(const std::vector<int64_t>& text, int64_t train_end, uint64_t seed, int64_t step, int64_t B, int64_t T,
                retnet::dist::RowRange rows, std::vector<int64_t>& x, std::vector<int64_t>& y);
// Mean cross-entropy of host logits [n, vocab] against targets [n].
double mean_cross_entropy(const float* logits, const int64_t* targets, int64_t n, int64_t vocab);
// The sample at the end of a run: the prompt, then o.max_new bytes decoded recurrently by a CPU model holding
// `params`; control bytes and invalid UTF-8 shown as '?'.
std::string sample_text(const retnet::ModelConfig& cfg, const std::vector<float>& params, const Options& o);

// Defined in train_lm_cuda.cu (builds with CUDA only): trains on the current GPU.
int train_cuda(const Options& o, const std::vector<int64_t>& text, retnet::dist::Communicator& comm);
// Refuses a run whose estimated GPU memory exceeds what the current device has free.
void require_device_memory(double bytes, const std::string& what);

}  // namespace retnet_examples::train_lm
