// What tessera's oneDNN kernels share (f32 convolutions, int8 inference): the CPU engine, and
// moving memory between tessera's plain layouts and the ones a primitive picked.
#pragma once

#include "tessera/config.h"

#if TESSERA_USE_ONEDNN

#include <oneapi/dnnl/dnnl.hpp>

#include "core/tensor.h"

namespace tessera::cpu::onednn {

dnnl::engine& Engine();
// oneDNN's OpenMP pool sized to tessera's thread count (core/threads.h).
void SetThreads();
inline dnnl::memory Wrap(const dnnl::memory::desc& md, const void* data) {
  return dnnl::memory(md, Engine(), const_cast<void*>(data));
}
// `user` in the layout `want`: the same memory when the layouts agree, else a reordered copy.
dnnl::memory Into(dnnl::memory user, const dnnl::memory::desc& want, dnnl::stream& st);
// A buffer in layout `have` for a result wanted in `user`: `user` itself when they agree.
dnnl::memory Scratch(const dnnl::memory& user, const dnnl::memory::desc& have);

}  // namespace tessera::cpu::onednn

#endif  // TESSERA_USE_ONEDNN
