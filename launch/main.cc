#include <cstdio>
#include <cstring>
#include "tessera/config.h"
int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--version") == 0) std::printf("tessera %s\n", TESSERA_VERSION);
  return 0;
}
