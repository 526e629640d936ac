#include "dist/zero3.h"

#include <algorithm>

namespace tessera::dist {

ShardedParameters::ShardedParameters(nn::FlatParameters& params, nn::Sequential& net,
                                     const ZeroPartition& partition,
                                     std::unique_ptr<ProcessGroup> gather_group, double timeout_s)
    : params_(params), net_(net), partition_(partition), group_(std::move(gather_group)) {
  options_.timeout_s = timeout_s;
  if (partition.numel != params.numel() || partition.world != group_->size() ||
      partition.rank != group_->rank())
    TESSERA_THROW(ValueError, "ZeRO-3: a partition of ", partition.numel, " elements over ", partition.world,
                  " ranks for ", params.numel(), " elements over ", group_->size());
  // A unit is gathered while its own child runs: a child that reads another's parameters would
  // find them given back (zeros).
  for (size_t c = 0; c < net.size(); ++c)
    if (!net[c].SharedParameters().empty())
      TESSERA_THROW(ConfigError, "ZeRO stage 3 cannot shard this model: ", net[c].Describe(),
                    " computes with the parameters of another layer (tied weights); use stage 0, 1 or 2");
  // A unit per child with parameters: from its first parameter's offset to the next unit's.
  const auto& entries = params.entries();
  unit_of_child_.assign(net.size(), -1);
  size_t e = 0;
  for (size_t c = 0; c < net.size(); ++c) {
    const size_t n = net[c].NamedParameters().size();
    if (n == 0) continue;
    if (e + n > entries.size())
      TESSERA_THROW(Error, "ZeRO-3: the model's parameters are not laid out from it");
    unit_of_child_[c] = static_cast<int>(units_.size());
    Unit unit;
    unit.child = c;
    unit.begin = entries[e].offset;
    units_.push_back(unit);
    e += n;
  }
  for (size_t u = 0; u < units_.size(); ++u)
    units_[u].end = u + 1 < units_.size() ? units_[u + 1].begin : params.numel();
  if (!units_.empty()) units_[0].begin = 0;
  net.SetChildHook([this](size_t child, nn::Sequential::ChildEvent ev) { OnChild(child, ev); });
}

ShardedParameters::~ShardedParameters() {
  net_.SetChildHook(nullptr);
  for (Unit& u : units_)
    for (auto& w : u.work) {
      try {
        w->Wait();
      } catch (...) {  // the error was reported where it happened
      }
    }
}

void ShardedParameters::OnChild(size_t child, nn::Sequential::ChildEvent e) {
  if (all_whole_ || child >= unit_of_child_.size() || unit_of_child_[child] < 0) return;
  const int u = unit_of_child_[child], last = static_cast<int>(units_.size()) - 1;
  using E = nn::Sequential::ChildEvent;
  switch (e) {
    case E::kBeforeForward:
      Issue(u);
      if (u < last) Issue(u + 1);  // prefetch: the next unit gathers while this one computes
      Await(u);
      return;
    case E::kAfterForward:
      if (u < last) ReleaseUnit(u);  // the last unit is the first that backward needs
      return;
    case E::kBeforeBackward:
      Issue(u);
      if (u > 0) Issue(u - 1);
      Await(u);
      return;
    case E::kAfterBackward:
      ReleaseUnit(u);
      return;
  }
}

void ShardedParameters::Issue(int u) {
  Unit& unit = units_[u];
  if (unit.state != State::kReleased) return;
  Tensor& values = params_.values();
  for (const ZeroPartition::Piece& p : partition_.Split(unit.begin, unit.end)) {
    Tensor piece = values.View(p.begin, {p.end - p.begin});
    unit.work.push_back(group_->Broadcast(piece, p.owner, options_));
  }
  unit.state = State::kInFlight;
}

void ShardedParameters::Await(int u) {
  Unit& unit = units_[u];
  std::vector<std::shared_ptr<Work>> work;
  work.swap(unit.work);
  for (auto& w : work) w->Wait();
  if (unit.state == State::kInFlight) unit.state = State::kWhole;
}

void ShardedParameters::ReleaseUnit(int u) {
  Await(u);
  Unit& unit = units_[u];
  Tensor& values = params_.values();
  for (const ZeroPartition::Piece& p : partition_.Split(unit.begin, unit.end)) {
    if (p.owner == partition_.rank) continue;
    ZeroAndRelease(values.View(p.begin, {p.end - p.begin}));
  }
  unit.state = State::kReleased;
}

void ShardedParameters::Release() {
  all_whole_ = false;
  for (int u = 0; u < static_cast<int>(units_.size()); ++u) {
    units_[u].state = State::kWhole;  // every page may hold values: give them all back
    ReleaseUnit(u);
  }
}

void ShardedParameters::GatherAll() {
  for (int u = 0; u < static_cast<int>(units_.size()); ++u) Await(u);
  GatherShards(params_.values(), partition_, *group_, options_);
  for (Unit& unit : units_) unit.state = State::kWhole;
  all_whole_ = true;
}

void ShardedParameters::WalkForward() {
  using E = nn::Sequential::ChildEvent;
  for (const Unit& unit : units_) {
    OnChild(unit.child, E::kBeforeForward);
    OnChild(unit.child, E::kAfterForward);
  }
}

void ShardedParameters::Walk() {
  using E = nn::Sequential::ChildEvent;
  WalkForward();
  const size_t first = net_.FirstChildBackwardRuns();
  for (size_t i = units_.size(); i-- > 0;) {
    if (units_[i].child < first) break;  // backward does not run it either
    OnChild(units_[i].child, E::kBeforeBackward);
    OnChild(units_[i].child, E::kAfterBackward);
  }
}

int64_t ShardedParameters::largest_unit_bytes() const {
  int64_t most = 0;
  for (const Unit& u : units_) most = std::max(most, u.end - u.begin);
  return most * static_cast<int64_t>(SizeOf(params_.values().dtype()));
}

}  // namespace tessera::dist
