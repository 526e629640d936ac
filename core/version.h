// Where this build of tessera comes from (recorded in the lineage of published models).
#pragma once

#include "tessera/config.h"  // TESSERA_VERSION

namespace tessera {

// The git commit the build was made from, with "-dirty" when tracked files differed from it
// ("unknown" outside a git checkout). Refreshed at every build.
const char* SourceCommit();

}  // namespace tessera
