#!/usr/bin/env bash
# The README's two commands:
#   bash tools/quickstart.sh         install what is missing, build, run the default comparison
#   bash tools/quickstart.sh test    install what is missing, build, run every test and check
# Runs as root on Debian 12 (apt-get); idempotent and non-interactive. Builds against PyTorch 2.x
# from PyPI (constraints.txt), installed once into a virtual environment outside the clone
# ($GRADFLOW_VENV, /opt/gradflow-venv by default) and reused; the test command also builds the
# library and its unit tests against Debian's LibTorch 1.13, the oldest supported.
set -euo pipefail
mode="${1:-main}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build="${GRADFLOW_BUILD_DIR:-build}"
jobs="${GRADFLOW_JOBS:-2}"
venv="${GRADFLOW_VENV:-/opt/gradflow-venv}"

case "$mode" in
  main | test) ;;
  *)
    echo "usage: bash tools/quickstart.sh [main|test]" >&2
    exit 2
    ;;
esac

# The main job needs the library and the CLI only (and Gloo's headers: the wheel's c10d headers
# include them, the wheel ships none); the tests also build the suite, the benchmarks, the Python
# module, the sanitizer and fuzzer builds, the LibTorch 1.13 build, and render a report in a browser.
packages=(cmake g++ make ccache python3-venv libfmt-dev libcli11-dev nlohmann-json3-dev libgloo-dev)
python_packages=(torch)
everything=OFF
if [ "$mode" = test ]; then
  packages+=(python3-dev libgtest-dev libbenchmark-dev clang libclang-rt-14-dev chromium
             libtorch-dev libopenblas0-pthread libopenblas-dev)
  python_packages+=(torchvision numpy pybind11 scikit-build-core)
  everything=ON
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "quickstart: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "quickstart: installing packages needs root (run as root, or install: ${missing[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

torch_pin="$(grep -E '^torch==' constraints.txt)"
if [ ! -x "$venv/bin/python" ]; then
  echo "quickstart: creating the virtual environment $venv for PyTorch"
  /usr/bin/python3 -m venv "$venv"
fi
torch_version="${torch_pin#torch==}"
if ! "$venv/bin/python" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
  echo "quickstart: installing $torch_pin from PyPI into $venv (a CUDA build: about 5 GB to download, once)"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt "${python_packages[@]}"
torch_cmake="$("$venv/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
pybind11_dir="$("$venv/bin/python" -m pybind11 --cmakedir 2>/dev/null || true)"

# -U: the test command's pip install builds in this folder too, and its settings are pip's alone.
cmake -S . -B "$build" -U 'SKBUILD*' -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_cmake" \
      -DPython3_EXECUTABLE="$venv/bin/python" -Dpybind11_DIR="$pybind11_dir" -DGRADFLOW_BUILD_TESTS=$everything \
      -DGRADFLOW_BUILD_BENCHMARKS=$everything -DGRADFLOW_BUILD_PYTHON=$everything >/dev/null
cmake --build "$build" -j "$jobs"

case "$mode" in
  main)
    "$build/tools/gradflow" compare --out gradflow-out/compare --force
    ;;
  test)
    GRADFLOW_VENV="$venv" bash tools/checks.sh "$build"
    ;;
esac
