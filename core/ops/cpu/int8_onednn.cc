// int8 Linear and Conv2d through oneDNN (v2 API): s8 activations and weights, f32 results with
// one output scale per channel. oneDNN 2.6 has int8 convolutions only for scales fixed when the
// primitive is made, so each layer keeps its own primitives (WeightCache), by input shape, and its
// weights in the layouts they want; all go when the layer goes. A primitive that cannot be made on
// this machine is remembered, and the call is left to the reference loops. Bias is added afterwards in f32
// (oneDNN 2.x would add it before the output scale).
#include "tessera/config.h"

#if TESSERA_USE_ONEDNN

#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#include <vector>

#include "core/ops/cpu/cpu_kernels.h"
#include "core/ops/cpu/onednn_common.h"
#include "core/ops/ops.h"

namespace tessera::cpu {

namespace {

using Key = std::tuple<char, Shape, Shape, int, int, int, int, std::vector<float>>;
struct Int8Primitive;

}  // namespace

struct int8::WeightCache::Entries {
  std::map<Key, std::unique_ptr<Int8Primitive>> primitives;  // by input shape (and scales)
  std::vector<std::pair<dnnl::memory::desc, dnnl::memory>> prepared;  // layout -> the weights in it
};

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
  memory::desc x_md, w_md, y_md;        // tessera's plain layouts
  memory::desc x_want, w_want, y_want;  // the primitive's
  dnnl::primitive prim;
};

dnnl::primitive_attr ScaleAttr(const std::vector<float>& scales) {
  dnnl::primitive_attr attr;
  attr.set_output_scales(kPerChannel, scales);
  return attr;
}

// The layouts `pd` picked, and its primitive.
template <typename Primitive>
void Adopt(Int8Primitive& p, const typename Primitive::primitive_desc& pd) {
  p.x_want = pd.src_desc();
  p.w_want = pd.weights_desc();
  p.y_want = pd.dst_desc();
  p.prim = Primitive(pd);
}

// The primitive for `key`: the layer's (made now and kept, when it has no such one yet), or, for a
// call without a cache, one made now into `scratch`.
template <typename Make>
Int8Primitive& Cached(int8::WeightCache* cache, std::unique_ptr<Int8Primitive>& scratch, const Key& key, Make make) {
  if (cache) {
    if (!cache->entries()) cache->entries() = std::make_shared<int8::WeightCache::Entries>();
    auto it = cache->entries()->primitives.find(key);
    if (it != cache->entries()->primitives.end()) return *it->second;
  }
  auto p = std::make_unique<Int8Primitive>();
  try {
    make(*p, std::get<7>(key));
    p->ok = true;
  } catch (const dnnl::error&) {
    p->ok = false;
  }
  if (!cache) return *(scratch = std::move(p));
  return *cache->entries()->primitives.emplace(key, std::move(p)).first->second;
}

// The weights in the primitive's layout: `w` itself, the cache's copy, or a copy made now (kept in
// the cache when there is one).
memory Weights(const Int8Primitive& p, const void* w, int8::WeightCache* cache, dnnl::stream& st) {
  memory user = Wrap(p.w_md, w);
  if (p.w_md == p.w_want || cache == nullptr) return Into(user, p.w_want, st);
  auto& entries = cache->entries();  // made by Cached()
  for (auto& [desc, m] : entries->prepared)
    if (desc == p.w_want) return m;
  memory m = Into(user, p.w_want, st);
  entries->prepared.emplace_back(p.w_want, m);
  return m;
}

void Run(Int8Primitive& p, const void* x, const void* w, float* y, int8::WeightCache* cache) {
  onednn::SetThreads();
  dnnl::stream st(Engine());
  memory xm = Into(Wrap(p.x_md, x), p.x_want, st);
  memory wm = Weights(p, w, cache, st);
  memory y_user = Wrap(p.y_md, y);
  memory ym = Scratch(y_user, p.y_want);
  p.prim.execute(st, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}});
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
    float scale[2] = {1, 1}, y[2], z[4];
    Conv2dParams p;  // a 1x1 convolution of a 1x2 image with 4 channels: [1, 4, 1, 2] -> [1, 2, 1, 2]
    const int8_t img[8] = {1, 1, 2, 2, 3, 3, 4, 4};
    return OneDnnInt8Linear(x, 1, 4, w, 2, scale, nullptr, y, nullptr) && y[0] == 10.0f && y[1] == 20.0f &&
           OneDnnInt8Conv2d(img, {1, 4, 1, 2}, w, {2, 4, 1, 1}, p, scale, nullptr, z, nullptr) && z[0] == 10.0f &&
           z[1] == 10.0f;
  }();
  return available;
}

bool OneDnnInt8Linear(const int8_t* x, int64_t m, int64_t c, const int8_t* w, int64_t k, const float* scale,
                      const float* bias, float* y, int8::WeightCache* cache) {
  if (m == 0 || k == 0) return false;
  Key key{'l', {m, c}, {k, c}, 0, 0, 0, 0, std::vector<float>(scale, scale + k)};
  std::unique_ptr<Int8Primitive> scratch;
  Int8Primitive& p = Cached(cache, scratch, key, [&](Int8Primitive& p, const std::vector<float>& scales) {
    p.x_md = memory::desc({m, c}, kS8, Tag::nc);
    p.w_md = memory::desc({k, c}, kS8, Tag::oi);
    p.y_md = memory::desc({m, k}, kF32, Tag::nc);
    dnnl::inner_product_forward::primitive_desc pd(
        dnnl::inner_product_forward::desc(dnnl::prop_kind::forward_inference, memory::desc({m, c}, kS8, Tag::any),
                                          memory::desc({k, c}, kS8, Tag::any), memory::desc({m, k}, kF32, Tag::any)),
        ScaleAttr(scales), Engine());
    Adopt<dnnl::inner_product_forward>(p, pd);
  });
  if (!p.ok) return false;
  Run(p, x, w, y, cache);
  AddBias(y, m, k, 1, bias);
  return true;
}

bool OneDnnInt8Conv2d(const int8_t* x, const Shape& xs, const int8_t* w, const Shape& ws, const Conv2dParams& cp,
                      const float* scale, const float* bias, float* y, int8::WeightCache* cache) {
  const Shape ys = ops::Conv2dOutputShape(xs, ws, cp);
  if (NumElements(xs) == 0 || NumElements(ys) == 0) return false;
  Key key{'c', xs, ws, cp.stride_h, cp.stride_w, cp.pad_h, cp.pad_w, std::vector<float>(scale, scale + ws[0])};
  std::unique_ptr<Int8Primitive> scratch;
  Int8Primitive& p = Cached(cache, scratch, key, [&](Int8Primitive& p, const std::vector<float>& scales) {
    const int64_t h = xs[2], wd = xs[3], r = ws[2], s = ws[3], oh = ys[2], ow = ys[3];
    memory::dims xd(xs.begin(), xs.end()), wdims(ws.begin(), ws.end()), yd(ys.begin(), ys.end());
    memory::dims strides{cp.stride_h, cp.stride_w}, pad_l{cp.pad_h, cp.pad_w};
    memory::dims pad_r{(oh - 1) * cp.stride_h + r - h - cp.pad_h, (ow - 1) * cp.stride_w + s - wd - cp.pad_w};
    p.x_md = memory::desc(xd, kS8, Tag::nchw);
    p.w_md = memory::desc(wdims, kS8, Tag::oihw);
    p.y_md = memory::desc(yd, kF32, Tag::nchw);
    dnnl::convolution_forward::primitive_desc pd(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                        memory::desc(xd, kS8, Tag::any), memory::desc(wdims, kS8, Tag::any),
                                        memory::desc(yd, kF32, Tag::any), strides, pad_l, pad_r),
        ScaleAttr(scales), Engine());
    Adopt<dnnl::convolution_forward>(p, pd);
  });
  if (!p.ok) return false;
  Run(p, x, w, y, cache);
  AddBias(y, ys[0], ys[1], ys[2] * ys[3], bias);
  return true;
}

}  // namespace tessera::cpu

#endif  // TESSERA_USE_ONEDNN
