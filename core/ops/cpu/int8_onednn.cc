// int8 Linear and Conv2d through oneDNN (v2 API): s8 activations and weights, f32 results with
// one output scale per channel given at run time, so one primitive serves every layer of a shape.
// Primitives are created once per shape and cached; a shape whose primitive cannot be created on
// this machine is remembered and left to the reference loops. Bias is added afterwards in f32
// (oneDNN 2.x would add it before the output scale).
#include "tessera/config.h"

#if TESSERA_USE_ONEDNN

#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>

#include "core/ops/cpu/cpu_kernels.h"
#include "core/ops/cpu/onednn_common.h"
#include "core/ops/ops.h"

namespace tessera::cpu {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using onednn::Engine;
using onednn::Into;
using onednn::Scratch;
using onednn::Wrap;
constexpr memory::data_type kS8 = memory::data_type::s8;
constexpr memory::data_type kF32 = memory::data_type::f32;
constexpr int kPerChannel = 1 << 1;  // output scales vary along dim 1 (channels) of dst

struct Int8Primitive {
  bool ok = false;  // false: this machine's oneDNN has no such primitive
  memory::desc x_md, w_md, y_md, scale_md;  // tessera's plain layouts
  memory::desc x_want, w_want, y_want;      // the primitive's
  dnnl::primitive prim;
};

dnnl::primitive_attr ScaleAttr() {
  dnnl::primitive_attr attr;
  attr.set_output_scales(kPerChannel, {DNNL_RUNTIME_F32_VAL});
  return attr;
}

using Key = std::tuple<char, Shape, Shape, int, int, int, int>;

template <typename Make>
Int8Primitive& Cached(const Key& key, Make make) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Int8Primitive>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  auto p = std::make_unique<Int8Primitive>();
  try {
    make(*p);
    p->ok = true;
  } catch (const dnnl::error&) {
    p->ok = false;
  }
  return *cache.emplace(key, std::move(p)).first->second;
}

void Run(Int8Primitive& p, const void* x, const void* w, const float* scale, float* y) {
  onednn::SetThreads();
  dnnl::stream st(Engine());
  memory xm = Into(Wrap(p.x_md, x), p.x_want, st);
  memory wm = Into(Wrap(p.w_md, w), p.w_want, st);
  memory y_user = Wrap(p.y_md, y);
  memory ym = Scratch(y_user, p.y_want);
  memory sm = Wrap(p.scale_md, scale);
  p.prim.execute(st, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym},
                      {DNNL_ARG_ATTR_OUTPUT_SCALES, sm}});
  if (ym.get_data_handle() != y_user.get_data_handle()) dnnl::reorder(ym, y_user).execute(st, ym, y_user);
  st.wait();
}

void AddBias(float* y, int64_t outer, int64_t k, int64_t inner, const float* bias) {
  if (!bias) return;
  for (int64_t b = 0; b < outer; ++b)
    for (int64_t o = 0; o < k; ++o) {
      float* row = y + (b * k + o) * inner;
      for (int64_t i = 0; i < inner; ++i) row[i] += bias[o];
    }
}

}  // namespace

bool OneDnnInt8Available() {
  static const bool available = [] {
    int8_t x[4] = {1, 2, 3, 4}, w[8] = {1, 1, 1, 1, 2, 2, 2, 2};
    float scale[2] = {1, 1}, y[2];
    return OneDnnInt8Linear(x, 1, 4, w, 2, scale, nullptr, y) && y[0] == 10.0f && y[1] == 20.0f;
  }();
  return available;
}

bool OneDnnInt8Linear(const int8_t* x, int64_t m, int64_t c, const int8_t* w, int64_t k, const float* scale,
                      const float* bias, float* y) {
  if (m == 0 || k == 0) return false;
  Int8Primitive& p = Cached({'l', {m, c}, {k, c}, 0, 0, 0, 0}, [&](Int8Primitive& p) {
    p.x_md = memory::desc({m, c}, kS8, Tag::nc);
    p.w_md = memory::desc({k, c}, kS8, Tag::oi);
    p.y_md = memory::desc({m, k}, kF32, Tag::nc);
    p.scale_md = memory::desc({k}, kF32, Tag::x);
    dnnl::inner_product_forward::primitive_desc pd(
        dnnl::inner_product_forward::desc(dnnl::prop_kind::forward_inference, memory::desc({m, c}, kS8, Tag::any),
                                          memory::desc({k, c}, kS8, Tag::any), memory::desc({m, k}, kF32, Tag::any)),
        ScaleAttr(), Engine());
    p.x_want = pd.src_desc();
    p.w_want = pd.weights_desc();
    p.y_want = pd.dst_desc();
    p.prim = dnnl::inner_product_forward(pd);
  });
  if (!p.ok) return false;
  Run(p, x, w, scale, y);
  AddBias(y, m, k, 1, bias);
  return true;
}

bool OneDnnInt8Conv2d(const int8_t* x, const Shape& xs, const int8_t* w, const Shape& ws, const Conv2dParams& cp,
                      const float* scale, const float* bias, float* y) {
  const Shape ys = ops::Conv2dOutputShape(xs, ws, cp);
  if (NumElements(xs) == 0 || NumElements(ys) == 0) return false;
  Int8Primitive& p = Cached({'c', xs, ws, cp.stride_h, cp.stride_w, cp.pad_h, cp.pad_w}, [&](Int8Primitive& p) {
    const int64_t h = xs[2], wd = xs[3], r = ws[2], s = ws[3], oh = ys[2], ow = ys[3];
    memory::dims xd(xs.begin(), xs.end()), wdims(ws.begin(), ws.end()), yd(ys.begin(), ys.end());
    memory::dims strides{cp.stride_h, cp.stride_w}, pad_l{cp.pad_h, cp.pad_w};
    memory::dims pad_r{(oh - 1) * cp.stride_h + r - h - cp.pad_h, (ow - 1) * cp.stride_w + s - wd - cp.pad_w};
    p.x_md = memory::desc(xd, kS8, Tag::nchw);
    p.w_md = memory::desc(wdims, kS8, Tag::oihw);
    p.y_md = memory::desc(yd, kF32, Tag::nchw);
    p.scale_md = memory::desc({ws[0]}, kF32, Tag::x);
    dnnl::convolution_forward::primitive_desc pd(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                        memory::desc(xd, kS8, Tag::any), memory::desc(wdims, kS8, Tag::any),
                                        memory::desc(yd, kF32, Tag::any), strides, pad_l, pad_r),
        ScaleAttr(), Engine());
    p.x_want = pd.src_desc();
    p.w_want = pd.weights_desc();
    p.y_want = pd.dst_desc();
    p.prim = dnnl::convolution_forward(pd);
  });
  if (!p.ok) return false;
  Run(p, x, w, scale, y);
  AddBias(y, ys[0], ys[1], ys[2] * ys[3], bias);
  return true;
}

}  // namespace tessera::cpu

#endif  // TESSERA_USE_ONEDNN
