# Helpers shared by every layer: one short call per module (see STYLE.md, practice 1).
include_guard(GLOBAL)
include(CMakePackageConfigHelpers)

# Private build flags: warnings and the language standard. Linked PRIVATE (build interface
# only) so that programs embedding Troupe never inherit our -Werror.
add_library(troupe_flags INTERFACE)
target_compile_features(troupe_flags INTERFACE cxx_std_20)
target_compile_options(troupe_flags INTERFACE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
  $<$<BOOL:${TROUPE_WERROR}>:-Werror>)

# troupe_add_module(<name> [PUBLIC deps...] [PRIVATE deps...])
#   Builds src/*.cpp (except *_test.cpp) into the static library troupe::<name>, with public
#   headers under include/troupe/<name>/. src/*_test.cpp become the test executable
#   troupe_<name>_test, registered with ctest under the label "unit".
function(troupe_add_module name)
  cmake_parse_arguments(M "" "" "PUBLIC;PRIVATE;TEST_DEPS" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/*.cpp)
  file(GLOB tests CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/*_test.cpp)
  if(tests)
    list(REMOVE_ITEM srcs ${tests})
  endif()
  set(lib troupe_${name})
  add_library(${lib} STATIC ${srcs})
  add_library(troupe::${name} ALIAS ${lib})
  set_target_properties(${lib} PROPERTIES EXPORT_NAME ${name} POSITION_INDEPENDENT_CODE ON)
  target_include_directories(${lib}
    PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
    PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_compile_features(${lib} PUBLIC cxx_std_20)
  target_link_libraries(${lib} PUBLIC ${M_PUBLIC} PRIVATE $<BUILD_INTERFACE:troupe_flags> ${M_PRIVATE})
  install(TARGETS ${lib} EXPORT troupeTargets)
  install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  if(TROUPE_BUILD_TESTS AND tests)
    add_executable(${lib}_test ${tests})
    target_include_directories(${lib}_test PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
    target_link_libraries(${lib}_test PRIVATE ${lib} troupe_flags GTest::gmock GTest::gtest_main ${M_TEST_DEPS})
    gtest_discover_tests(${lib}_test DISCOVERY_MODE PRE_TEST PROPERTIES LABELS unit TIMEOUT 120)
  endif()
endfunction()

# _troupe_flatc_generate(<target> <outdir> <outs-var> <schema.fbs>...): the flatc rule both
# helpers below share; <outs-var> receives the generated headers.
function(_troupe_flatc_generate target outdir outs_var)
  set(outs)
  foreach(schema ${ARGN})
    get_filename_component(base ${schema} NAME_WE)
    set(out ${outdir}/${base}_generated.h)
    add_custom_command(OUTPUT ${out}
      COMMAND ${TROUPE_FLATC} --cpp --cpp-std c++17 --scoped-enums --gen-name-strings --reflect-names
              -o ${outdir} ${CMAKE_CURRENT_SOURCE_DIR}/${schema}
      DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${schema} ${TROUPE_FLATC}
      COMMENT "flatc ${schema}" VERBATIM)
    list(APPEND outs ${out})
  endforeach()
  add_custom_target(${target}_fbs DEPENDS ${outs})
  add_dependencies(${target} ${target}_fbs)
  set(${outs_var} ${outs} PARENT_SCOPE)
endfunction()

# troupe_flatc(<target> <schema.fbs>...)
#   Troupe's own wire schemas: <name>_generated.h in <build>/generated/troupe/serialization/, on
#   <target>'s public include path and installed with the headers.
function(troupe_flatc target)
  _troupe_flatc_generate(${target} ${CMAKE_CURRENT_BINARY_DIR}/generated/troupe/serialization outs ${ARGN})
  target_sources(${target} PRIVATE ${outs})
  target_include_directories(${target} PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_BINARY_DIR}/generated>)
  install(FILES ${outs} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/troupe/serialization)
endfunction()

# troupe_flatc_private(<target> <schema.fbs>...)
#   For examples, tests and benchmarks: headers in the build tree on <target>'s include path
#   (INTERFACE for interface libraries, else PRIVATE).
function(troupe_flatc_private target)
  set(outdir ${CMAKE_CURRENT_BINARY_DIR}/${target}_gen)
  _troupe_flatc_generate(${target} ${outdir} outs ${ARGN})
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "INTERFACE_LIBRARY")
    target_include_directories(${target} INTERFACE ${outdir})
  else()
    target_include_directories(${target} PRIVATE ${outdir})
  endif()
endfunction()

function(troupe_install_package)
  set(dest ${CMAKE_INSTALL_LIBDIR}/cmake/troupe)
  install(EXPORT troupeTargets NAMESPACE troupe:: DESTINATION ${dest})
  configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/troupeConfig.cmake.in
    ${PROJECT_BINARY_DIR}/troupeConfig.cmake INSTALL_DESTINATION ${dest})
  write_basic_package_version_file(${PROJECT_BINARY_DIR}/troupeConfigVersion.cmake
    COMPATIBILITY SameMinorVersion)
  install(FILES ${PROJECT_BINARY_DIR}/troupeConfig.cmake ${PROJECT_BINARY_DIR}/troupeConfigVersion.cmake
    DESTINATION ${dest})
endfunction()
