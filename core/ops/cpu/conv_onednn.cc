// Conv2d on the CPU through oneDNN (f32), when tessera is built with TESSERA_USE_ONEDNN.
//
// oneDNN's JIT kernels use the widest vector unit of the machine (AVX-512 where present) and
// blocked memory layouts (nChw16c). Tensors stay NCHW / KCRS at tessera's interface: each call
// reorders into the layouts oneDNN picked and back. Primitives and their layouts are created
// once per shape and cached. Weight and bias gradients are accumulated into dw / db as the op
// contract requires (oneDNN writes them, so they go through a scratch buffer).
#include "tessera/config.h"

#if TESSERA_USE_ONEDNN

#include <omp.h>

#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>

#include "core/ops/cpu/cpu_kernels.h"
#include "core/ops/cpu/onednn_common.h"
#include "core/threads.h"

namespace tessera::cpu {
namespace {

using dnnl::memory;
using Dims = memory::dims;
using Tag = memory::format_tag;
using onednn::Engine;
using onednn::Into;
using onednn::Scratch;
using onednn::SetThreads;
constexpr memory::data_type kF32 = memory::data_type::f32;

struct ConvPrimitives {
  memory::desc x_md, w_md, b_md, y_md;  // user layouts: NCHW, KCRS, K, NKPQ
  dnnl::convolution_forward::primitive_desc fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights;
  dnnl::convolution_forward fwd_prim;
  dnnl::convolution_backward_data bwd_data_prim;
  dnnl::convolution_backward_weights bwd_weights_prim;
};

using Key = std::tuple<Shape, Shape, int, int, int, int>;

ConvPrimitives& Primitives(const Shape& xs, const Shape& ws, const Conv2dParams& p) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<ConvPrimitives>> cache;
  std::lock_guard<std::mutex> lock(mu);
  Key key{xs, ws, p.stride_h, p.stride_w, p.pad_h, p.pad_w};
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;

  int64_t n = xs[0], c = xs[1], h = xs[2], w = xs[3], k = ws[0], r = ws[2], s = ws[3];
  int64_t oh = (h + 2 * p.pad_h - r) / p.stride_h + 1, ow = (w + 2 * p.pad_w - s) / p.stride_w + 1;
  Dims strides{p.stride_h, p.stride_w}, pad_l{p.pad_h, p.pad_w};
  // Right/bottom padding that makes exactly oh x ow outputs.
  Dims pad_r{(oh - 1) * p.stride_h + r - h - p.pad_h, (ow - 1) * p.stride_w + s - w - p.pad_w};
  auto c_ = std::make_unique<ConvPrimitives>();
  c_->x_md = memory::desc({n, c, h, w}, kF32, Tag::nchw);
  c_->w_md = memory::desc({k, c, r, s}, kF32, Tag::oihw);
  c_->b_md = memory::desc({k}, kF32, Tag::x);
  c_->y_md = memory::desc({n, k, oh, ow}, kF32, Tag::nchw);
  memory::desc x_any({n, c, h, w}, kF32, Tag::any), w_any({k, c, r, s}, kF32, Tag::any),
      y_any({n, k, oh, ow}, kF32, Tag::any);
  auto alg = dnnl::algorithm::convolution_direct;
  c_->fwd = dnnl::convolution_forward::primitive_desc(
      dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, alg, x_any, w_any, c_->b_md, y_any,
                                      strides, pad_l, pad_r),
      Engine());
  c_->bwd_data = dnnl::convolution_backward_data::primitive_desc(
      dnnl::convolution_backward_data::desc(alg, x_any, w_any, y_any, strides, pad_l, pad_r), Engine(), c_->fwd);
  c_->bwd_weights = dnnl::convolution_backward_weights::primitive_desc(
      dnnl::convolution_backward_weights::desc(alg, x_any, w_any, c_->b_md, y_any, strides, pad_l, pad_r),
      Engine(), c_->fwd);
  c_->fwd_prim = dnnl::convolution_forward(c_->fwd);
  c_->bwd_data_prim = dnnl::convolution_backward_data(c_->bwd_data);
  c_->bwd_weights_prim = dnnl::convolution_backward_weights(c_->bwd_weights);
  return *cache.emplace(key, std::move(c_)).first->second;
}

memory Wrap(const memory::desc& md, const Tensor& t) { return onednn::Wrap(md, t.raw_data()); }

}  // namespace

namespace onednn {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

void SetThreads() { omp_set_num_threads(GetNumThreads()); }

memory Into(memory user, const memory::desc& want, dnnl::stream& st) {
  if (user.get_desc() == want) return user;
  memory m(want, Engine());
  dnnl::reorder(user, m).execute(st, user, m);
  return m;
}

memory Scratch(const memory& user, const memory::desc& have) {
  return user.get_desc() == have ? user : memory(have, Engine());
}

}  // namespace onednn

bool OneDnnConv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Tensor& y) {
  if (x.dtype() != DType::kF32 || x.numel() == 0 || y.numel() == 0) return false;
  SetThreads();
  ConvPrimitives& c = Primitives(x.shape(), w.shape(), p);
  dnnl::stream st(Engine());
  memory xm = Into(Wrap(c.x_md, x), c.fwd.src_desc(), st);
  memory wm = Into(Wrap(c.w_md, w), c.fwd.weights_desc(), st);
  Tensor zero_bias;
  if (!bias.defined()) zero_bias = Tensor::Zeros({w.dim(0)});
  memory bm = Wrap(c.b_md, bias.defined() ? bias : zero_bias);
  memory y_user = Wrap(c.y_md, y);
  memory ym = Scratch(y_user, c.fwd.dst_desc());
  c.fwd_prim.execute(st, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, ym}});
  if (ym.get_data_handle() != y_user.get_data_handle()) dnnl::reorder(ym, y_user).execute(st, ym, y_user);
  st.wait();
  return true;
}

bool OneDnnConv2dBackward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv2dParams& p, Tensor& dx,
                          Tensor& dw, Tensor& db) {
  if (x.dtype() != DType::kF32 || x.numel() == 0 || dy.numel() == 0) return false;
  SetThreads();
  ConvPrimitives& c = Primitives(x.shape(), w.shape(), p);
  dnnl::stream st(Engine());
  // Gradients w.r.t. the weights (and bias), into scratch, then added to dw and db.
  memory dym_w = Into(Wrap(c.y_md, dy), c.bwd_weights.diff_dst_desc(), st);
  memory xm = Into(Wrap(c.x_md, x), c.bwd_weights.src_desc(), st);
  Tensor dw_new = Tensor::Empty(w.shape()), db_new = Tensor::Empty({w.dim(0)});
  memory dw_user = Wrap(c.w_md, dw_new);
  memory dwm = Scratch(dw_user, c.bwd_weights.diff_weights_desc());
  memory dbm = Wrap(c.b_md, db_new);
  c.bwd_weights_prim.execute(st, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, dym_w}, {DNNL_ARG_DIFF_WEIGHTS, dwm},
                                  {DNNL_ARG_DIFF_BIAS, dbm}});
  if (dwm.get_data_handle() != dw_user.get_data_handle()) dnnl::reorder(dwm, dw_user).execute(st, dwm, dw_user);
  if (dx.defined()) {
    memory dym_d = c.bwd_data.diff_dst_desc() == c.bwd_weights.diff_dst_desc()
                       ? dym_w
                       : Into(Wrap(c.y_md, dy), c.bwd_data.diff_dst_desc(), st);
    memory wm = Into(Wrap(c.w_md, w), c.bwd_data.weights_desc(), st);
    memory dx_user = Wrap(c.x_md, dx);
    memory dxm = Scratch(dx_user, c.bwd_data.diff_src_desc());
    c.bwd_data_prim.execute(st, {{DNNL_ARG_DIFF_DST, dym_d}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_SRC, dxm}});
    if (dxm.get_data_handle() != dx_user.get_data_handle()) dnnl::reorder(dxm, dx_user).execute(st, dxm, dx_user);
  }
  st.wait();
  Axpby(1.0, dw_new, 1.0, dw);
  if (db.defined()) Axpby(1.0, db_new, 1.0, db);
  return true;
}

}  // namespace tessera::cpu

#endif  // TESSERA_USE_ONEDNN
