// Choice of implementation for the CUDA conv2d kernels: cuDNN when it is compiled in
// (TESSERA_USE_CUDNN), else tessera's im2col + cuBLAS path. Tests switch to the fallback to check
// it against the CPU too. Thread-safe (an atomic flag read at each call).
#pragma once

namespace tessera::cuda {

// Asks for cuDNN (true, the default) or the im2col path (false). Without cuDNN compiled in, the
// im2col path is always used.
void SetConvUseCudnn(bool use);
// Whether the next conv2d call uses cuDNN.
bool ConvUsesCudnn();

}  // namespace tessera::cuda
