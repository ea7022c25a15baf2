#pragma once
// ParamTable: the one description of a model's parameters as (name, shape, offset) into a flat buffer.
// The same table drives the layers (which carve their matrices out of the buffer), checkpoint I/O with
// torchscale's names, the optimizer (which walks the flat buffer) and any all-reduce of the gradients.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "retnet/core/error.hpp"
#include "retnet/core/tensor.hpp"

namespace retnet {

struct ParamInfo {
  std::string name;  // torchscale name, e.g. "layers.0.retention.q_proj.weight"
  Shape shape;       // PyTorch's shape, e.g. Linear weights [out, in]
  int64_t offset;    // element offset into the flat buffer
  int64_t numel() const { return shape.numel(); }
};

class ParamTable {
 public:
  // Appends a tensor; offsets are aligned to 16 elements so every matrix starts on a 64-byte boundary in float.
  const ParamInfo& add(std::string name, Shape shape) {
    require(!index_.count(name), "ParamTable: parameter '", name, "' added twice");
    for (int i = 0; i < shape.rank(); ++i)
      require(shape[i] > 0, "ParamTable: parameter '", name, "' has non-positive size in ", shape);
    const int64_t offset = (total_ + 15) / 16 * 16;
    entries_.push_back({std::move(name), shape, offset});
    index_[entries_.back().name] = entries_.size() - 1;
    total_ = offset + shape.numel();
    return entries_.back();
  }

  const std::vector<ParamInfo>& entries() const { return entries_; }
  int64_t total() const { return total_; }  // elements the flat buffer needs
  const ParamInfo* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &entries_[it->second];
  }
  const ParamInfo& at(const std::string& name) const {
    const ParamInfo* p = find(name);
    require(p != nullptr, "ParamTable: no parameter named '", name, "'");
    return *p;
  }

 private:
  std::vector<ParamInfo> entries_;
  std::unordered_map<std::string, size_t> index_;
  int64_t total_ = 0;
};

}  // namespace retnet
