// Job specs (jobs/spec.cc): the protobuf text parser, --set overrides and every validation rule.
// The input is the spec text, then optionally a NUL byte and one --set assignment per line.
#include <sstream>

#include "core/error.h"
#include "jobs/spec.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string text = input.substr(0, nul);
  std::vector<std::string> overrides;
  if (nul != std::string::npos) {
    std::istringstream lines(input.substr(nul + 1));
    for (std::string line; std::getline(lines, line);) overrides.push_back(line);
  }
  const std::string path = fuzz::WriteInput(reinterpret_cast<const uint8_t*>(text.data()), text.size(), "job.pbtxt");
  try {
    jobs::JobSpec spec = jobs::LoadJobSpec(path, overrides, /*check_files=*/false);
    (void)jobs::ToText(spec);
  } catch (const Error&) {
  }
  return 0;
}
