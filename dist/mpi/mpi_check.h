// The checking macro every MPI call in tessera goes through.
//
// TESSERA_MPI_CHECK(MPI_Barrier(comm)) throws tessera::dist::CommError naming the call and the
// library's text for the error code. It only sees errors on communicators whose error handler
// is MPI_ERRORS_RETURN (tessera's process groups set it); with MPI's default handler,
// MPI_ERRORS_ARE_FATAL, the library aborts the job before returning.
#pragma once

#include <mpi.h>

#include <string>

#include "dist/process_group.h"

namespace tessera::dist {

// "MPI_ERR_TRUNCATE: message truncated" style text for an MPI error code.
inline std::string MpiErrorString(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length));
}

}  // namespace tessera::dist

#define TESSERA_MPI_CHECK(call)                                                     \
  do {                                                                              \
    const int tessera_mpi_rc_ = (call);                                             \
    if (tessera_mpi_rc_ != MPI_SUCCESS)                                             \
      TESSERA_THROW(::tessera::dist::CommError, #call,                              \
                    " failed: ", ::tessera::dist::MpiErrorString(tessera_mpi_rc_)); \
  } while (0)
