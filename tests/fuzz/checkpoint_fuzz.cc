// Checkpoints (jobs/checkpoint/): the root attributes, the manifest, every tensor's layout and
// CRC, and the model export, on a hostile file.
#include "core/error.h"
#include "jobs/checkpoint.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  const std::string path = fuzz::WriteInput(data, size, "checkpoint.h5");
  try {
    jobs::CheckpointInfo info = jobs::ReadCheckpointInfo(path);
    (void)jobs::DescribeCheckpoint(info);
    jobs::ExportModel(path, fuzz::ScratchDir() + "/exported.h5");
  } catch (const Error&) {
  }
  return 0;
}
