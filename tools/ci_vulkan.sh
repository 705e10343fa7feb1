#!/usr/bin/env bash
# The Vulkan device suite on lavapipe (Mesa's software Vulkan), for CI on Debian 12 as root
# (docs/build.md, "Vulkan" and "Testing on another device"):
#
#   1. apt: the Vulkan loader and headers, glslc, SPIR-V headers, Mesa's Vulkan drivers;
#   2. Debian 13's libvulkan-dev headers unpacked into a private folder (ggml 0.20.2's Vulkan
#      backend needs VK_EXT_layer_settings, newer than Debian 12's 1.3.239 headers); nothing
#      from trixie is installed system-wide;
#   3. the pinned ggml sdist from PyPI (pip download --no-binary) and sdcpp with -DSD_VULKAN=ON,
#      built in a folder of their own ($SDCPP_VK_WORK, default build/ci-vulkan) and assembled as
#      a package folder there: the CPU CI's installed sdcpp is left alone;
#   4. the device suite: SDCPP_TEST_DEVICE=vulkan over the engine, LoRA and txt2img parity tests
#      marked `device` (not `slow`: the real-size SD1.5 U-Net takes 10-20 minutes on lavapipe),
#      one pytest process per test file. Each file's result and time is printed; the script
#      fails if any test failed or any file's process crashed (no retries).
#
# Environment: PYTHON, the interpreter whose environment has the test dependencies (torch,
# diffusers, pytest: the CPU CI's .venv; default .venv/bin/python, else python3);
# SDCPP_VK_BUILD_ONLY=1 stops after step 3 (to run the suite, or part of it, by hand);
# SDCPP_VK_SUITE_ONLY=1 runs step 4 alone, on the package folder a previous run built;
# SDCPP_VK_SLOW=1 adds the `slow` device tests; SDCPP_VK_FILES="a.py b.py" other test files;
# SDCPP_VK=0 skips everything. The suite runs on Mesa 25 from bookworm-backports (unpacked into
# a private folder, nothing installed), whole graphs at a time; SDCPP_VK_MESA=system runs it on
# Debian 12's Mesa 22.3 instead, node by node (5-10x slower) (docs/build.md, "Vulkan").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${SDCPP_VK_WORK:-$root/build/ci-vulkan}
py=${PYTHON:-}
[[ -z "$py" && -x .venv/bin/python ]] && py=$root/.venv/bin/python
py=${py:-python3}
mkdir -p "$work"
t0=$(date +%s)
stamp() { echo "[ci-vulkan] $(( $(date +%s) - t0 ))s: $*"; }

# The README's test command (and so CI) ends with this script. It installs system packages, so
# it runs only where CI runs: Debian 12 as root. Anywhere else it says so loudly and passes;
# SDCPP_VK=0 skips it on purpose (e.g. a quick CPU-only run on the CI machine).
skip() {
  echo "################################################################################"
  echo "[ci-vulkan] SKIPPED: $*"
  echo "[ci-vulkan] the Vulkan device suite did not run (docs/build.md, \"The device suite in CI\")"
  echo "################################################################################"
  exit 0
}
[[ "${SDCPP_VK:-1}" == 0 ]] && skip "SDCPP_VK=0"

if [[ "${SDCPP_VK_SUITE_ONLY:-0}" != 1 ]]; then
(( $(id -u) == 0 )) || skip "not root (it installs libvulkan-dev, glslc, spirv-headers, mesa-vulkan-drivers with apt-get)"
command -v apt-get >/dev/null || skip "no apt-get (it needs Debian 12's packages)"
grep -qs '^VERSION_CODENAME=bookworm' /etc/os-release || skip "not Debian 12 (bookworm): $(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-unknown}")"
# 1. system packages
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends libvulkan-dev glslc spirv-headers mesa-vulkan-drivers >/dev/null
stamp "apt packages"

# 2. trixie's Vulkan headers through a private sources list (no system-wide change)
hdr=$work/vk-headers
if [[ ! -f $hdr/usr/include/vulkan/vulkan_core.h ]] || ! grep -q VK_EXT_layer_settings "$hdr/usr/include/vulkan/vulkan_core.h"; then
  apt_dir=$work/apt-trixie
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/debs"
  echo "deb http://deb.debian.org/debian trixie main" > "$apt_dir/sources.list"
  opts=(-o Dir::Etc::sourcelist="$apt_dir/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$apt_dir/lists"
        -o APT::Get::List-Cleanup=0)
  apt-get "${opts[@]}" update -qq
  (cd "$apt_dir/debs" && apt-get "${opts[@]}" download libvulkan-dev/trixie >/dev/null)
  rm -rf "$hdr" && dpkg -x "$apt_dir"/debs/libvulkan-dev_*.deb "$hdr"
fi
stamp "trixie Vulkan headers in $hdr"

# 3. ggml's sdist (the version third_party/ggml.cmake pins) and the build tools in a venv of
# their own, then sdcpp with Vulkan
ggml_ver=$(sed -n 's|.*libggml_python-\([0-9.a-z]*\)\.tar\.gz.*|\1|p' third_party/ggml.cmake | head -1)
sdist_dir=$work/sdist
if ! ls "$sdist_dir"/libggml_python-"$ggml_ver".tar.gz >/dev/null 2>&1; then
  "$py" -m pip download -q --no-binary :all: --no-deps -d "$sdist_dir" "libggml-python==$ggml_ver"
fi
sdist=$(ls "$sdist_dir"/libggml_python-"$ggml_ver".tar.gz)
tools=$work/tools-venv
[[ -x $tools/bin/python ]] || { "$py" -m venv "$tools" && "$tools/bin/pip" install -q "pybind11>=2.13" cmake ninja; }
stamp "sdist $sdist, build tools"
"$tools/bin/cmake" -S . -B "$work/build" -G Ninja -DCMAKE_MAKE_PROGRAM="$tools/bin/ninja" -DCMAKE_BUILD_TYPE=Release \
  -DSD_VULKAN=ON -DSD_GGML_SDIST="$sdist" -DVulkan_INCLUDE_DIR="$hdr/usr/include" \
  -DPython_EXECUTABLE="$(command -v "$py")" -Dpybind11_DIR="$("$tools/bin/python" -m pybind11 --cmakedir)" >/dev/null
"$tools/bin/cmake" --build "$work/build" -j"$(nproc)"
rm -rf "$work/pkg" && mkdir -p "$work/pkg" && cp -r python/sdcpp "$work/pkg/"
find "$work/pkg" -name "_core*.so" -delete && cp "$work"/build/_core*.so "$work/pkg/sdcpp/"
stamp "sdcpp built with Vulkan"
[[ "${SDCPP_VK_BUILD_ONLY:-0}" == 1 ]] && exit 0
fi

# Mesa 25 from bookworm-backports (the default), unpacked into $work/mesa-bpo and selected through
# the Vulkan loader (VK_ICD_FILENAMES; its libdrm through LD_LIBRARY_PATH). Its lavapipe runs
# whole graphs (22.3 corrupts its heap within a few), so no SDCPP_NODE_BY_NODE there: 5-10x faster.
# Its one crash so far was the process running out of memory mappings (each ggml-vulkan descriptor
# set is a memfd on lavapipe; tests keep few models alive: fixtures.devices.RecentModels).
node_by_node=1
if [[ "${SDCPP_VK_MESA:-backports}" == backports ]]; then
  mesa=$work/mesa-bpo
  # the driver's folder inside the unpacked packages (usr/lib/<multiarch triple>: not assumed x86_64)
  lvp() { find "$mesa/root" -name libvulkan_lvp.so -print -quit 2>/dev/null || true; }
  if [[ -z "$(lvp)" ]]; then
    mkdir -p "$mesa/lists/partial" "$mesa/debs"
    echo "deb http://deb.debian.org/debian bookworm-backports main" > "$mesa/sources.list"
    opts=(-o Dir::Etc::sourcelist="$mesa/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$mesa/lists"
          -o APT::Get::List-Cleanup=0)
    apt-get "${opts[@]}" update -qq
    (cd "$mesa/debs" && apt-get "${opts[@]}" download mesa-vulkan-drivers/bookworm-backports libdrm2/bookworm-backports \
       libdrm-amdgpu1/bookworm-backports >/dev/null)
    rm -rf "$mesa/root" && for deb in "$mesa"/debs/*.deb; do dpkg -x "$deb" "$mesa/root"; done
  fi
  [[ -n "$(lvp)" ]] || { echo "[ci-vulkan] no libvulkan_lvp.so in the unpacked $mesa/root" >&2; exit 1; }
  lib=$(dirname "$(lvp)")
  printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s", "api_version": "1.4.305"}}\n' \
    "$lib/libvulkan_lvp.so" > "$mesa/lvp_icd.json"
  export VK_ICD_FILENAMES=$mesa/lvp_icd.json LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  node_by_node=0
  stamp "Mesa from bookworm-backports in $mesa"
fi

# 4. the device suite. GGML_VK_VISIBLE_DEVICES=0: ggml skips CPU-type Vulkan devices (lavapipe)
# unless listed. GGML_NO_BACKTRACE: ggml's abort handler would attach gdb. GGML_VK_DISABLE_F16:
# with f16 available, ggml-vulkan's f32 matrix products stage their operands in f16 (3e-4
# relative per product on lavapipe), past the suite's 1e-3 f32 bound on the VAE
# (docs/build.md, "Vulkan").
# SDCPP_NODE_BY_NODE (its presence counts, not its value): graphs run one node per ggml compute
# call; with whole graphs, ggml-vulkan on lavapipe (Mesa 22.3) corrupts the heap after a few
# runs (docs/build.md, "Vulkan").
export GGML_VK_VISIBLE_DEVICES=0 GGML_NO_BACKTRACE=1 GGML_VK_DISABLE_F16=1 SDCPP_TEST_DEVICE=vulkan
if (( node_by_node )); then export SDCPP_NODE_BY_NODE=1; else unset SDCPP_NODE_BY_NODE; fi
PYTHONPATH=$work/pkg "$py" -c "import sdcpp, sdcpp._core as c; print('sdcpp from', sdcpp.__file__); print([d['description'] for d in c.list_devices()])"
files=(${SDCPP_VK_FILES:-tests/engine/test_runtime.py tests/engine/test_clip.py tests/engine/test_taesd.py
        tests/engine/test_vae.py tests/engine/test_vae_tiling.py tests/engine/test_unet.py
        tests/engine/test_controlnet_engine.py tests/lora/test_lora_parity.py tests/pipeline/test_txt2img_parity.py})
marker="device and not slow"
[[ "${SDCPP_VK_SLOW:-0}" == 1 ]] && marker=device
# One pytest process per file: each file's time is printed, and a crash loses one file and names
# it. No retries: a crash or a wrong number fails the suite.
failed=()
for f in "${files[@]}"; do
  s=$(date +%s)
  rc=0
  PYTHONPATH=$work/pkg "$py" -m pytest -q -p no:cacheprovider -m "$marker" "$f" || rc=$?
  (( rc == 5 )) && rc=0  # no test of the file selected
  (( rc == 0 )) || failed+=("$f (exit $rc)")
  stamp "$f: $([[ $rc == 0 ]] && echo passed || echo "FAILED, exit $rc") in $(( $(date +%s) - s ))s"
done
if (( ${#failed[@]} )); then
  stamp "device suite FAILED: ${failed[*]}"
  exit 1
fi
stamp "device suite passed"
