#!/usr/bin/env bash
# The CUDA device suite and the GPU benchmark in one go, for a GPU machine borrowed for minutes
# (docs/build.md, "CUDA"): every phase has its own time limit and writes its log to $OUT, so a
# phase that fails or runs long still leaves the others' results.
#
#   tools/gpu_suite.sh [PREBUILT_CORE_SO]
#
# PREBUILT_CORE_SO: an extension built elsewhere with -DSD_CUDA=ON for this machine's Python and GPU
# (e.g. -DCMAKE_CUDA_ARCHITECTURES=90-real -DSD_GGML_NATIVE=OFF -DGGML_AVX2=ON ..., so its CPU code
# does not depend on the build machine's CPU); .xz is unpacked. Without it, or if it does not import,
# the extension is built here from SD_GGML_SDIST (the pinned ggml sdist) with every core.
# The reference side (diffusers, transformers, torch) must be importable; WHEELS=dir installs
# wheels from dir into a private site folder first (machines without a registry).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-suite}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee -a "$OUT/summary.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$OUT/summary.txt"

if [ -n "${WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# cuBLAS / the CUDA runtime from NVIDIA's wheels in this Python, when the extension's RPATH misses them
NV_LIB=$($PY -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13', 'lib'))" 2>/dev/null)
[ -n "$NV_LIB" ] && export LD_LIBRARY_PATH="$NV_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"

if [ -n "${1:-}" ]; then
  case "$1" in
    *.xz) $PY -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
            "$1" python/sdcpp/"$(basename "${1%.xz}")" ;;
    *) cp "$1" python/sdcpp/ ;;
  esac
fi
if ! $PY -c "import sdcpp._core" 2>"$OUT/import.txt"; then
  log "prebuilt extension does not import ($(tail -1 "$OUT/import.txt")): building here"
  PB=$($PY -m pybind11 --cmakedir)
  timeout 420 bash -c "cmake -S . -B /tmp/build-cuda -G Ninja -DSD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real \
      -DSD_GGML_SDIST=${SD_GGML_SDIST:-} -DSD_DEV_INPLACE=ON -DPython_EXECUTABLE=$(command -v $PY) -Dpybind11_DIR=$PB \
      && cmake --build /tmp/build-cuda -j$(nproc)" > "$OUT/build.txt" 2>&1
  log "build rc $? ($(tail -1 "$OUT/build.txt"))"
fi
$PY -c "import json, sdcpp; print(json.dumps(sdcpp.system_info(), indent=1, default=str))" > "$OUT/system_info.json" 2>&1
log "system_info: $(grep -c cuda "$OUT/system_info.json") lines naming cuda"

# 1. the device suite: engine parity (U-Net, VAE, tiling, TAESD, CLIP, ControlNet), txt2img and
#    LoRA parity against diffusers, every node on the GPU (tests/conftest.py checks that)
export SDCPP_TEST_DEVICE=cuda SDCPP_FIXTURE_CACHE=/tmp/fixtures PYTHONUNBUFFERED=1
timeout "${SUITE_S:-360}" $PY -m pytest -q -p no:cacheprovider -m device -rfE --durations=15 --timeout 240 \
  --junitxml="$OUT/junit.xml" tests/engine tests/pipeline/test_txt2img_parity.py tests/lora/test_lora_parity.py \
  > "$OUT/suite.txt" 2>&1
log "device suite rc $?: $(tail -1 "$OUT/suite.txt")"

# 2. U-Net s/step on the GPU, sdcpp f16 against diffusers f16 on the same GPU, batch 2 (CFG)
unset SDCPP_TEST_DEVICE
timeout "${BENCH_S:-150}" bash -c "$PY bench/bench_unet.py --device cuda --model sd15 --latent 64 \
    --configs sdcpp-f16,diffusers-f16 --steps 5 --warmup 2 --threads 8 --json $OUT/bench_sd15.json; \
  $PY bench/bench_unet.py --device cuda --model ssd-1b --latent 128 \
    --configs sdcpp-f16,diffusers-f16 --steps 5 --warmup 2 --threads 8 --json $OUT/bench_ssd1b.json" \
  > "$OUT/bench.txt" 2>&1
log "bench rc $?"
grep -A4 "^config" "$OUT/bench.txt" | tee -a "$OUT/summary.txt"
