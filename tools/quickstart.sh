#!/usr/bin/env bash
# The README's two commands:
#   bash tools/quickstart.sh         install what is missing, build, run the default comparison
#   bash tools/quickstart.sh test    install what is missing, build, run every test and check
# Runs as root on Debian 12 (apt-get); idempotent and non-interactive.
set -euo pipefail
mode="${1:-main}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build="${GRADFLOW_BUILD_DIR:-build}"
jobs="${GRADFLOW_JOBS:-2}"

# The main job needs the library and the CLI only; the tests also build the suite, the benchmarks,
# the Python module, the sanitizer and fuzzer builds, and render a report in a browser.
packages=(cmake g++ make ccache libtorch-dev libgloo-dev libfmt-dev libcli11-dev nlohmann-json3-dev
          libopenblas0-pthread libopenblas-dev)
everything=OFF
if [ "$mode" = test ]; then
  packages+=(libgtest-dev libbenchmark-dev python3-torch python3-torchvision python3-dev pybind11-dev
             clang libclang-rt-14-dev chromium)
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

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DGRADFLOW_BUILD_TESTS=$everything \
      -DGRADFLOW_BUILD_BENCHMARKS=$everything -DGRADFLOW_BUILD_PYTHON=$everything >/dev/null
cmake --build "$build" -j "$jobs"

case "$mode" in
  main)
    "$build/tools/gradflow" compare --out gradflow-out/compare --force
    ;;
  test)
    bash tools/checks.sh "$build"
    ;;
  *)
    echo "usage: bash tools/quickstart.sh [main|test]" >&2
    exit 2
    ;;
esac
