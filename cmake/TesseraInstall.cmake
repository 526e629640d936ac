# cmake --install BUILD [--prefix PREFIX] puts tessera where other CMake projects find it:
#
#   PREFIX/include/{core,dist,datasets,store,jobs,tessera}/...   headers, generated ones included
#   PREFIX/lib/libtessera_*.a                                      the training libraries
#   PREFIX/lib/cmake/tessera/tesseraConfig.cmake                   find_package(tessera)
#   PREFIX/bin/tessera, PREFIX/share/tessera/plot_runs.py          the command
#
# A downstream project then writes
#   find_package(tessera 0.1 REQUIRED)
#   target_link_libraries(app PRIVATE tessera::tessera)
# and gets the core, datasets, data parallelism (dist), checkpoints, the model store and the
# trainer (jobs/trainer.h). The server (serve/) and Slurm submission are parts of the command,
# not of the package.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(TESSERA_PACKAGE_LIBRARIES
  tessera_options tessera_core tessera_io tessera_model_spec tessera_datasets tessera_dist tessera_store tessera_jobs)
# tessera::tessera: everything above in one name (the target `tessera` is the command).
add_library(tessera_package INTERFACE)
target_link_libraries(tessera_package INTERFACE tessera_jobs tessera_store tessera_datasets tessera_dist tessera_io
                      tessera_model_spec tessera_core)
set_target_properties(tessera_package PROPERTIES EXPORT_NAME tessera)
add_library(tessera::tessera ALIAS tessera_package)
foreach(t ${TESSERA_PACKAGE_LIBRARIES})
  string(REPLACE "tessera_" "" short ${t})
  set_target_properties(${t} PROPERTIES EXPORT_NAME ${short})  # tessera::core, tessera::jobs, ...
endforeach()

install(TARGETS ${TESSERA_PACKAGE_LIBRARIES} tessera_package EXPORT tesseraTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS tessera RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${PROJECT_SOURCE_DIR}/launch/plot_runs.py DESTINATION ${CMAKE_INSTALL_DATADIR}/tessera)
foreach(dir core dist datasets store jobs)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/${dir}/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/${dir}
          FILES_MATCHING PATTERN "*.h" PATTERN "*.proto")
endforeach()
# Generated: tessera/config.h and the protobuf headers (core/model_spec.pb.h, jobs/job.pb.h, ...).
install(DIRECTORY ${PROJECT_BINARY_DIR}/generated/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h" PATTERN "serve" EXCLUDE)

set(TESSERA_CONFIG_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/tessera)
install(EXPORT tesseraTargets NAMESPACE tessera:: DESTINATION ${TESSERA_CONFIG_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/tesseraConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/tesseraConfig.cmake INSTALL_DESTINATION ${TESSERA_CONFIG_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/tesseraConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/tesseraConfig.cmake ${PROJECT_BINARY_DIR}/tesseraConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/FindCUDNN.cmake ${PROJECT_SOURCE_DIR}/cmake/FindNCCL.cmake
              ${PROJECT_SOURCE_DIR}/cmake/FindDNNL.cmake ${PROJECT_SOURCE_DIR}/cmake/FindLibdeflate.cmake
        DESTINATION ${TESSERA_CONFIG_DIR})
