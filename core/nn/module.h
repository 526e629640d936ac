// Modules: layers with an explicit forward and backward.
//
// Each layer computes its own backward from what its forward saved (no tape). A container's
// backward runs its children in reverse; a layer's parameter gradients are final as soon as its
// own backward returns, and it then calls NotifyGradReady() for each parameter. FlatParameters
// forwards that to a hook, which is where the data-parallel reducer starts all-reducing a bucket
// while the rest of backward still runs.
//
// Gradients accumulate: Backward() adds into each parameter's grad, so micro-batches sum until
// FlatParameters::ZeroGrad(). Forward() in training mode saves what Backward() needs; calling
// Backward() without a preceding training-mode Forward() throws.
//
// Parameters are declared (name, shape, initialiser) by a layer's constructor but hold no memory
// until FlatParameters lays them all out in one contiguous buffer; until then Forward() throws.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace tessera::nn {

// How a parameter is initialised (PyTorch's defaults for each layer).
struct Init {
  enum Kind { kZeros, kOnes, kUniform, kNormal } kind = kZeros;
  double a = 0, b = 0;  // uniform: [a, b); normal: mean a, stddev b
  static Init Zeros() { return {kZeros}; }
  static Init Ones() { return {kOnes}; }
  static Init Uniform(double lo, double hi) { return {kUniform, lo, hi}; }
  static Init Normal(double mean, double std) { return {kNormal, mean, std}; }
  // kaiming_uniform_(a=sqrt(5)) as nn.Linear and nn.Conv2d use it: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  static Init KaimingUniformA5(int64_t fan_in);
};

struct Parameter {
  std::string name;  // local name inside its module ("weight"); FlatParameters knows full paths
  Shape shape;
  Init init;
  // f32 for every trainable parameter; i8 for a quantised layer's weight (core/nn/quantized.h),
  // which only inference lays out (FlatParameters refuses it).
  DType dtype = DType::kF32;
  Tensor value;         // a view into the flat value buffer once laid out
  Tensor grad;          // a view into the flat gradient buffer
  int64_t offset = -1;  // element offset of value/grad within the flat buffers
  const std::function<void(Parameter&)>* grad_ready_hook = nullptr;
};

class Module {
 public:
  explicit Module(std::string type_name) : type_name_(std::move(type_name)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  virtual Tensor Forward(const Tensor& x) = 0;
  // Takes dL/dy, accumulates parameter gradients, returns dL/dx (undefined when the input needs
  // no gradient: see set_needs_input_grad).
  virtual Tensor Backward(const Tensor& dy) = 0;

  const std::string& type_name() const { return type_name_; }
  // One line, PyTorch-style: "Linear(in=784, out=512, bias=true)".
  virtual std::string Describe() const { return type_name_; }
  // A multi-line tree of Describe() with child names.
  std::string Summary(int indent = 0) const;

  void SetTraining(bool training);
  bool training() const { return training_; }

  // When false, Backward() may skip computing dL/dx (the first layer of a network whose input
  // is data) and return an undefined tensor.
  virtual void set_needs_input_grad(bool needs) { needs_input_grad_ = needs; }
  bool needs_input_grad() const { return needs_input_grad_; }

  // Every parameter of this module and its descendants, depth-first in registration order, with
  // dotted paths ("0.weight", "layers.3.bias").
  std::vector<std::pair<std::string, Parameter*>> NamedParameters();
  std::vector<std::pair<std::string, Module*>> NamedChildren();
  int64_t NumParameters();
  // Parameters this module (or a descendant) computes with but does not own: another module's,
  // shared (GPT's output head reads the token embedding). Whatever gives parameters memory only
  // while their owner runs (ZeRO stage 3) must know.
  virtual std::vector<Parameter*> SharedParameters();

  // Seeds every random layer below (dropout) deterministically from one seed.
  void SetSeed(uint64_t seed);
  // Tells random layers which example the next Forward()'s first row is, counted over the whole
  // run (the trainer passes step * global batch + this rank's offset in it). Their randomness is
  // then a function of the example, not of the rank or the number of ranks.
  void SetBatchPosition(uint64_t first_example);

 protected:
  Parameter& AddParameter(const std::string& name, Shape shape, Init init, DType dtype = DType::kF32);
  Module& AddChild(const std::string& name, std::unique_ptr<Module> child);
  std::unique_ptr<Module> ReplaceChild(size_t i, std::unique_ptr<Module> child);
  size_t num_children() const { return children_.size(); }
  Module& child(size_t i) { return *children_[i].second; }
  // Called by a layer when p.grad is final for this backward pass.
  static void NotifyGradReady(Parameter& p) {
    if (p.grad_ready_hook && *p.grad_ready_hook) (*p.grad_ready_hook)(p);
  }
  // Throws unless p has been laid out in a flat buffer.
  void RequireMaterialized(const Parameter& p) const;
  // Throws unless `saved` (what a training-mode Forward() keeps for Backward()) is defined.
  void RequireSaved(const Tensor& saved) const;
  virtual void OnSeed(uint64_t seed) {}
  virtual void OnBatchPosition(uint64_t first_example) {}
  virtual void OnTrainingChanged() {}

 private:
  void CollectParameters(const std::string& prefix, std::vector<std::pair<std::string, Parameter*>>& out);
  std::string type_name_;
  bool training_ = true;
  bool needs_input_grad_ = true;
  std::vector<std::unique_ptr<Parameter>> params_;
  std::vector<std::pair<std::string, std::unique_ptr<Module>>> children_;
};

// Runs children in order; backward in reverse.
class Sequential : public Module {
 public:
  // Around each child's forward and backward, a hook may run (ZeRO-3 gathers a child's parameters
  // just before it runs and gives them back after).
  enum class ChildEvent { kBeforeForward, kAfterForward, kBeforeBackward, kAfterBackward };
  using ChildHook = std::function<void(size_t child, ChildEvent event)>;
  void SetChildHook(ChildHook hook) { child_hook_ = std::move(hook); }

  Sequential() : Module("Sequential") {}
  // Appends a layer named by its index ("0", "1", ...), or by `name`; returns it.
  template <typename M>
  M& Add(std::unique_ptr<M> layer) {
    return Add(std::to_string(num_children()), std::move(layer));
  }
  template <typename M>
  M& Add(const std::string& name, std::unique_ptr<M> layer) {
    M& ref = *layer;
    AddChild(name, std::move(layer));
    return ref;
  }
  size_t size() const { return num_children(); }
  Module& operator[](size_t i) { return child(i); }
  // Puts `layer` in place of child i (keeping its name) and returns the layer it replaces.
  std::unique_ptr<Module> Replace(size_t i, std::unique_ptr<Module> layer) {
    return ReplaceChild(i, std::move(layer));
  }
  Tensor Forward(const Tensor& x) override;
  // Without an input gradient, backward stops after the first child that has parameters: the
  // children before it (Flatten, say) have nothing to compute.
  Tensor Backward(const Tensor& dy) override;
  void set_needs_input_grad(bool needs) override;
  // The children Backward() runs (from the last down to this one).
  size_t FirstChildBackwardRuns();

 private:
  size_t FirstChildWithParameters();
  void Notify(size_t child, ChildEvent e) {
    if (child_hook_) child_hook_(child, e);
  }
  ChildHook child_hook_;
};

// The initial values of parameter number `index` (in NamedParameters() order) of a model seeded
// with `seed`, as FlatParameters draws them: its own Philox stream, so that a layer's values do not
// depend on the others, and a shard of a parameter (tensor parallelism) can be cut from them.
// `out`: a host tensor of the parameter's shape, of a floating dtype.
void DrawInitialValues(const Init& init, uint64_t seed, size_t index, Tensor& out);

// Gives every parameter of `m` a host tensor of its own, of the parameter's dtype, zeroed: for a
// network that is not trained (an int8 one, or one filled from a file), which needs no flat
// buffers and may hold parameters of several dtypes.
void AllocateParameters(Module& m);

// Lays out every parameter of a model in one contiguous value buffer and one gradient buffer of
// the same layout (compare PyTorch FSDP's FlatParameter, DeepSpeed's flattened groups). Each
// parameter starts at a multiple of kAlignment elements; the padding stays zero in both buffers,
// so any optimizer may run over the whole buffer or any contiguous slice of it.
//
// Parameters are laid out in NamedParameters() order: forward order for a Sequential, so the
// gradients become final from the end of the buffer towards the start.
class FlatParameters {
 public:
  static constexpr int64_t kAlignment = 16;

  struct Entry {
    std::string name;  // full dotted path
    Parameter* param;
    int64_t offset;  // in elements
    int64_t numel;
  };

  // Allocates the buffers on `device` in `dtype`, initialises every parameter from `seed` (each
  // parameter draws from its own Philox stream, so adding a layer does not change the others),
  // seeds the model's random layers, and zeroes the gradients. The model must outlive this.
  // `size_multiple`: numel() is padded up to a multiple of it (ZeRO shards the buffers into that
  // many equal parts).
  FlatParameters(Module& model, Device device = Device::CPU(), DType dtype = DType::kF32, uint64_t seed = 0,
                 int64_t size_multiple = 1);
  ~FlatParameters();
  FlatParameters(const FlatParameters&) = delete;
  FlatParameters& operator=(const FlatParameters&) = delete;

  const Tensor& values() const { return values_; }
  const Tensor& grads() const { return grads_; }
  Tensor& values() { return values_; }
  Tensor& grads() { return grads_; }
  int64_t numel() const { return values_.numel(); }       // padding included
  int64_t num_parameters() const { return num_params_; }  // padding excluded
  const std::vector<Entry>& entries() const { return entries_; }
  const Entry& Find(const std::string& name) const;  // throws Error naming the missing parameter

  void ZeroGrad() { grads_.Zero(); }
  // Runs hook(p) each time a layer finishes p's gradient during backward (on the calling thread).
  void SetGradReadyHook(std::function<void(Parameter&)> hook) { hook_ = std::move(hook); }

 private:
  Module& model_;
  Tensor values_, grads_;
  std::vector<Entry> entries_;
  int64_t num_params_ = 0;
  std::function<void(Parameter&)> hook_;
};

}  // namespace tessera::nn
