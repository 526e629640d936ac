// The checkpoint format: root attributes, their JSON twin in the manifest, reading them back with
// every type and range checked, and printing them (`tessera ckpt inspect`).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <sstream>

#include "core/io/checksum.h"
#include "core/io/hdf5.h"
#include "jobs/checkpoint/format.h"

namespace tessera::jobs {
namespace checkpoint_internal {

using io::Hdf5Handle;
#define H5C(call, where) TESSERA_H5_CHECK(IoError, call, where)

std::string StepName(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

int64_t ParseStepName(const std::string& name) {
  static const std::regex re("step-([0-9]{1,18})");
  std::smatch m;
  if (!std::regex_match(name, m, re)) return -1;
  return std::stoll(m[1].str());
}

void OwnedRange(int64_t n, int r, int w, int64_t* lo, int64_t* hi) {
  *lo = n * r / w;
  *hi = n * (r + 1) / w;
}

json MetaJson(const CheckpointMeta& m, const std::string& kind) {
  json j = io::CommonRootAttributes(kind == "checkpoint" ? io::kCheckpointFormat : io::kModelFormat, m.format_version,
                                    m.tessera_version, m.created, m.step, m.job_spec, m.dtype);
  if (kind == "checkpoint") {
    j["epoch"] = m.epoch;
    j["step_in_epoch"] = m.step_in_epoch;
    j["steps_per_epoch"] = m.steps_per_epoch;
    j["global_batch"] = m.global_batch;
    j["samples_seen"] = m.samples_seen;
    j["seed"] = m.seed;
    j["world_size"] = m.world_size;
    j["data_parallel"] = m.data_parallel;
    j["zero_stage"] = m.zero_stage;
    j["tensor_parallel"] = m.tensor_parallel;
    j["pipeline_parallel"] = m.pipeline_parallel;
    j["optimizer"] = m.optimizer;
    j["optimizer_step"] = m.optimizer_step;
    j["lr_schedule"] = m.lr_schedule;
    j["lr"] = m.lr;
  }
  return j;
}

namespace {
constexpr int64_t kMaxWorld = 1 << 20;
}

CheckpointInfo ReadInfoLocked(hid_t file, const std::string& path, io::Manifest* manifest) {
  CheckpointInfo info;
  info.path = path;
  CheckpointMeta& m = info.meta;
  m.format_version = io::ReadFormatVersion(file, path);
  const bool vlen = io::AllowsVlenStrings(m.format_version);  // legacy files only
  std::string format = io::ReadFormat(file, m.format_version, path);
  if (format == io::kCheckpointFormat) info.kind = "checkpoint";
  else if (format == io::kModelFormat) info.kind = "model";
  else TESSERA_THROW(CheckpointFormatError, path, ": not a tessera checkpoint (format is '", format.substr(0, 100), "')");
  m.tessera_version = io::HasAttr(file, "tessera_version", path) ? io::ReadStringAttr(file, "tessera_version", path, vlen) : "?";
  m.created = io::ReadStringAttr(file, "created", path, vlen);
  m.step = io::ReadIntAttr(file, "step", path, 0);
  m.job_spec = io::ReadStringAttr(file, "job_spec", path, vlen);
  m.dtype = io::ReadStringAttr(file, "dtype", path, vlen);
  if (info.kind == "checkpoint") {
    m.epoch = io::ReadIntAttr(file, "epoch", path, 0);
    m.step_in_epoch = io::ReadIntAttr(file, "step_in_epoch", path, 0);
    m.steps_per_epoch = io::ReadIntAttr(file, "steps_per_epoch", path, 1);
    m.global_batch = io::ReadIntAttr(file, "global_batch", path, 1);
    m.samples_seen = io::ReadIntAttr(file, "samples_seen", path, 0);
    m.seed = static_cast<uint64_t>(io::ReadIntAttr(file, "seed", path));
    m.world_size = static_cast<int>(io::ReadIntAttr(file, "world_size", path, 1, kMaxWorld));
    m.data_parallel = static_cast<int>(io::ReadIntAttr(file, "data_parallel", path, 1, m.world_size));
    m.zero_stage = static_cast<int>(io::ReadIntAttr(file, "zero_stage", path, 0, 3));
    m.tensor_parallel = static_cast<int>(io::ReadIntAttr(file, "tensor_parallel", path, 1, m.world_size));
    m.pipeline_parallel = static_cast<int>(io::ReadIntAttr(file, "pipeline_parallel", path, 1, m.world_size));
    m.optimizer = io::ReadStringAttr(file, "optimizer", path, vlen);
    m.optimizer_step = io::ReadIntAttr(file, "optimizer_step", path, 0);
    m.lr_schedule = io::ReadStringAttr(file, "lr_schedule", path, vlen);
    m.lr = io::ReadRealAttr(file, "lr", path);
  }
  io::Manifest man = io::ReadManifest(file, m.format_version, path);
  for (const io::TensorRecord& t : man.tensors)  // int8 is for quantised model files, never training state
    if (info.kind == "checkpoint" && !IsFloating(t.dtype))
      TESSERA_THROW(IoError, path, ": /manifest: ", t.path, " is ", DTypeName(t.dtype),
                    "; a checkpoint holds float32 and float64 tensors only");
  info.tensors = man.tensors;
  if (info.kind == "checkpoint" && io::PathExists(file, "/rng/rank_state", path)) {
    std::vector<uint64_t> rs = ReadRankState(file, info);
    for (size_t r = 0; r < rs.size() / 2; ++r) m.rank_next_example.push_back(static_cast<int64_t>(rs[2 * r + 1]));
  }
  if (manifest) *manifest = std::move(man);
  return info;
}

std::vector<uint64_t> ReadRankState(hid_t file, const CheckpointInfo& info) {
  const std::string where = info.path + ": /rng/rank_state";
  if (!io::PathExists(file, "/rng/rank_state", where)) TESSERA_THROW(IoError, where, ": missing");
  Hdf5Handle d(H5C(H5Dopen2(file, "rng/rank_state", H5P_DEFAULT), where), H5Dclose);
  std::vector<int64_t> shape = io::DatasetShape(d.get(), where);
  const std::vector<int64_t> want{info.meta.world_size, 2};
  if (shape != want)
    TESSERA_THROW(IoError, where, ": has shape ", io::JsonText(json(shape)), ", expected [", info.meta.world_size, ", 2]");
  Hdf5Handle type(H5C(H5Dget_type(d.get()), where), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) != 8)
    TESSERA_THROW(IoError, where, ": is not a 64-bit integer dataset");
  const int64_t bytes = 16 * static_cast<int64_t>(info.meta.world_size);
  io::CheckContiguousStorage(d.get(), bytes, io::FileSize(file, where), where);
  std::vector<uint64_t> rs(static_cast<size_t>(info.meta.world_size) * 2);
  H5C(H5Dread(d.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, rs.data()), where);
  uint32_t crc = io::Crc32(rs.data(), rs.size() * sizeof(uint64_t));
  uint32_t stored = static_cast<uint32_t>(io::ReadIntAttr(d.get(), "crc32", where, 0, 0xffffffffLL));
  if (crc != stored)
    TESSERA_THROW(IoError, where, ": CRC-32 mismatch (stored ", io::Hex32(stored), ", computed ", io::Hex32(crc), ")");
  return rs;
}

std::vector<std::string> CheckConsistency(const CheckpointInfo& info, const io::Manifest& manifest) {
  const CheckpointMeta& m = info.meta;
  std::vector<std::string> problems = io::CheckManifestIntegrity(manifest, MetaJson(m, info.kind), info.path);
  const std::string dir = std::filesystem::path(info.path).parent_path().filename().string();
  const int64_t dir_step = ParseStepName(dir);
  if (dir_step >= 0 && dir_step != m.step)
    problems.push_back(detail::StrCat(info.path, ": the directory ", dir, " says step ", dir_step,
                                      " but the checkpoint's step attribute is ", m.step));
  for (const CheckpointTensor& t : info.tensors) {
    if (t.path.rfind("/model/", 0) != 0 || io::DTypeFileName(t.dtype) == m.dtype) continue;
    problems.push_back(detail::StrCat(info.path, ": root attribute 'dtype' is ", m.dtype.substr(0, 100),
                                      " but the model's tensors are ", io::DTypeFileName(t.dtype), " (", t.path, ")"));
    break;
  }
  if (info.kind != "checkpoint") return problems;
  if (m.epoch * m.steps_per_epoch + m.step_in_epoch != m.step || m.step_in_epoch >= m.steps_per_epoch)
    problems.push_back(detail::StrCat(info.path, ": epoch ", m.epoch, ", step in epoch ", m.step_in_epoch, " and ",
                                      m.steps_per_epoch, " steps per epoch do not add up to step ", m.step));
  if (m.optimizer_step > m.step)
    problems.push_back(detail::StrCat(info.path, ": optimizer_step ", m.optimizer_step, " exceeds step ", m.step));
  if (!std::isfinite(m.lr) || m.lr < 0)
    problems.push_back(detail::StrCat(info.path, ": the learning rate ", m.lr, " is not a finite rate >= 0"));
  return problems;
}

}  // namespace checkpoint_internal

using checkpoint_internal::MetaJson;
using json = nlohmann::json;

CheckpointInfo ReadCheckpointInfo(const std::string& path) {
  io::Hdf5Lock lock;
  io::Hdf5Handle file = io::OpenForRead(path);
  return checkpoint_internal::ReadInfoLocked(file.get(), path);
}

std::string DescribeCheckpoint(const CheckpointInfo& info) {
  const CheckpointMeta& m = info.meta;
  std::ostringstream s;
  s << info.path << ": tessera " << info.kind << ", format version " << m.format_version << ", written by tessera "
    << m.tessera_version << " at " << m.created << "\n";
  s << "  step " << m.step;
  if (info.kind == "checkpoint") {
    s << " (epoch " << m.epoch << ", step " << m.step_in_epoch << " of " << m.steps_per_epoch << " in the epoch; "
      << m.samples_seen << " samples seen; global batch " << m.global_batch << ", seed " << m.seed << ")\n";
    s << "  layout: world size " << m.world_size << " (data " << m.data_parallel << ", tensor " << m.tensor_parallel
      << ", pipeline " << m.pipeline_parallel << ", ZeRO stage " << m.zero_stage << ")\n";
    s << "  optimizer: " << m.optimizer << ", " << m.optimizer_step << " steps taken; schedule " << m.lr_schedule
      << ", last lr " << m.lr << "\n";
  } else {
    s << "\n";
  }
  int64_t model_params = 0, bytes = 0;
  size_t width = 0;
  for (const CheckpointTensor& t : info.tensors) width = std::max(width, t.path.size());
  s << "  tensors (" << info.tensors.size() << "):\n";
  for (const CheckpointTensor& t : info.tensors) {
    char line[512];
    std::snprintf(line, sizeof line, "    %-*s  %-8s %-20s crc32 %s\n", static_cast<int>(width), t.path.c_str(),
                  io::DTypeFileName(t.dtype).c_str(), ShapeString(t.shape).c_str(), io::Hex32(t.crc32).c_str());
    s << line;
    if (t.path.rfind("/model/", 0) == 0) model_params += NumElements(t.shape);
    bytes += t.bytes;
  }
  s << "  " << model_params << " model parameters; " << bytes << " bytes of tensors\n";
  return s.str();
}

std::string CheckpointInfoJson(const CheckpointInfo& info) {
  json j = MetaJson(info.meta, info.kind);
  j.erase("job_spec");  // long; `h5dump -a job_spec` or the run directory's job.pbtxt has it
  j["path"] = info.path;
  j["kind"] = info.kind;
  json list = json::array();
  for (const CheckpointTensor& t : info.tensors)
    list.push_back({{"path", t.path}, {"shape", t.shape}, {"dtype", io::DTypeFileName(t.dtype)}, {"bytes", t.bytes},
                    {"crc32", t.crc32}});
  j["tensors"] = list;
  return io::JsonText(j, 2);
}

}  // namespace tessera::jobs
