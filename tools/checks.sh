#!/usr/bin/env bash
# Everything CI checks, after tools/quickstart.sh has built into $1 against PyTorch 2.x: the test
# suite, the installed package with a consumer project and the example, pip install and the Python
# suite against it, the README's and docs' snippets and links, a report rendered in headless
# Chromium, the library and its C++ tests built against Debian's LibTorch 1.13 under ASan+UBSan
# with a consumer project on that build, and bounded fuzzing.
set -euo pipefail
build="${1:-build}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
jobs="${GRADFLOW_JOBS:-2}"
venv="${GRADFLOW_VENV:-/opt/gradflow-venv}"
python="$venv/bin/python"
build_abs="$(cd "$build" && pwd)"
torch_cmake="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
fuzz_seconds="${GRADFLOW_FUZZ_SECONDS:-30}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stage() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

stage "unit and end-to-end tests"
ctest --test-dir "$build" -j "$jobs" --output-on-failure --timeout 600
# What the conformance suites enumerated: classes, optimizers and operations passed or skipped, with the reason.
grep -hE "^(module classes|optimizers|operations|  skipped)" "$build/Testing/Temporary/LastTest.log" || true

stage "install; find_package consumer and example project"
prefix="$work/prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S tests/consumer -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/consumer" -j "$jobs" >/dev/null
"$work/consumer/consumer"
cmake -S examples/custom_model -B "$work/example" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/example" -j "$jobs" >/dev/null
"$work/example/custom_model" "$work/example-report"
test -s "$work/example-report/report.html"
# Real loop patterns: a GAN (two models, several backwards a step) and gradient accumulation.
for ex in gan accumulation; do
  cmake -S "examples/$ex" -B "$work/$ex" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$work/$ex" -j "$jobs" >/dev/null
  "$work/$ex/$ex" "$work/$ex-report"
done
test -s "$work/gan-report/report.html" && test -s "$work/gan-report/discriminator/run.json"
test -s "$work/accumulation-report/report.html"
# Data-parallel: a user model on two ranks, started by gradflow's launcher as torchrun would.
cmake -S examples/data_parallel -B "$work/data_parallel" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/data_parallel" -j "$jobs" >/dev/null
"$prefix/bin/gradflow" launch --ranks 2 --timeout 120 -- "$work/data_parallel/data_parallel" "$work/data-parallel-report"
test -s "$work/data-parallel-report/report.html"
grep -q '"world_size": 2' "$work/data-parallel-report/run.json"
"$prefix/bin/gradflow" models >/dev/null
# Python: the example loop against the installed package, with the interpreter whose torch the
# module was built against.
pypath="$prefix/lib/python3.$("$python" -c 'import sys; print(sys.version_info.minor)')/dist-packages"
test -f "$pypath/gradflow/__init__.py"
(cd "$work" && PYTHONPATH="$pypath" "$python" "$root/examples/python/train.py" "$work/python-report")
test -s "$work/python-report/report.html"

stage "pip install . into the PyTorch environment; Python tests against what it installed"
# pip's own build (isolated, build requirements from PyPI as a user gets them) reuses the build
# folder and its settings, so it compiles nothing the suite has not already compiled; a user's
# first pip install runs the same CMake from scratch.
CMAKE_GENERATOR="$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$build_abs/CMakeCache.txt")" \
  CMAKE_BUILD_PARALLEL_LEVEL="$jobs" PIP_CONSTRAINT="$root/constraints.txt" \
  "$python" -m pip install -q --disable-pip-version-check --no-deps --config-settings=build-dir="$build_abs" \
  --config-settings=cmake.define.GRADFLOW_BUILD_TESTS=ON --config-settings=cmake.define.GRADFLOW_BUILD_BENCHMARKS=ON "$root"
trap '"$python" -m pip uninstall -q -y gradflow >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
(cd "$work" && "$python" -c 'import gradflow, torch; print(f"gradflow {gradflow.__file__} on torch {torch.__version__}")')
"$venv/bin/gradflow" models >/dev/null
# The module pip installed was linked from the objects the suite above tested (the same folder);
# against the installed copy, the suites that exercise the import, the hooks and a real model.
( cd tests/python && GRADFLOW_CLI="$venv/bin/gradflow" GRADFLOW_REFERENCE_RUN="$build_abs/tests/gradflow_reference_run" \
    PYTHONDONTWRITEBYTECODE=1 "$python" -m unittest -q test_coexist.MessagesTest test_coexist.HooksCoexistTest \
    test_coexist.StepInBackwardTest test_monitor.MonitorTest test_real_models.ResNet18 2>&1 | tail -n 3 )

stage "README and docs show the code they quote; their links resolve"
python3 - <<'PY'
import os, re, sys
src = open("examples/custom_model/main.cpp").read()
snippet = re.search(r"// \[readme-snippet\]\n(.*?)  // \[/readme-snippet\]", src, re.S).group(1)
readme = open("README.md").read()
body = "\n".join(line[2:] if line.startswith("  ") else line for line in snippet.rstrip("\n").split("\n"))
if body not in readme:
    sys.exit("README.md does not contain the example's snippet verbatim (examples/custom_model/main.cpp)")
print("README snippet matches examples/custom_model/main.cpp")
loop = open("examples/python/train.py").read().split('"""\n', 1)[1]
if loop not in readme:
    sys.exit("README.md does not contain examples/python/train.py's code verbatim")
print("README's Python loop matches examples/python/train.py")
test = open("tests/monitor/monitor_coexist_test.cpp").read()
jit = re.search(r"// \[readme-jit\]\n(.*?)  // \[/readme-jit\]", test, re.S).group(1)
jit = "\n".join(line[2:] if line.startswith("  ") else line for line in jit.rstrip("\n").split("\n"))
if jit not in open("docs/cpp-guide.md").read():
    sys.exit("docs/cpp-guide.md does not contain the TorchScript backbone snippet of tests/monitor/monitor_coexist_test.cpp verbatim")
print("docs/cpp-guide.md's TorchScript backbone snippet matches tests/monitor/monitor_coexist_test.cpp")

# Every relative link of README.md and docs/*.md reaches a file, and its #anchor a heading of that file.
def unfenced(text):
    """The text with the lines of fenced code blocks blanked."""
    out, fence = [], None
    for line in text.split("\n"):
        m = re.match(r" {0,3}(`{3,}|~{3,})", line)
        if fence is None and m:
            fence = m.group(1)
            line = ""
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            line = ""
        out.append(line)
    return "\n".join(out)
def anchors(path):
    """GitHub's heading ids: lowercase, punctuation but '-' and '_' dropped, spaces to '-'; -1, -2 on repeats."""
    seen, ids = {}, set()
    for m in re.finditer(r"^ {0,3}#{1,6} +(.*?)(?: +#+)? *$", unfenced(open(path).read()), re.M):
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids
for path in ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir("docs") if f.endswith(".md")):
    prose = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", unfenced(open(path).read()), flags=re.S)
    checked = 0
    for link in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", link, re.I):
            continue  # https:, mailto:
        target, _, anchor = link.partition("#")
        where = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
        if not os.path.exists(where):
            sys.exit(f"{path}: broken link {link}: {where} does not exist")
        if anchor and (not where.endswith(".md") or anchor not in anchors(where)):
            sys.exit(f"{path}: broken link {link}: {where} has no heading #{anchor}")
        checked += 1
    print(f"{path}: {checked} relative links reach their files and headings")
PY

stage "report renders in headless Chromium"
"$build/tools/gradflow" compare --suite quick --quiet --out "$work/report" >/dev/null
python3 tools/check_report.py "$work/report/report.html" "$work/report/screenshot.png"
# The default comparison's report: at most 1.5 MB, rendered in under 2 s.
"$build/tools/gradflow" compare --quiet --out "$work/default" >/dev/null
python3 tools/check_report.py "$work/default/report.html" "$work/default/screenshot.png" 1572864 2
"$build/tools/gradflow" flow mlp:depth=3,width=16,act=tanh --out "$work/flow" >/dev/null
python3 tools/check_report.py "$work/flow/flow.html" "$work/flow/screenshot.png"
# The coordinate check across widths: the CLI's, and a GPT-style model factory's from Python.
"$build/tools/gradflow" compare --sweep width=32,64,128,256 --quiet --out "$work/width" >/dev/null
python3 tools/check_report.py --min-coloured 0.4 "$work/width/report.html" "$work/width/screenshot.png"
(cd "$work" && "$python" "$root/examples/python/coord_check.py" "$work/coord" >/dev/null)
python3 tools/check_report.py --min-coloured 0.4 "$work/coord/report.html" "$work/coord/screenshot.png"

stage "LibTorch 1.13.1 (Debian 12), the oldest supported: the library and its C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer"
# No CMAKE_PREFIX_PATH: find_package(Torch) finds Debian's libtorch-dev.
cmake -S . -B "$build-asan" -DCMAKE_BUILD_TYPE=Debug -DGRADFLOW_SANITIZE=ON -DGRADFLOW_BUILD_BENCHMARKS=OFF >/dev/null
grep -q '^Torch_DIR:PATH=/usr/' "$build-asan/CMakeCache.txt" || { echo "checks: $build-asan did not find Debian's LibTorch" >&2; exit 1; }
cmake --build "$build-asan" -j "$jobs" --target gradflow_core_tests gradflow_tests
# LibTorch itself is not instrumented: its containers would raise false container-overflow reports.
export ASAN_OPTIONS=detect_leaks=1:detect_container_overflow=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
"$build-asan/tests/gradflow_core_tests" --gtest_brief=1
"$build-asan/tests/gradflow_tests" --gtest_brief=1 --gtest_filter='-TrainTest.TrainedGatedCellsCarryGradientAcrossTimeAndLearn:FlowRunTest.FullBatchDescentRisesToTheEdgeOfStabilityAndStaysThere'
# A user's project on 1.13: find_package(gradflow) of this build, installed (with the same sanitizers).
cmake --install "$build-asan" --prefix "$work/prefix-1.13" --component Unspecified >/dev/null
cmake -S tests/consumer -B "$work/consumer-1.13" -DCMAKE_PREFIX_PATH="$work/prefix-1.13" -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build "$work/consumer-1.13" -j "$jobs" >/dev/null
"$work/consumer-1.13/consumer"
unset ASAN_OPTIONS UBSAN_OPTIONS

stage "libFuzzer: spec parser, JSON readers and the stream reader, ${fuzz_seconds}s each"
CC=clang CXX=clang++ cmake -S . -B "$build-fuzz" -DGRADFLOW_CORE_ONLY=ON -DGRADFLOW_BUILD_FUZZERS=ON \
  -DGRADFLOW_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER_LAUNCHER= >/dev/null
cmake --build "$build-fuzz" -j "$jobs" >/dev/null
for f in spec json stream; do
  mkdir -p "$work/corpus-$f"
  cp fuzz/corpus/$f/* "$work/corpus-$f/"
  ( cd "$work" && "$root/$build-fuzz/fuzz/${f}_fuzz" -max_total_time="$fuzz_seconds" -max_len=20000 -print_final_stats=0 \
      "$work/corpus-$f" 2>&1 | tail -n 2 )
done

stage "all checks passed"
