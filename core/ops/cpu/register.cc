#include "core/ops/cpu/cpu_kernels.h"

namespace tessera {

void RegisterCpuOps(OpKernels& t) {
  using namespace cpu;
  t.fill = &Fill;
  t.copy = &Copy;
  t.cast = &Cast;
  t.gemm = &Gemm;
  t.unary = &Unary;
  t.unary_backward = &UnaryBackward;
  t.binary = &Binary;
  t.axpby = &Axpby;
  t.add_bias = &AddBias;
  t.add_channel_bias = &AddChannelBias;
  t.sum_rows = &SumRows;
  t.sum_channels = &SumChannels;
  t.reduce = &Reduce;
  t.sum_squares = &SumSquares;
  t.softmax = &Softmax;
  t.softmax_backward = &SoftmaxBackward;
  t.layernorm = &LayerNorm;
  t.layernorm_backward = &LayerNormBackward;
  t.causal_attention = &CausalAttention;
  t.causal_attention_backward = &CausalAttentionBackward;
  t.embedding = &Embedding;
  t.embedding_backward = &EmbeddingBackward;
  t.dropout = &Dropout;
  t.conv2d = &Conv2d;
  t.conv2d_backward = &Conv2dBackward;
  t.maxpool2d = &MaxPool2d;
  t.maxpool2d_backward = &MaxPool2dBackward;
  t.cross_entropy = &CrossEntropy;
  t.cross_entropy_backward = &CrossEntropyBackward;
  t.sgd_step = &SgdStep;
  t.adam_step = &AdamStep;
  t.rmsprop_step = &RmspropStep;
  t.synchronize = [](Device) {};
}

}  // namespace tessera
