// A tiny model to publish in tests of the store and the server: an MLP 4-3-2 whose tensors are
// filled from a seed.
#pragma once

#include <string>
#include <vector>

#include "store/store.h"

namespace tessera::store {

// The tensors of an MLP 4-3-2, filled from `seed`, and a publish request for them.
struct Mlp {
  std::vector<float> w, b, w2, b2;
  PublishRequest Request(const std::string& model, float seed) {
    PublishRequest r;
    r.model = model;
    w.assign(12, 0);
    b.assign(3, 0);
    w2.assign(6, 0);
    b2.assign(2, 0);
    for (size_t i = 0; i < w.size(); ++i) w[i] = seed + 0.01f * static_cast<float>(i);
    for (size_t i = 0; i < w2.size(); ++i) w2[i] = -seed + 0.02f * static_cast<float>(i);
    r.weights = {{"1.weight", {3, 4}, DType::kF32, w.data()},
                 {"1.bias", {3}, DType::kF32, b.data()},
                 {"3.weight", {2, 3}, DType::kF32, w2.data()},
                 {"3.bias", {2}, DType::kF32, b2.data()}};
    models::MlpSpec* mlp = r.architecture.mutable_model()->mutable_mlp();
    mlp->set_in_features(4);
    mlp->add_hidden(3);
    mlp->set_out_features(2);
    r.architecture.add_input_shape(4);
    r.architecture.set_classes(2);
    r.metrics["test_accuracy"] = 0.5 + seed / 100;
    r.lineage.set_job_name("unit");
    r.lineage.set_step(static_cast<int64_t>(seed));
    r.weights_meta.step = static_cast<int64_t>(seed);
    return r;
  }
};

}  // namespace tessera::store
