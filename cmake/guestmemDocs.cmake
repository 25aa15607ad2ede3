# The API reference: `cmake --build <dir> --target docs` runs Doxygen (Debian's doxygen) on the
# public headers and writes <dir>/docs/html/index.html. The build fails on any warning, an
# undocumented public declaration included (Doxyfile.in). Only where Doxygen is found, and
# only for a top-level build, so that a project that adds guestmem keeps its own `docs`.
if(PROJECT_IS_TOP_LEVEL)
  find_package(Doxygen QUIET)
  if(DOXYGEN_FOUND)
    set(GUESTMEM_DOCS_OUTPUT ${PROJECT_BINARY_DIR}/docs)
    configure_file(${PROJECT_SOURCE_DIR}/Doxyfile.in ${PROJECT_BINARY_DIR}/Doxyfile @ONLY)
    file(GLOB _guestmem_public_headers CONFIGURE_DEPENDS
         ${PROJECT_SOURCE_DIR}/include/guestmem/*.hpp)
    add_custom_command(
      OUTPUT ${GUESTMEM_DOCS_OUTPUT}/html/index.html
      COMMAND ${CMAKE_COMMAND} -E make_directory ${GUESTMEM_DOCS_OUTPUT}
      COMMAND ${DOXYGEN_EXECUTABLE} ${PROJECT_BINARY_DIR}/Doxyfile
      DEPENDS ${PROJECT_BINARY_DIR}/Doxyfile ${_guestmem_public_headers}
      COMMENT "Doxygen: the API reference in ${GUESTMEM_DOCS_OUTPUT}/html"
      VERBATIM)
    add_custom_target(docs DEPENDS ${GUESTMEM_DOCS_OUTPUT}/html/index.html)
  else()
    message(STATUS "guestmem: doxygen not found; no `docs` target (install doxygen)")
  endif()
endif()
