# Finds LibTorch: Debian's (libtorch-dev), a LibTorch download, or the one inside a PyTorch wheel
# (cmake -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')").
# Sets TORCH_LIBRARIES, TORCH_INCLUDE_DIRS, Torch_VERSION and TORCH_INSTALL_PREFIX as
# find_package(Torch) does.
#
# A CUDA wheel's TorchConfig.cmake requires the CUDA toolkit (nvcc, cudart headers) even to build
# CPU code, and a wheel ships neither, so a wheel's LibTorch is imported from its files instead:
# the same libraries, include folders, definitions and C++ standard its config would give.

set(GRADFLOW_OLDEST_TORCH 1.13)
# Wheels before 2.7 were built with the pre-C++11 string ABI, which no Debian library shares.
set(GRADFLOW_OLDEST_WHEEL_TORCH 2.7)

function(gradflow_wheel_torch_root out)
  set(root "")
  # torch.utils.cmake_prefix_path, or a site-packages folder that holds torch/, or Torch_DIR
  # pointing into a wheel: each way of naming LibTorch gets the wheel's files.
  set(prefixes "")
  foreach(prefix IN LISTS CMAKE_PREFIX_PATH)
    list(APPEND prefixes "${prefix}" "${prefix}/torch/share/cmake")
  endforeach()
  if(Torch_DIR)
    list(APPEND prefixes "${Torch_DIR}/..")
  endif()
  foreach(prefix IN LISTS prefixes)
    get_filename_component(candidate "${prefix}/../.." ABSOLUTE)
    if(EXISTS "${prefix}/Torch/TorchConfig.cmake" AND EXISTS "${candidate}/lib/libtorch_python.so"
       AND EXISTS "${candidate}/__init__.py")
      set(root "${candidate}")
      break()
    endif()
  endforeach()
  set(${out} "${root}" PARENT_SCOPE)
endfunction()

function(gradflow_torch_version_of include_dir out)
  # Newer LibTorch keeps the numbers in torch/headeronly/version.h, which torch/version.h includes.
  set(lines "")
  foreach(header torch/headeronly/version.h torch/csrc/api/include/torch/version.h)
    if(EXISTS "${include_dir}/${header}")
      file(STRINGS "${include_dir}/${header}" found REGEX "#define TORCH_VERSION_(MAJOR|MINOR|PATCH) ")
      list(APPEND lines ${found})
    endif()
  endforeach()
  set(parts "")
  foreach(part MAJOR MINOR PATCH)
    string(REGEX MATCH "TORCH_VERSION_${part} ([0-9]+)" _ "${lines}")
    list(APPEND parts "${CMAKE_MATCH_1}")
  endforeach()
  list(JOIN parts "." version)
  set(${out} "${version}" PARENT_SCOPE)
endfunction()

function(gradflow_import_wheel_torch root)
  gradflow_torch_version_of("${root}/include" version)
  if(version VERSION_LESS GRADFLOW_OLDEST_WHEEL_TORCH)
    message(FATAL_ERROR "torch ${version} at ${root} is older than ${GRADFLOW_OLDEST_WHEEL_TORCH}, the oldest PyTorch wheel "
                        "gradflow builds with: pip install 'torch>=${GRADFLOW_OLDEST_WHEEL_TORCH}'")
  endif()
  # The wheel's c10d headers include Gloo's, and the wheel ships none of them.
  find_path(GRADFLOW_GLOO_INCLUDE_DIR gloo/algorithm.h)
  if(NOT GRADFLOW_GLOO_INCLUDE_DIR)
    message(FATAL_ERROR "the torch wheel's distributed headers include Gloo's, which the wheel does not ship: install "
                        "them (Debian: apt install libgloo-dev) and configure again")
  endif()
  file(READ "${root}/share/cmake/Torch/TorchConfig.cmake" config)
  set(standard 17)
  if(config MATCHES "cxx_std_20")
    set(standard 20)
  endif()
  set(libs "")
  foreach(name torch torch_cpu c10 torch_cuda c10_cuda)
    if(EXISTS "${root}/lib/lib${name}.so")
      list(APPEND libs "${root}/lib/lib${name}.so")
    endif()
  endforeach()
  add_library(gradflow_wheel_torch INTERFACE IMPORTED GLOBAL)
  # The wheel ships its own fmt headers (torch/include/fmt) ahead of the system's on the include
  # path, and no fmt library: code that sees them uses them header-only.
  # --no-as-needed: the CPU and CUDA kernels register themselves when their library loads, and
  # nothing of ours names a symbol of libtorch_cuda.
  set_target_properties(gradflow_wheel_torch PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${root}/include;${root}/include/torch/csrc/api/include;${GRADFLOW_GLOO_INCLUDE_DIR}"
    INTERFACE_COMPILE_DEFINITIONS "USE_DISTRIBUTED;USE_C10D_GLOO;FMT_HEADER_ONLY"
    INTERFACE_COMPILE_FEATURES "cxx_std_${standard}"
    INTERFACE_LINK_LIBRARIES "-Wl,--no-as-needed;${libs};-Wl,--as-needed")
  set(TORCH_LIBRARIES gradflow_wheel_torch PARENT_SCOPE)
  set(TORCH_INCLUDE_DIRS "${root}/include;${root}/include/torch/csrc/api/include" PARENT_SCOPE)
  set(Torch_VERSION "${version}" PARENT_SCOPE)
  set(TORCH_INSTALL_PREFIX "${root}" PARENT_SCOPE)
  message(STATUS "LibTorch ${version} from the PyTorch wheel at ${root} (C++${standard})")
endfunction()

# pip install: the torch of the Python that builds the wheel. pip's build isolation takes that
# environment's site-packages off sys.path, not out of sysconfig.
function(gradflow_add_python_torch_prefix)
  execute_process(COMMAND "${Python3_EXECUTABLE}" -c
                          "import sysconfig; print(sysconfig.get_path('platlib')); print(sysconfig.get_path('purelib'))"
                  OUTPUT_VARIABLE sites OUTPUT_STRIP_TRAILING_WHITESPACE)
  string(REPLACE "\n" ";" sites "${sites}")
  foreach(site IN LISTS sites)
    if(EXISTS "${site}/torch/share/cmake/Torch/TorchConfig.cmake")
      set(CMAKE_PREFIX_PATH "${site}/torch/share/cmake;${CMAKE_PREFIX_PATH}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  message(FATAL_ERROR "no torch in ${Python3_EXECUTABLE}'s environment (${sites}): pip install torch first, then gradflow")
endfunction()

macro(gradflow_find_torch)
  if(SKBUILD)
    if(NOT Python3_EXECUTABLE)
      set(Python3_EXECUTABLE "${Python_EXECUTABLE}")
    endif()
    gradflow_add_python_torch_prefix()
  endif()
  gradflow_wheel_torch_root(gradflow_wheel_root)
  if(gradflow_wheel_root)
    gradflow_import_wheel_torch("${gradflow_wheel_root}")
  else()
    find_package(Torch REQUIRED)
    if(Torch_VERSION VERSION_LESS GRADFLOW_OLDEST_TORCH)
      message(FATAL_ERROR "LibTorch ${Torch_VERSION} is older than ${GRADFLOW_OLDEST_TORCH}, the oldest gradflow builds with")
    endif()
  endif()
  set(GRADFLOW_TORCH_FROM_WHEEL "${gradflow_wheel_root}")
endmacro()
