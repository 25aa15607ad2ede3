# Packaging of guestmem beside the CMake package: a pkg-config file per installed library,
# and (for a top-level build) a Debian package, libguestmem-dev, made by CPack.
#
#   cmake -S . -B build/deb -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr
#   cmake --build build/deb --target guestmem guestmem_snapshot guestmem_kvm
#   (cd build/deb && cpack -G DEB)        # libguestmem-dev_0.1.0_amd64.deb
#
# Included by the top-level CMakeLists.txt after the libraries are defined, so it knows which
# optional ones (snapshot, kvm) this build has.

# The prefix as the .pc file names it: found from the file's own place (LIBDIR/pkgconfig), so
# that it works wherever the installed tree ends up (a --prefix install, /usr from the .deb);
# the configured prefix itself when LIBDIR or INCLUDEDIR is absolute.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(GUESTMEM_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(GUESTMEM_PC_LIBDIR "${CMAKE_INSTALL_FULL_LIBDIR}")
  set(GUESTMEM_PC_INCLUDEDIR "${CMAKE_INSTALL_FULL_INCLUDEDIR}")
else()
  file(RELATIVE_PATH _guestmem_up "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
  set(GUESTMEM_PC_PREFIX "\${pcfiledir}/${_guestmem_up}")
  set(GUESTMEM_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
  set(GUESTMEM_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()

# Writes and installs NAME.pc for the library TARGET (file name lib<TARGET>). REQUIRES names
# other pkg-config modules; LIBS are the libraries a user must link besides TARGET's. A
# static library needs them on every link, a shared one only when linking statically.
function(guestmem_pkg_config name target description requires libs)
  set(GUESTMEM_PC_NAME ${name})
  set(GUESTMEM_PC_DESCRIPTION "${description}")
  set(GUESTMEM_PC_REQUIRES "${requires}")
  set(GUESTMEM_PC_LIB ${target})
  if(BUILD_SHARED_LIBS)
    set(GUESTMEM_PC_LIBS "")
    set(GUESTMEM_PC_LIBS_PRIVATE "${libs}")
  else()
    set(GUESTMEM_PC_LIBS "${libs}")
    set(GUESTMEM_PC_LIBS_PRIVATE "")
  endif()
  configure_file(${PROJECT_SOURCE_DIR}/cmake/guestmem.pc.in
                 ${PROJECT_BINARY_DIR}/pkgconfig/${name}.pc @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/pkgconfig/${name}.pc
          DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endfunction()

set(_guestmem_dl_libs "")
foreach(_guestmem_lib IN LISTS CMAKE_DL_LIBS)
  string(APPEND _guestmem_dl_libs " -l${_guestmem_lib}")
endforeach()
string(STRIP "${_guestmem_dl_libs}" _guestmem_dl_libs)
guestmem_pkg_config(guestmem guestmem "${PROJECT_DESCRIPTION}" "" "${_guestmem_dl_libs}")
if(TARGET guestmem_snapshot)
  guestmem_pkg_config(guestmem-snapshot guestmem_snapshot
    "guestmem snapshots: save and restore of guest memory" "guestmem" "-lxxhash")
endif()
if(TARGET guestmem_kvm)
  guestmem_pkg_config(guestmem-kvm guestmem_kvm
    "guestmem KVM memory slots and dirty logs" "guestmem" "")
endif()

# The Debian package: headers, libraries, the CMake package and the pkg-config files, with
# what a consumer's build needs: a C++23 standard library, and xxHash to link the snapshot
# library. Only for a top-level build, so that a project that adds guestmem with
# add_subdirectory or FetchContent keeps its own CPack settings.
if(PROJECT_IS_TOP_LEVEL)
  set(CPACK_PACKAGE_NAME libguestmem-dev)
  set(CPACK_PACKAGE_VENDOR guestmem)
  set(CPACK_PACKAGE_CONTACT "guestmem maintainers <guestmem@localhost>")
  set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
  set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
  set(CPACK_GENERATOR DEB)
  set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
  set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
  set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "${PROJECT_DESCRIPTION}
 C++23 headers and libraries for virtual-machine monitors, device models and live-migration
 code that read and write a guest's memory, with the CMake package (find_package(guestmem))
 and pkg-config files (guestmem, guestmem-snapshot, guestmem-kvm).")
  set(_guestmem_deb_depends "libstdc++-12-dev | libstdc++-dev")
  if(TARGET guestmem_snapshot)
    string(APPEND _guestmem_deb_depends ", libxxhash-dev")
  endif()
  set(CPACK_DEBIAN_PACKAGE_DEPENDS "${_guestmem_deb_depends}")
  # A shared build's libraries need the C and C++ runtime at run time; dpkg-shlibdeps works
  # out the exact versions from the libraries themselves.
  if(BUILD_SHARED_LIBS)
    set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
  endif()
  include(CPack)
endif()
