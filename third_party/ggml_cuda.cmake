# The CUDA toolkit for ggml's CUDA backend (SD_CUDA=ON), included by ggml.cmake before ggml is
# configured. Three jobs:
#   1. find nvcc, cudart and cuBLAS, taking cuBLAS from NVIDIA's pip wheels (SD_CUDA_EXTRA_ROOT)
#      when the toolkit has none, and fail with what to install otherwise;
#   2. pick GPU architectures when CMAKE_CUDA_ARCHITECTURES is unset (a wheel needs a fixed list,
#      ggml's "native" fails on a machine without a GPU);
#   3. build without libcuda (the driver) when no driver or toolkit stub is there to link.
# It sets SD_CUDA_WHEEL_RPATH: where NVIDIA's wheels put cuBLAS/cudart, relative to a library
# installed in site-packages/sdcpp, so `pip install sdcpp[cuda]` finds them at run time.

set(SD_CUDA_EXTRA_ROOT "" CACHE PATH
    "NVIDIA's pip wheels for cuBLAS/cudart (site-packages/nvidia), used when the CUDA toolkit lacks them")

find_package(CUDAToolkit QUIET)
if(NOT CUDAToolkit_FOUND)
  message(FATAL_ERROR "SD_CUDA=ON: the CUDA toolkit was not found. Install it (nvcc and cuBLAS) and put nvcc on PATH, "
                      "or point CMake at it with -DCUDAToolkit_ROOT=/usr/local/cuda.")
endif()
set(_cu_major "${CUDAToolkit_VERSION_MAJOR}")

# 1. cuBLAS from the wheels. Their layout differs by CUDA major version:
#    CUDA 13: nvidia/cu13/{lib,include} shared by every nvidia-* wheel (libcublas.so.13)
#    CUDA 12: nvidia/cublas/{lib,include}, nvidia/cuda_runtime/{lib,include}
# The wheels carry only the versioned file (libcublas.so.13), which find_library's plain
# "cublas" does not match, so the imported targets are made here; FindCUDAToolkit (run again
# inside ggml) keeps a CUDA::cublas that already exists.
if(NOT TARGET CUDA::cublas AND SD_CUDA_EXTRA_ROOT)
  set(_wheel_dirs "${SD_CUDA_EXTRA_ROOT}/cu${_cu_major}" "${SD_CUDA_EXTRA_ROOT}/cublas" "${SD_CUDA_EXTRA_ROOT}")
  find_library(SD_CUBLAS_LIBRARY NAMES libcublas.so.${_cu_major} cublas PATHS ${_wheel_dirs}
               PATH_SUFFIXES lib NO_DEFAULT_PATH)
  find_library(SD_CUBLASLT_LIBRARY NAMES libcublasLt.so.${_cu_major} cublasLt PATHS ${_wheel_dirs}
               PATH_SUFFIXES lib NO_DEFAULT_PATH)
  find_path(SD_CUBLAS_INCLUDE_DIR cublas_v2.h PATHS ${_wheel_dirs} PATH_SUFFIXES include NO_DEFAULT_PATH)
  if(SD_CUBLAS_LIBRARY AND SD_CUBLASLT_LIBRARY AND SD_CUBLAS_INCLUDE_DIR)
    add_library(CUDA::cublasLt UNKNOWN IMPORTED)
    set_target_properties(CUDA::cublasLt PROPERTIES IMPORTED_LOCATION "${SD_CUBLASLT_LIBRARY}"
                          INTERFACE_INCLUDE_DIRECTORIES "${CUDAToolkit_INCLUDE_DIRS};${SD_CUBLAS_INCLUDE_DIR}")
    add_library(CUDA::cublas UNKNOWN IMPORTED)
    set_target_properties(CUDA::cublas PROPERTIES IMPORTED_LOCATION "${SD_CUBLAS_LIBRARY}"
                          INTERFACE_INCLUDE_DIRECTORIES "${CUDAToolkit_INCLUDE_DIRS};${SD_CUBLAS_INCLUDE_DIR}"
                          INTERFACE_LINK_LIBRARIES CUDA::cublasLt)
    message(STATUS "sdcpp: cuBLAS from NVIDIA's wheels: ${SD_CUBLAS_LIBRARY}")
  endif()
endif()
if(NOT TARGET CUDA::cublas)
  if(SD_CUDA_EXTRA_ROOT)
    set(_where " nor under SD_CUDA_EXTRA_ROOT=${SD_CUDA_EXTRA_ROOT} (looked in cu${_cu_major}/ and cublas/ for "
               "lib/libcublas.so.${_cu_major}, lib/libcublasLt.so.${_cu_major} and include/cublas_v2.h)")
  else()
    set(_where "")
  endif()
  message(FATAL_ERROR "SD_CUDA=ON: the CUDA ${CUDAToolkit_VERSION} toolkit at ${CUDAToolkit_LIBRARY_DIR} has no cuBLAS${_where}. "
                      "Install cuBLAS (the libcublas-dev package of your CUDA version), or take it from NVIDIA's wheel: "
                      "`pip install \"nvidia-cublas==${_cu_major}.*\"` and pass "
                      "-DSD_CUDA_EXTRA_ROOT=$(python -c \"import nvidia; print(nvidia.__path__[0])\").")
endif()
if(NOT TARGET CUDA::cudart)
  message(FATAL_ERROR "SD_CUDA=ON: the CUDA toolkit at ${CUDAToolkit_LIBRARY_DIR} has no CUDA runtime (libcudart). "
                      "Install the full toolkit, or point -DCUDAToolkit_ROOT at one.")
endif()

# 2. Architectures. ggml's own default is "native" when GGML_NATIVE (SD_NATIVE=ON), which needs
# a GPU at build time; otherwise a list. Ours, when none is given (CMAKE_CUDA_ARCHITECTURES):
#   75-virtual  PTX for Turing (T4, RTX 20xx) and, JIT-compiled on first use, anything newer
#   80, 86, 89  A100; RTX 30xx/A10/A40; RTX 40xx/L4/L40 (device code)
#   90          H100/H200 (device code)
#   120a        RTX 50xx / RTX PRO Blackwell (device code; CUDA >= 12.8; ggml turns 120 into 120a)
# B200 (sm_100) runs the 75 PTX through the driver's JIT. Each architecture adds ~20-25 min of
# compile on two cores: pass -DCMAKE_CUDA_ARCHITECTURES=89 (say) to build only yours.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(_gpu_caps "")
  if(SD_NATIVE)
    # ggml's "native" asks the GPU present; without one it would hand nvcc an empty list
    find_program(SD_NVIDIA_SMI nvidia-smi)
    if(SD_NVIDIA_SMI)
      execute_process(COMMAND "${SD_NVIDIA_SMI}" --query-gpu=compute_cap --format=csv,noheader
                      OUTPUT_VARIABLE _gpu_caps ERROR_QUIET RESULT_VARIABLE _smi_rc)
      if(NOT _smi_rc EQUAL 0)
        set(_gpu_caps "")
      endif()
    endif()
  endif()
  if(_gpu_caps MATCHES "[0-9]")
    message(STATUS "sdcpp: CUDA architectures from the GPUs present (ggml's native)")
  else()
    set(_archs 75-virtual 80-real 86-real 89-real 90-real)
    if(CUDAToolkit_VERSION VERSION_GREATER_EQUAL "12.8")
      list(APPEND _archs 120a-real)
    endif()
    set(CMAKE_CUDA_ARCHITECTURES "${_archs}" CACHE STRING "GPU architectures for ggml's CUDA backend" FORCE)
    message(STATUS "sdcpp: CUDA architectures ${_archs} (no GPU visible or SD_NATIVE=OFF); "
                   "-DCMAKE_CUDA_ARCHITECTURES=<yours> builds much faster")
  endif()
endif()

# 3. Without a driver (libcuda.so) or the toolkit's stub to link against, ggml's CUDA memory
# pool is built without the driver's virtual memory management (VMM): plain cudaMalloc pool.
if(NOT TARGET CUDA::cuda_driver)
  if(DEFINED GGML_CUDA_NO_VMM AND NOT GGML_CUDA_NO_VMM)
    message(FATAL_ERROR "SD_CUDA=ON with GGML_CUDA_NO_VMM=OFF needs libcuda.so (the NVIDIA driver, or the toolkit's "
                        "lib64/stubs/libcuda.so) at build time; none was found near ${CUDAToolkit_LIBRARY_DIR}. "
                        "Install the driver or the stub, or build with -DGGML_CUDA_NO_VMM=ON.")
  endif()
  message(STATUS "sdcpp: no libcuda (driver or stub) to link: GGML_CUDA_NO_VMM=ON")
  set(GGML_CUDA_NO_VMM ON CACHE BOOL "ggml's CUDA pool without the driver's virtual memory management" FORCE)
endif()

# Where NVIDIA's wheels put the runtime libraries, seen from site-packages/sdcpp.
if(_cu_major GREATER_EQUAL 13)
  set(SD_CUDA_WHEEL_RPATH "nvidia/cu${_cu_major}/lib")
else()
  set(SD_CUDA_WHEEL_RPATH "nvidia/cublas/lib" "nvidia/cuda_runtime/lib")
endif()
