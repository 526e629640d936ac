# Writes OUT, a C++ file defining tessera::SourceCommit(): the git commit the build comes from
# ("-dirty" when tracked files differ from it; "unknown" outside a git checkout). Run at every
# build; the file is rewritten only when the commit changes, so nothing else recompiles.
execute_process(COMMAND git -C ${SRC} rev-parse HEAD OUTPUT_VARIABLE commit
                OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR commit STREQUAL "")
  set(commit "unknown")
else()
  execute_process(COMMAND git -C ${SRC} status --porcelain --untracked-files=no OUTPUT_VARIABLE changes
                  ERROR_QUIET)
  if(NOT changes STREQUAL "")
    set(commit "${commit}-dirty")
  endif()
endif()
set(content "// Generated at build time by cmake/source_commit.cmake. Do not edit.\n#include \"core/version.h\"\nnamespace tessera {\nconst char* SourceCommit() { return \"${commit}\"; }\n}  // namespace tessera\n")
set(old "")
if(EXISTS ${OUT})
  file(READ ${OUT} old)
endif()
if(NOT old STREQUAL content)
  file(WRITE ${OUT} "${content}")
endif()
