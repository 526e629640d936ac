// Reading checkpoints back: loading into a (possibly sharded) layout, verifying, and exporting the
// model alone as a weights file (core/io/weights.h).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <regex>

#include "core/io/check_queue.h"
#include "core/io/hdf5.h"
#include "core/io/weights.h"
#include "core/nn/module.h"
#include "jobs/checkpoint/format.h"

namespace tessera::jobs {

namespace fs = std::filesystem;
using checkpoint_internal::CheckConsistency;
using checkpoint_internal::ReadInfoLocked;
using io::Hdf5Handle;
using io::Hdf5Lock;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s.empty() ? std::string("none") : s;
}

// The model must match exactly (same tensors, same shapes), and the optimizer state the layout
// asks for must be there. Throws ShapeError (a different model or optimizer) naming the tensor.
void CheckLayoutMatches(const CheckpointInfo& info, const CheckpointLayout& layout, const std::string& path,
                        const std::map<std::string, const CheckpointTensor*>& by_path) {
  std::vector<std::string> file_optim_states;
  for (const CheckpointTensor& t : info.tensors) {
    if (t.path.rfind("/optim/", 0) != 0) continue;
    std::string state = t.path.substr(t.path.rfind('/') + 1);
    if (std::find(file_optim_states.begin(), file_optim_states.end(), state) == file_optim_states.end())
      file_optim_states.push_back(state);
  }
  std::map<std::string, const CheckpointLayout::Entry*> wanted;
  for (const auto& e : layout.entries) wanted[e.path] = &e;
  for (const CheckpointTensor& t : info.tensors)
    if (t.path.rfind("/model/", 0) == 0 && !wanted.count(t.path))
      TESSERA_THROW(ShapeError, path, ": ", t.path, " (shape ", ShapeString(t.shape),
                    ") is in the checkpoint but not in the model: the checkpoint is of a different model");
  const bool want_optim = std::any_of(layout.entries.begin(), layout.entries.end(),
                                      [](const auto& e) { return e.path.rfind("/optim/", 0) == 0; });
  if (want_optim && info.kind != "checkpoint")
    TESSERA_THROW(CheckpointFormatError, path, ": is an exported model (no optimizer state); training resumes from "
                  "a checkpoint");
  for (const auto& e : layout.entries) {
    auto it = by_path.find(e.path);
    if (it == by_path.end()) {
      if (e.path.rfind("/optim/", 0) == 0)
        TESSERA_THROW(ShapeError, path, ": ", e.path, " is not in the checkpoint: it holds optimizer state ",
                      Join(file_optim_states), " (optimizer '", info.meta.optimizer, "'); the job's optimizer differs");
      TESSERA_THROW(ShapeError, path, ": the model's tensor ", e.path, " (shape ", ShapeString(e.shape),
                    ") is not in the checkpoint: the checkpoint is of a different model");
    }
    if (it->second->shape != e.shape)
      TESSERA_THROW(ShapeError, path, ": ", e.path, ": the checkpoint has shape ", ShapeString(it->second->shape),
                    " but the model has shape ", ShapeString(e.shape));
  }
}

// Reads one whole tensor; returns it (as a 1-D tensor), checked for everything but the CRC.
struct TensorRead {
  Tensor data;
  io::TensorReadResult r;
};
TensorRead ReadTensor(hid_t file, const CheckpointTensor& t, int64_t file_size, const Tensor* into,
                      const std::string& path) {
  TensorRead out;
  out.r = io::ReadTensorData(
      file, t, file_size,
      [&] {
        const int64_t n = NumElements(t.shape);
        out.data = into && into->defined() && into->numel() == n && into->dtype() == t.dtype ? *into
                                                                                            : Tensor::Empty({n}, t.dtype);
        return out.data.raw_data();
      },
      path);
  if (!out.data.defined()) out.data = Tensor::Empty({0}, t.dtype);
  return out;
}

// The `flat_offset` attributes of a checkpoint (docs/checkpoint-format.md): the model's tensors
// tile the flat parameter buffer in order, each at the first aligned element after the one
// before it (no overlaps, no gaps but the alignment padding), and each optimizer
// state tensor starts where its parameter does. Loads place tensors by the model's own layout, so
// only verify reads these; a wrong one would mislead any other reader of the file.
std::vector<std::string> CheckFlatOffsets(hid_t file, const CheckpointInfo& info, const std::string& path) {
  std::vector<std::string> problems;
  std::map<std::string, int64_t> model_offset;  // /model/<param> -> flat_offset
  std::vector<std::pair<int64_t, const CheckpointTensor*>> model;
  std::vector<std::pair<int64_t, const CheckpointTensor*>> optim;
  for (const CheckpointTensor& t : info.tensors) {
    const std::string at = path + ": " + t.path;
    try {
      if (!io::PathExists(file, t.path, at)) continue;  // reported by the tensor reads
      Hdf5Handle d(TESSERA_H5_CHECK(IoError, H5Dopen2(file, t.path.c_str(), H5P_DEFAULT), at), H5Dclose);
      if (!io::HasAttr(d.get(), "flat_offset", at)) {
        problems.push_back(at + ": has no flat_offset attribute");
        continue;
      }
      const int64_t off = io::ReadIntAttr(d.get(), "flat_offset", at, 0);
      if (t.path.rfind("/model/", 0) == 0) {
        model.push_back({off, &t});
        model_offset[t.path] = off;
      } else {
        optim.push_back({off, &t});
      }
    } catch (const Error& e) {
      problems.push_back(e.what());
    }
  }
  // FlatParameters starts each parameter at the next multiple of kAlignment elements.
  constexpr int64_t kAlign = nn::FlatParameters::kAlignment;
  std::sort(model.begin(), model.end());
  int64_t end = 0;
  for (const auto& [off, t] : model) {
    const int64_t want = (end + kAlign - 1) / kAlign * kAlign;
    if (off != want)
      problems.push_back(detail::StrCat(path, ": ", t->path, ": flat_offset is ", off, " but the model's tensors before it "
                                        "end at element ", end, ", so it should be ", want, " (the next multiple of ",
                                        kAlign, "): ", off < end ? "the tensors overlap" : "a gap"));
    end = std::max(end, off + NumElements(t->shape));
  }
  for (const auto& [off, t] : optim) {
    // /optim/<param>/<state> belongs to /model/<param>.
    const std::string param = "/model/" + t->path.substr(7, t->path.rfind('/') - 7);
    auto it = model_offset.find(param);
    if (it != model_offset.end() && it->second != off)
      problems.push_back(detail::StrCat(path, ": ", t->path, ": flat_offset is ", off, " but its parameter ", param,
                                        " starts at ", it->second));
  }
  return problems;
}

}  // namespace

CheckpointInfo LoadCheckpoint(const std::string& path, const CheckpointLayout& layout) {
  Hdf5Lock lock;
  Hdf5Handle file = io::OpenForRead(path);
  io::Manifest manifest;
  CheckpointInfo info = ReadInfoLocked(file.get(), path, &manifest);
  std::vector<std::string> problems = CheckConsistency(info, manifest);
  if (!problems.empty())
    TESSERA_THROW(IoError, problems.front(), problems.size() > 1 ? detail::StrCat(" (and ", problems.size() - 1, " more)") : "");
  std::map<std::string, const CheckpointTensor*> by_path;
  for (const CheckpointTensor& t : info.tensors) by_path[t.path] = &t;
  CheckLayoutMatches(info, layout, path, by_path);
  const int64_t file_size = io::FileSize(file.get(), path);
  // The CRCs are checked on a second thread while the next tensors are read.
  const auto t0 = Clock::now();
  io::CheckQueue checks;
  for (const auto& e : layout.entries) {
    const CheckpointLayout::Buffer& buf = layout.buffers[e.buffer];
    const int64_t numel = NumElements(e.shape);
    int64_t a = std::max(e.offset, buf.base), b = std::min(e.offset + numel, buf.base + buf.data.numel());
    Tensor direct;
    if (a == e.offset && b == e.offset + numel && buf.data.device().is_cpu())
      direct = buf.data.Slice0(a - buf.base, b - buf.base);
    const CheckpointTensor& t = *by_path[e.path];
    auto r = std::make_shared<TensorRead>(ReadTensor(file.get(), t, file_size, &direct, path));
    checks.Add([&t, r, &path] { io::CheckTensorCrc(t, r->data.raw_data(), r->r, path); });
    if (a >= b || (direct.defined() && r->data.storage() == direct.storage())) continue;
    Tensor part = r->data.Slice0(a - e.offset, b - e.offset);
    if (part.dtype() != buf.data.dtype()) part = part.Cast(buf.data.dtype());
    Tensor dst = buf.data.Slice0(a - buf.base, b - buf.base);
    dst.CopyFrom(part);
  }
  const auto t_read = Clock::now();
  checks.Finish();
  if (std::getenv("TESSERA_CHECKPOINT_TRACE"))
    std::fprintf(stderr, "checkpoint trace: load %s: reading %.2f ms, then waiting for CRC checks %.2f ms\n",
                 path.c_str(), Seconds(t0, t_read) * 1e3, Seconds(t_read, Clock::now()) * 1e3);
  return info;
}

std::vector<std::string> VerifyCheckpoint(const std::string& path) {
  Hdf5Lock lock;
  Hdf5Handle file = io::OpenForRead(path);
  io::Manifest manifest;
  CheckpointInfo info = ReadInfoLocked(file.get(), path, &manifest);
  const int64_t file_size = io::FileSize(file.get(), path);
  std::vector<std::string> problems;
  std::map<std::string, bool> listed;
  for (const CheckpointTensor& t : info.tensors) {
    listed[t.path] = true;
    try {
      TensorRead r = ReadTensor(file.get(), t, file_size, nullptr, path);
      io::CheckTensorCrc(t, r.data.raw_data(), r.r, path);
    } catch (const Error& e) {
      problems.push_back(e.what());
    }
  }
  for (const std::string& p : io::DatasetPaths(file.get(), path))
    if ((p.rfind("/model/", 0) == 0 || p.rfind("/optim/", 0) == 0) && !listed.count(p))
      problems.push_back(path + ": " + p + ": not listed in the manifest");
  for (std::string& p : CheckConsistency(info, manifest)) problems.push_back(std::move(p));
  if (info.kind == "checkpoint") {
    for (std::string& p : CheckFlatOffsets(file.get(), info, path)) problems.push_back(std::move(p));
    try {
      checkpoint_internal::ReadRankState(file.get(), info);
    } catch (const Error& e) {
      problems.push_back(e.what());
    }
  }
  return problems;
}

namespace {

// The export is renamed over `out`: it must be a new path or a plain file of its own, never the
// checkpoint itself, a `latest` link, a device, or a file inside a checkpoint directory.
void CheckExportTarget(const std::string& checkpoint_path, const std::string& out) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(out, ec);
  if (fs::exists(st)) {
    if (fs::is_symlink(st))
      TESSERA_THROW(IoError, out, ": is a symbolic link (a checkpoints directory's latest?); refusing to replace it: "
                    "name a new file");
    if (!fs::is_regular_file(st))
      TESSERA_THROW(IoError, out, ": exists and is not a regular file; refusing to replace it: name a new file");
    if (fs::equivalent(out, checkpoint_path, ec))
      TESSERA_THROW(IoError, out, ": is the checkpoint being exported; name another file");
  }
  const fs::path parent = fs::absolute(out).lexically_normal().parent_path();
  const std::string dir = parent.filename().string();
  const bool step_dir = std::regex_match(dir, std::regex("\\.?step-[0-9]+(\\.partial)?"));
  if (step_dir || fs::exists(fs::symlink_status(parent / "latest", ec)) ||
      fs::is_regular_file(parent / "checkpoint.h5", ec))
    TESSERA_THROW(IoError, out, ": is inside a checkpoint directory (", parent.string(),
                  "), which tessera manages; export to a file elsewhere");
}

}  // namespace

void ExportModel(const std::string& checkpoint_path, const std::string& out_path) {
  CheckExportTarget(checkpoint_path, out_path);
  std::vector<Tensor> data;
  std::vector<io::WeightsView> views;
  io::WeightsMeta meta;
  {
    Hdf5Lock lock;
    Hdf5Handle file = io::OpenForRead(checkpoint_path);
    io::Manifest manifest;
    CheckpointInfo info = ReadInfoLocked(file.get(), checkpoint_path, &manifest);
    std::vector<std::string> problems = CheckConsistency(info, manifest);
    if (!problems.empty()) TESSERA_THROW(IoError, problems.front());
    const int64_t file_size = io::FileSize(file.get(), checkpoint_path);
    for (const CheckpointTensor& t : info.tensors) {
      if (t.path.rfind("/model/", 0) != 0) continue;
      TensorRead r = ReadTensor(file.get(), t, file_size, nullptr, checkpoint_path);
      io::CheckTensorCrc(t, r.data.raw_data(), r.r, checkpoint_path);
      data.push_back(r.data);
      views.push_back({t.path.substr(7), t.shape, t.dtype, data.back().raw_data()});
    }
    if (views.empty()) TESSERA_THROW(CheckpointFormatError, checkpoint_path, ": holds no /model tensors");
    meta.step = info.meta.step;
    meta.job_spec = info.meta.job_spec;
    meta.dtype = info.meta.dtype;
  }
  meta.source = fs::absolute(checkpoint_path).lexically_normal().string();
  io::WriteWeightsFile(out_path, meta, views);
}

}  // namespace tessera::jobs
