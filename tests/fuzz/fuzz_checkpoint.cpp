// libFuzzer target: the training-checkpoint reader (header, configuration metadata, then the tensors into a
// model and its optimizer). Accepted inputs load; everything else must be a retnet::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "retnet/io/config_json.hpp"
#include "retnet/retnet.hpp"
#include "retnet/train/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto f = retnet::io::SafetensorsFile::from_bytes(std::string(reinterpret_cast<const char*>(data), size));
    const retnet::TrainingCheckpointInfo info = retnet::read_training_checkpoint_info(f);
    // Building the model allocates it: only configurations whose tensors could fit the input are tried.
    if (retnet::io::estimated_parameter_count(info.config) > static_cast<int64_t>(size)) return 0;
    retnet::Model<float> model(info.config);
    retnet::Trainer<float> trainer(model, retnet::TrainerConfig{});
    retnet::load_training_checkpoint(f, trainer);
  } catch (const retnet::Error&) {
  }
  return 0;
}
