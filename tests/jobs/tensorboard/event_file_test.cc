// TensorBoard event files: the CRC-32C, the record framing read back, and which metrics become
// scalars. tests/jobs/tensorboard_cli_test.sh reads a real run's files with TensorBoard itself.
#include "jobs/tensorboard/event_file.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/io/checksum.h"
#include "jobs/run_log.h"
#include "jobs/tensorboard/event.pb.h"

namespace tessera::jobs::tensorboard {
namespace {

namespace fs = std::filesystem;

TEST(Crc32c, KnownValues) {
  EXPECT_EQ(io::Crc32c("", 0), 0u);
  EXPECT_EQ(io::Crc32c("123456789", 9), 0xE3069283u);  // the standard check value of CRC-32C
  const char zeros[32] = {};
  EXPECT_EQ(io::Crc32c(zeros, sizeof zeros), 0x8A9136AAu);  // RFC 3720, B.4: 32 bytes of zeros
  // Continuing from a previous CRC is the CRC of the concatenation.
  EXPECT_EQ(io::Crc32c("6789", 4, io::Crc32c("12345", 5)), 0xE3069283u);
}

uint64_t LittleEndian(const std::string& s, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[at + i]);
  return v;
}

uint32_t Masked(uint32_t c) { return ((c >> 15) | (c << 17)) + 0xa282ead8u; }

// Splits a file into its records' payloads, checking the framing of each.
std::vector<std::string> ReadRecords(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> out;
  size_t at = 0;
  while (at < bytes.size()) {
    EXPECT_LE(at + 12, bytes.size()) << "a record header cut short at byte " << at;
    const uint64_t n = LittleEndian(bytes, at, 8);
    EXPECT_EQ(LittleEndian(bytes, at + 8, 4), Masked(io::Crc32c(bytes.data() + at, 8))) << "header CRC at " << at;
    EXPECT_LE(at + 16 + n, bytes.size());
    out.push_back(bytes.substr(at + 12, n));
    EXPECT_EQ(LittleEndian(bytes, at + 12 + n, 4), Masked(io::Crc32c(bytes.data() + at + 12, n))) << "data CRC";
    at += 16 + n;
  }
  return out;
}

TEST(EventFile, VersionRecordThenOneEventPerWrite) {
  const fs::path dir = fs::temp_directory_path() / ("tessera-tb-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string path;
  {
    EventFile f(dir.string());
    f.Write(5, {}, 1700000000.0);  // nothing to write: no record, and no file yet
    EXPECT_TRUE(f.path().empty());
    EXPECT_TRUE(fs::is_empty(dir));
    f.Write(10, {{"train/loss", 0.5}, {"train/lr", 1e-3}}, 1700000000.25);
    path = f.path();
    f.Write(20, {}, 1700000001.0);
    f.Write(30, {{"eval/test_accuracy", 0.875}}, 1700000002.0);
  }
  EXPECT_EQ(fs::path(path).parent_path(), dir);
  EXPECT_EQ(fs::path(path).filename().string().rfind("events.out.tfevents.", 0), 0u) << path;
  const std::vector<std::string> records = ReadRecords(path);
  ASSERT_EQ(records.size(), 3u);
  Event e;
  ASSERT_TRUE(e.ParseFromString(records[0]));
  EXPECT_EQ(e.file_version(), "brain.Event:2");
  ASSERT_TRUE(e.ParseFromString(records[1]));
  EXPECT_EQ(e.step(), 10);
  EXPECT_DOUBLE_EQ(e.wall_time(), 1700000000.25);
  ASSERT_EQ(e.summary().value_size(), 2);
  EXPECT_EQ(e.summary().value(0).tag(), "train/loss");
  EXPECT_FLOAT_EQ(e.summary().value(0).simple_value(), 0.5f);
  EXPECT_EQ(e.summary().value(1).tag(), "train/lr");
  EXPECT_FLOAT_EQ(e.summary().value(1).simple_value(), 1e-3f);
  ASSERT_TRUE(e.ParseFromString(records[2]));
  EXPECT_EQ(e.step(), 30);
  EXPECT_EQ(e.summary().value(0).tag(), "eval/test_accuracy");
  fs::remove_all(dir);
}

TEST(EventFile, RestartRecordAndNoFileIsEverTruncated) {
  const fs::path dir = fs::temp_directory_path() / ("tessera-tb-restart-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string first, second;
  {
    EventFile a(dir.string());
    a.Write(5, {{"train/loss", 1.0}}, 1700000000.0);
    first = a.path();
  }
  {  // the same process in the same second: another name, the first file intact
    EventFile b(dir.string());
    b.Restart(21, 1700000001.0);
    b.Write(25, {{"train/loss", 0.5}}, 1700000002.0);
    second = b.path();
  }
  EXPECT_NE(first, second);
  EXPECT_EQ(ReadRecords(first).size(), 2u) << "the first file was truncated";
  const std::vector<std::string> records = ReadRecords(second);
  ASSERT_EQ(records.size(), 3u);
  Event e;
  ASSERT_TRUE(e.ParseFromString(records[1]));
  EXPECT_EQ(e.step(), 21);
  ASSERT_TRUE(e.has_session_log());
  EXPECT_EQ(e.session_log().status(), SessionLog::START);
  fs::remove_all(dir);
}

// TensorBoard's file is a view of metrics.jsonl: when it cannot be written, rank 0 warns and goes
// on (stopping rank 0 alone would leave the other ranks waiting in a collective).
TEST(RunLog, AnEventFileThatCannotBeWrittenIsAWarningNotAnError) {
  const fs::path dir = fs::temp_directory_path() / ("tessera-tb-runlog-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  RunLog log(dir.string(), JobSpec(), 0, 1, false, false);
  fs::remove_all(dir);  // the event file is created at the first scalar: it cannot be now
  ::testing::internal::CaptureStderr();
  EXPECT_NO_THROW(log.Emit({{"event", "train"}, {"step", 1}, {"loss", 0.5}}));
  EXPECT_NO_THROW(log.Emit({{"event", "train"}, {"step", 2}, {"loss", 0.25}}));
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("tessera: warning: TensorBoard events: "), std::string::npos) << err;
  EXPECT_EQ(err.find("warning", err.find("warning") + 1), std::string::npos) << "warned more than once: " << err;
}

TEST(EventFile, UnwritableDirectoryIsAnIoErrorNamingTheFile) {
  try {
    EventFile f("/nonexistent-dir-for-tessera");
    f.Write(1, {{"train/loss", 1.0}}, 1700000000.0);
    FAIL() << "no error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir-for-tessera/events.out.tfevents."), std::string::npos)
        << e.what();
  }
}

TEST(ScalarsOf, NumbersAndListsOfTrainAndEvalEvents) {
  using nlohmann::json;
  const json train = {{"event", "train"}, {"step", 7}, {"loss", 0.25}, {"lr", 0.01},
                      {"rank_step_seconds", {0.5, 0.75}}, {"note", "text is left out"}};
  EventFile::Scalars s = ScalarsOf(train);
  std::map<std::string, double> got(s.begin(), s.end());
  EXPECT_EQ(got.size(), 4u);
  EXPECT_DOUBLE_EQ(got["train/loss"], 0.25);
  EXPECT_DOUBLE_EQ(got["train/lr"], 0.01);
  EXPECT_DOUBLE_EQ(got["train/rank_step_seconds/0"], 0.5);
  EXPECT_DOUBLE_EQ(got["train/rank_step_seconds/1"], 0.75);
  EXPECT_EQ(ScalarsOf({{"event", "eval"}, {"step", 3}, {"test_accuracy", 0.9}})[0].first, "eval/test_accuracy");
  EXPECT_TRUE(ScalarsOf({{"event", "checkpoint"}, {"step", 3}, {"bytes", 100}}).empty());
  EXPECT_TRUE(ScalarsOf({{"event", "train"}, {"loss", 1.0}}).empty());  // no step: nowhere to put it
}

}  // namespace
}  // namespace tessera::jobs::tensorboard
