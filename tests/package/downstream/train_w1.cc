// Trains W1 (Fashion-MNIST, MLP 784-512-256-10, Adam) through tessera's C++ API, from a program
// built against the installed package:
//   train_w1 RUN_DIR [EPOCHS] [DATA_DIR]
// The spec starts from protobuf text, is changed through the generated protobuf API, validated,
// and run by the trainer; the summary is printed.
#include <cstdio>
#include <string>

#include "core/error.h"
#include "jobs/spec.h"
#include "jobs/trainer.h"

namespace {

constexpr const char* kW1 = R"pb(
  name: "w1-downstream"
  model { mlp { in_features: 784 hidden: 512 hidden: 256 out_features: 10 } }
  data { kind: IDX batch_size: 128 shuffle: true normalize { scale: 0.00392156862745098 } }
  optimizer { kind: ADAM lr: 0.001 }
  train { log_every_steps: 100 seed: 1 }
)pb";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s RUN_DIR [EPOCHS] [DATA_DIR]\n", argv[0]);
    return 2;
  }
  const std::string data = argc > 3 ? argv[3] : "/usr/share/datasets/fashion-mnist";
  try {
    tessera::jobs::JobSpec spec = tessera::jobs::ParseJobSpec(kW1, "train_w1.cc");
    spec.mutable_train()->set_epochs(argc > 2 ? std::stoi(argv[2]) : 1);
    spec.mutable_train()->set_threads(2);
    tessera::jobs::DataSpec* d = spec.mutable_data();
    d->set_train_images(data + "/train-images-idx3-ubyte.gz");
    d->set_train_labels(data + "/train-labels-idx1-ubyte.gz");
    d->set_test_images(data + "/t10k-images-idx3-ubyte.gz");
    d->set_test_labels(data + "/t10k-labels-idx1-ubyte.gz");
    tessera::jobs::ValidateJobSpec(spec, "train_w1");

    tessera::jobs::TrainerOptions options;
    options.run_dir = argv[1];
    options.progress = false;
    const tessera::jobs::TrainSummary s = tessera::jobs::Train(spec, options);
    std::printf("train_w1: %lld steps, test accuracy %.4f, test loss %.4f, %.0f samples/s\n",
                static_cast<long long>(s.steps), s.test_accuracy, s.test_loss, s.samples_per_sec);
    return 0;
  } catch (const tessera::Error& e) {
    std::fprintf(stderr, "train_w1: %s\n", e.what());
    return 1;
  }
}
