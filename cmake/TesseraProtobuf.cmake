# tessera_protoc(OUT_CC path/to/file.proto [DEPENDS other.proto ...]): generates
# BUILD/generated/path/to/file.pb.{h,cc} (included as "path/to/file.pb.h") with Debian's protoc,
# every .proto path relative to the source root, and sets OUT_CC to the generated .cc.
function(tessera_protoc out_cc proto)
  cmake_parse_arguments(ARG "" "" "DEPENDS" ${ARGN})
  get_filename_component(dir ${proto} DIRECTORY)
  get_filename_component(name ${proto} NAME_WE)
  set(out ${PROJECT_BINARY_DIR}/generated/${dir})
  set(deps)
  foreach(d ${ARG_DEPENDS})
    list(APPEND deps ${PROJECT_SOURCE_DIR}/${d})
  endforeach()
  add_custom_command(
    OUTPUT ${out}/${name}.pb.h ${out}/${name}.pb.cc
    COMMAND ${CMAKE_COMMAND} -E make_directory ${out}
    COMMAND protobuf::protoc --cpp_out=${PROJECT_BINARY_DIR}/generated -I ${PROJECT_SOURCE_DIR}
            ${PROJECT_SOURCE_DIR}/${proto}
    DEPENDS ${PROJECT_SOURCE_DIR}/${proto} ${deps} protobuf::protoc
    COMMENT "protoc ${proto}")
  set(${out_cc} ${out}/${name}.pb.cc PARENT_SCOPE)
endfunction()
