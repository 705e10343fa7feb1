# How ggml comes in. ggml is never committed: it is either fetched from PyPI as the
# libggml-python sdist (pinned by version and sha256) and built inside our build for this
# CPU, or taken from a source directory or an installed CMake package the user points at.
#
#   SD_GGML_PROVIDER = fetch   (default) download the pinned sdist, build ggml statically
#                    = source  build ggml from SD_GGML_SOURCE_DIR (offline)
#                    = package find_package(ggml) from CMAKE_PREFIX_PATH / ggml_DIR (offline)
# The result is the target `sdcpp_ggml` that the extension links.

set(SD_GGML_PROVIDER "fetch" CACHE STRING "Where ggml comes from: fetch | source | package")
set_property(CACHE SD_GGML_PROVIDER PROPERTY STRINGS fetch source package)
set(SD_GGML_SOURCE_DIR "" CACHE PATH "A ggml source tree (the folder with ggml's CMakeLists.txt), for SD_GGML_PROVIDER=source")
set(SD_GGML_SDIST "" CACHE FILEPATH "A local copy of the pinned libggml-python sdist, for offline fetch builds")

# The pinned sdist: libggml-python 0.20.2.post1 = ggml 0.20.2 (MIT).
set(SD_GGML_SDIST_URL "https://files.pythonhosted.org/packages/c7/d1/630570961ac1bc3471ccbb81e6376273d71a9063edc8b00b950a32a5daee/libggml_python-0.20.2.post1.tar.gz")
set(SD_GGML_SDIST_SHA256 "e47ff53506342959ffb3ce15380b82828fea10ec5f208f9ef6915895f1a7a176")

if(SD_METAL AND NOT APPLE)
  message(FATAL_ERROR "SD_METAL=ON needs macOS (Apple's Metal). On Linux or Windows use -DSD_CUDA=ON or -DSD_VULKAN=ON.")
endif()
if(SD_CUDA)
  include("${CMAKE_CURRENT_LIST_DIR}/ggml_cuda.cmake")
endif()
if(SD_VULKAN)
  find_package(Vulkan QUIET COMPONENTS glslc)
  if(NOT Vulkan_FOUND OR NOT Vulkan_GLSLC_EXECUTABLE)
    message(FATAL_ERROR "SD_VULKAN=ON: the Vulkan SDK (headers, loader and the glslc shader compiler) was not found. "
                        "On Debian/Ubuntu: apt-get install libvulkan-dev glslc; elsewhere install the LunarG Vulkan SDK.")
  endif()
endif()

function(sd_configure_ggml_options)
  set(BUILD_SHARED_LIBS OFF CACHE BOOL "" FORCE)  # native builds link ggml in (see below for portable)
  set(GGML_STATIC OFF CACHE BOOL "" FORCE)
  set(GGML_BUILD_TESTS OFF CACHE BOOL "" FORCE)
  set(GGML_BUILD_EXAMPLES OFF CACHE BOOL "" FORCE)
  set(GGML_CCACHE OFF CACHE BOOL "" FORCE)
  # Fast CPU path: host-specific code plus llamafile's sgemm (NATIVE without LLAMAFILE is
  # pathologically slow on SD-shaped f16 products; see docs/build.md).
  # SD_GGML_NATIVE=OFF with SD_NATIVE=ON: one static extension whose ggml CPU code targets the
  # GGML_AVX2/GGML_AVX512... levels passed on the command line instead of the build machine's
  # CPU, for a build made on one machine and run on another (a GPU box); our own kernels pick
  # their ISA at run time either way.
  if(DEFINED SD_GGML_NATIVE)
    set(GGML_NATIVE ${SD_GGML_NATIVE} CACHE BOOL "" FORCE)
  else()
    set(GGML_NATIVE ${SD_NATIVE} CACHE BOOL "" FORCE)
  endif()
  if(NOT SD_NATIVE)
    # Portable: ggml's CPU backend is built once per instruction-set level (x64 .. AVX2 ..
    # AVX-512 .. AMX on x86; armv8.0 .. SVE/SME on Arm) as shared modules next to the
    # extension, and ggml loads the best one for the running CPU (runtime/backends.h).
    # GPU backends become loadable modules too, so a CUDA wheel still runs on a machine
    # without the CUDA runtime.
    set(BUILD_SHARED_LIBS ON CACHE BOOL "" FORCE)
    set(GGML_BACKEND_DL ON CACHE BOOL "" FORCE)
    if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|x64|aarch64|arm64|ARM64)$")
      set(GGML_CPU_ALL_VARIANTS ON CACHE BOOL "" FORCE)
    endif()
  endif()
  set(GGML_LLAMAFILE ON CACHE BOOL "" FORCE)
  set(GGML_CUDA ${SD_CUDA} CACHE BOOL "" FORCE)
  set(GGML_VULKAN ${SD_VULKAN} CACHE BOOL "" FORCE)
  set(GGML_METAL ${SD_METAL} CACHE BOOL "" FORCE)
  if(SD_METAL)
    set(GGML_METAL_EMBED_LIBRARY ON CACHE BOOL "" FORCE)
  endif()
endfunction()

if(SD_GGML_PROVIDER STREQUAL "package")
  # Wheels of libggml-python install into lib64, which CMake skips on Debian-like systems.
  set_property(GLOBAL PROPERTY FIND_LIBRARY_USE_LIB64_PATHS TRUE)
  find_package(ggml CONFIG REQUIRED)
  foreach(opt CUDA VULKAN METAL)
    if(SD_${opt} AND NOT GGML_${opt})
      message(FATAL_ERROR "SD_${opt}=ON but the ggml package at ${ggml_DIR} was built without GGML_${opt}. "
                          "Use SD_GGML_PROVIDER=fetch (builds ggml with it) or a ggml package built with -DGGML_${opt}=ON.")
    endif()
  endforeach()
  add_library(sdcpp_ggml INTERFACE)
  target_link_libraries(sdcpp_ggml INTERFACE ggml::ggml)
  set(SD_GGML_ORIGIN "package ${ggml_DIR}")
else()
  if(SD_GGML_PROVIDER STREQUAL "source")
    if(NOT EXISTS "${SD_GGML_SOURCE_DIR}/CMakeLists.txt")
      message(FATAL_ERROR "SD_GGML_PROVIDER=source needs SD_GGML_SOURCE_DIR pointing at a ggml source tree "
                          "(the folder holding ggml's CMakeLists.txt); got '${SD_GGML_SOURCE_DIR}'.")
    endif()
    set(_ggml_src "${SD_GGML_SOURCE_DIR}")
  elseif(SD_GGML_PROVIDER STREQUAL "fetch")
    include(FetchContent)
    if(SD_GGML_SDIST)
      set(_url "${SD_GGML_SDIST}")
    else()
      set(_url "${SD_GGML_SDIST_URL}")
    endif()
    FetchContent_Declare(libggml_sdist URL "${_url}" URL_HASH SHA256=${SD_GGML_SDIST_SHA256}
                         DOWNLOAD_EXTRACT_TIMESTAMP TRUE)
    FetchContent_GetProperties(libggml_sdist)
    if(NOT libggml_sdist_POPULATED)
      FetchContent_Populate(libggml_sdist)
    endif()
    set(_ggml_src "${libggml_sdist_SOURCE_DIR}/ggml")
  else()
    message(FATAL_ERROR "SD_GGML_PROVIDER must be fetch, source or package; got '${SD_GGML_PROVIDER}'.")
  endif()
  sd_configure_ggml_options()
  set(CMAKE_POSITION_INDEPENDENT_CODE ON)
  add_subdirectory("${_ggml_src}" "${CMAKE_BINARY_DIR}/ggml" EXCLUDE_FROM_ALL)
  add_library(sdcpp_ggml INTERFACE)
  target_link_libraries(sdcpp_ggml INTERFACE ggml)
  if(NOT SD_NATIVE)
    # libggml, libggml-base and every backend module travel inside the package, beside the
    # extension, and find each other there.
    set(SD_GGML_SHARED_TARGETS ggml ggml-base ${GGML_AVAILABLE_BACKENDS})
    if(APPLE)
      set(SD_RPATH_ORIGIN "@loader_path")
    else()
      set(SD_RPATH_ORIGIN "$ORIGIN")
    endif()
    set_target_properties(${SD_GGML_SHARED_TARGETS} PROPERTIES INSTALL_RPATH "${SD_RPATH_ORIGIN}"
                          BUILD_WITH_INSTALL_RPATH ON)
    if(SD_CUDA)
      # cuBLAS and cudart from NVIDIA's wheels (the `cuda` extra) in the same site-packages;
      # a system toolkit's libraries are found by the loader as usual
      list(TRANSFORM SD_CUDA_WHEEL_RPATH PREPEND "${SD_RPATH_ORIGIN}/../" OUTPUT_VARIABLE _cuda_rpath)
      set_property(TARGET ggml-cuda APPEND PROPERTY INSTALL_RPATH ${_cuda_rpath})
    endif()
    # Private copies inside the package: one unversioned file each (a wheel cannot hold the
    # libggml.so -> .so.0 -> .so.0.20.2 symlinks and would store three copies).
    set_property(TARGET ggml ggml-base PROPERTY VERSION)
    set_property(TARGET ggml ggml-base PROPERTY SOVERSION)
  endif()
  set(SD_GGML_ORIGIN "${SD_GGML_PROVIDER} ${_ggml_src}")
  set(SD_GGML_LICENSE_FILE "${_ggml_src}/LICENSE")
endif()
message(STATUS "sdcpp: ggml from ${SD_GGML_ORIGIN} (native=${SD_NATIVE} cuda=${SD_CUDA} vulkan=${SD_VULKAN} metal=${SD_METAL})")
