// Model and alias names, and version references as users write them.
#include <cctype>

#include "store/internal.h"

namespace tessera::store {

namespace {

bool NameChars(const std::string& s) {
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
  return true;
}

std::string Shown(const std::string& s) { return s.size() > 80 ? s.substr(0, 80) + "..." : s; }

}  // namespace

void ValidateModelName(const std::string& name) {
  if (name.empty()) TESSERA_THROW(StoreError, "model name is empty");
  if (name.size() > 128 || !NameChars(name) || !std::isalnum(static_cast<unsigned char>(name[0])) ||
      name.find("..") != std::string::npos)
    TESSERA_THROW(StoreError, "model name '", Shown(name),
                  "' is not valid: use up to 128 letters, digits, '.', '_' and '-', starting with a letter or digit");
  if (internal::ParseVersionName(name) > 0 || name == internal::kAliasesDir)
    TESSERA_THROW(StoreError, "model name '", name, "' is reserved");
}

void ValidateAliasName(const std::string& name) {
  if (name.empty()) TESSERA_THROW(StoreError, "alias name is empty");
  if (name.size() > 64 || !NameChars(name) || !std::isalpha(static_cast<unsigned char>(name[0])) ||
      name.find("..") != std::string::npos)
    TESSERA_THROW(StoreError, "alias name '", Shown(name),
                  "' is not valid: use up to 64 letters, digits, '.', '_' and '-', starting with a letter");
  if (name == "latest") TESSERA_THROW(StoreError, "alias 'latest' is implicit (the highest version) and cannot be set");
}

VersionRef ParseVersionRef(const std::string& text) {
  VersionRef r;
  std::string rest = text;
  const std::string scheme = "store://";
  const bool uri = rest.rfind(scheme, 0) == 0;
  if (uri) rest = rest.substr(scheme.size());
  size_t at = rest.rfind('@');
  if (at != std::string::npos && rest.find('/', at) == std::string::npos) {
    r.ref = rest.substr(at + 1);
    r.explicit_ref = true;
    rest = rest.substr(0, at);
    if (r.ref.empty()) TESSERA_THROW(StoreError, "'", Shown(text), "': nothing after '@' (a version number or alias)");
  } else {
    // MODEL/3: a trailing number is the version.
    size_t slash = rest.find_last_of('/');
    std::string last = slash == std::string::npos ? "" : rest.substr(slash + 1);
    if (slash != std::string::npos && internal::ParseVersionName(last) > 0) {
      r.ref = last;
      r.explicit_ref = true;
      rest = rest.substr(0, slash);
    }
  }
  while (rest.size() > 1 && rest.back() == '/') rest.pop_back();
  size_t slash = rest.find_last_of('/');
  if (!uri && slash != std::string::npos)
    TESSERA_THROW(StoreError, "'", Shown(text), "' is not a model name (it holds '/'): name the store with --store ROOT or "
                  "write store://ROOT/MODEL");
  r.model = slash == std::string::npos ? rest : rest.substr(slash + 1);
  if (slash != std::string::npos) r.root = slash == 0 ? "/" : rest.substr(0, slash);
  if (uri && r.root.empty())
    TESSERA_THROW(StoreError, "'", Shown(text), "': a store:// reference names the store root and the model: "
                  "store://ROOT/MODEL[@VERSION|@ALIAS]");
  ValidateModelName(r.model);
  if (r.ref != "latest" && internal::ParseVersionName(r.ref) == 0) ValidateAliasName(r.ref);
  return r;
}

std::string FormatVersionRef(const VersionRef& r) {
  return "store://" + r.root + (r.root.empty() || r.root.back() == '/' ? "" : "/") + r.model + "@" + r.ref;
}

}  // namespace tessera::store
