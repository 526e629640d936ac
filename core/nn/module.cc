#include "core/nn/module.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/allocator.h"
#include "core/random.h"

namespace tessera::nn {

Init Init::KaimingUniformA5(int64_t fan_in) {
  // gain = sqrt(2 / (1 + 5)), bound = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in).
  double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  return Uniform(-bound, bound);
}

std::string Module::Summary(int indent) const {
  std::ostringstream os;
  os << Describe();
  if (!children_.empty()) {
    os << " (\n";
    for (auto& [name, c] : children_)
      os << std::string(indent + 2, ' ') << "(" << name << "): " << c->Summary(indent + 2) << "\n";
    os << std::string(indent, ' ') << ")";
  }
  return os.str();
}

void Module::SetTraining(bool training) {
  training_ = training;
  OnTrainingChanged();
  for (auto& c : children_) c.second->SetTraining(training);
}

std::vector<std::pair<std::string, Parameter*>> Module::NamedParameters() {
  std::vector<std::pair<std::string, Parameter*>> out;
  CollectParameters("", out);
  return out;
}

void Module::CollectParameters(const std::string& prefix,
                               std::vector<std::pair<std::string, Parameter*>>& out) {
  for (auto& p : params_) out.emplace_back(prefix + p->name, p.get());
  for (auto& [name, c] : children_) c->CollectParameters(prefix + name + ".", out);
}

std::vector<std::pair<std::string, Module*>> Module::NamedChildren() {
  std::vector<std::pair<std::string, Module*>> out;
  for (auto& [name, c] : children_) out.emplace_back(name, c.get());
  return out;
}

std::vector<Parameter*> Module::SharedParameters() {
  std::vector<Parameter*> out;
  for (auto& c : children_)
    for (Parameter* p : c.second->SharedParameters()) out.push_back(p);
  return out;
}

int64_t Module::NumParameters() {
  int64_t n = 0;
  for (auto& [name, p] : NamedParameters()) n += NumElements(p->shape);
  return n;
}

void Module::SetSeed(uint64_t seed) {
  OnSeed(seed);
  for (size_t i = 0; i < children_.size(); ++i)
    children_[i].second->SetSeed(seed * 0x9E3779B97F4A7C15ull + i + 1);
}

void Module::SetBatchPosition(uint64_t first_example) {
  OnBatchPosition(first_example);
  for (auto& c : children_) c.second->SetBatchPosition(first_example);
}

Parameter& Module::AddParameter(const std::string& name, Shape shape, Init init, DType dtype) {
  for (auto& p : params_)
    if (p->name == name) TESSERA_THROW(Error, type_name_, ": parameter '", name, "' declared twice");
  auto p = std::make_unique<Parameter>();
  p->name = name;
  p->shape = std::move(shape);
  p->init = init;
  p->dtype = dtype;
  params_.push_back(std::move(p));
  return *params_.back();
}

Module& Module::AddChild(const std::string& name, std::unique_ptr<Module> child) {
  if (!child) TESSERA_THROW(Error, type_name_, ": child '", name, "' is null");
  for (auto& c : children_)
    if (c.first == name) TESSERA_THROW(Error, type_name_, ": child '", name, "' added twice");
  children_.emplace_back(name, std::move(child));
  return *children_.back().second;
}

std::unique_ptr<Module> Module::ReplaceChild(size_t i, std::unique_ptr<Module> child) {
  if (!child || i >= children_.size()) TESSERA_THROW(Error, type_name_, ": no child ", i, " to replace");
  std::swap(children_[i].second, child);
  return child;
}

void Module::RequireMaterialized(const Parameter& p) const {
  if (!p.value.defined())
    TESSERA_THROW(Error, Describe(), ": parameter '", p.name,
                  "' has no storage; lay the model out with nn::FlatParameters before Forward()");
}

void Module::RequireSaved(const Tensor& saved) const {
  if (!saved.defined())
    TESSERA_THROW(Error, Describe(), ": Backward() called without a training-mode Forward() first");
}

Tensor Sequential::Forward(const Tensor& x) {
  Tensor h = x;
  for (size_t i = 0; i < num_children(); ++i) {
    Notify(i, ChildEvent::kBeforeForward);
    h = child(i).Forward(h);
    Notify(i, ChildEvent::kAfterForward);
  }
  return h;
}

size_t Sequential::FirstChildBackwardRuns() { return needs_input_grad() ? 0 : FirstChildWithParameters(); }

size_t Sequential::FirstChildWithParameters() {
  for (size_t i = 0; i < num_children(); ++i)
    if (!child(i).NamedParameters().empty()) return i;
  return num_children();
}

Tensor Sequential::Backward(const Tensor& dy) {
  size_t stop = FirstChildBackwardRuns();
  Tensor g = dy;
  for (size_t i = num_children(); i-- > stop;) {
    Notify(i, ChildEvent::kBeforeBackward);
    g = child(i).Backward(g);
    Notify(i, ChildEvent::kAfterBackward);
  }
  return needs_input_grad() ? g : Tensor();
}

void Sequential::set_needs_input_grad(bool needs) {
  Module::set_needs_input_grad(needs);
  size_t first = FirstChildWithParameters();
  for (size_t i = 0; i < num_children() && i <= first; ++i) child(i).set_needs_input_grad(needs);
}

void AllocateParameters(Module& m) {
  for (auto& [name, p] : m.NamedParameters()) {
    p->value = Tensor::Zeros(p->shape, p->dtype);
    p->offset = 0;
  }
}

void DrawInitialValues(const Init& init, uint64_t seed, size_t index, Tensor& out) {
  constexpr int64_t kChunk = 1 << 16;
  std::vector<double> chunk;
  PhiloxGenerator gen(seed, /*stream=*/index + 1);
  const int64_t numel = out.numel();
  Tensor flat = out.Reshape({numel});
  for (int64_t lo = 0; lo < numel; lo += kChunk) {
    const int64_t n = std::min(kChunk, numel - lo);
    chunk.resize(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) {
      switch (init.kind) {
        case Init::kZeros:
          chunk[j] = 0;
          break;
        case Init::kOnes:
          chunk[j] = 1;
          break;
        case Init::kUniform:
          chunk[j] = gen.Uniform(init.a, init.b);
          break;
        case Init::kNormal:
          chunk[j] = init.a + init.b * gen.Normal();
          break;
      }
    }
    flat.Slice0(lo, lo + n).CopyFrom(Tensor::FromVector(chunk, {n}, out.dtype()));
  }
}

FlatParameters::FlatParameters(Module& model, Device device, DType dtype, uint64_t seed,
                               int64_t size_multiple)
    : model_(model) {
  if (!IsFloating(dtype))
    TESSERA_THROW(ValueError, "FlatParameters: parameters must be floating point, got ", DTypeName(dtype));
  if (size_multiple < 1)
    TESSERA_THROW(ValueError, "FlatParameters: size_multiple must be >= 1, got ", size_multiple);
  auto named = model.NamedParameters();
  int64_t offset = 0;
  for (auto& [name, p] : named) {
    if (p->value.defined())
      TESSERA_THROW(Error, "FlatParameters: parameter '", name, "' is already laid out");
    if (p->dtype != DType::kF32)
      TESSERA_THROW(ValueError, "FlatParameters: parameter '", name, "' is ", DTypeName(p->dtype),
                    ": a quantised layer is for inference only, and cannot be trained");
    int64_t n = NumElements(p->shape);
    entries_.push_back({name, p, offset, n});
    num_params_ += n;
    offset += (n + kAlignment - 1) / kAlignment * kAlignment;
  }
  offset = (offset + size_multiple - 1) / size_multiple * size_multiple;
  // Initial values are drawn on the host in double a chunk at a time, cast into a host buffer of
  // `dtype` (no double copy of the whole model: that alone would be 8 bytes a parameter).
  Tensor staged = Tensor::Zeros({offset}, dtype);
  for (size_t i = 0; i < entries_.size(); ++i) {
    Tensor view = staged.Slice0(entries_[i].offset, entries_[i].offset + entries_[i].numel);
    DrawInitialValues(entries_[i].param->init, seed, i, view);
  }
  values_ = device.is_cpu() ? staged : staged.To(device);
  if (device.is_cpu()) {  // zeros that take no memory until written (a ZeRO-2 rank never writes most)
    grads_ = Tensor::Empty({offset}, dtype, device);
    ZeroAndReleasePages(grads_.raw_data(), grads_.nbytes());
  } else {
    grads_ = Tensor::Zeros({offset}, dtype, device);
  }
  for (Entry& e : entries_) {
    e.param->value = values_.View(e.offset, e.param->shape);
    e.param->grad = grads_.View(e.offset, e.param->shape);
    e.param->offset = e.offset;
    e.param->grad_ready_hook = &hook_;
  }
  model.SetSeed(seed);
}

FlatParameters::~FlatParameters() {
  for (Entry& e : entries_) {
    e.param->value = Tensor();
    e.param->grad = Tensor();
    e.param->offset = -1;
    e.param->grad_ready_hook = nullptr;
  }
}

const FlatParameters::Entry& FlatParameters::Find(const std::string& name) const {
  for (const Entry& e : entries_)
    if (e.name == name) return e;
  TESSERA_THROW(Error, "no parameter named '", name, "' in this model");
}

}  // namespace tessera::nn
