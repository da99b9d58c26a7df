# The LibTorch finder on a made-up PyTorch wheel of torch VERSION (its files, empty libraries):
#   cmake -DGRADFLOW_SOURCE=<checkout> -DWORK=<folder> -DVERSION=2.15.0 -DEXPECT=<regex> [-DREFUSED=ON] -P fake_wheel.cmake
# Passes when configuring succeeds (or, with REFUSED, fails) and its output matches EXPECT.
file(REMOVE_RECURSE "${WORK}")
set(torch "${WORK}/site/torch")
file(WRITE "${torch}/__init__.py" "")
foreach(lib torch_python torch torch_cpu c10)
  file(WRITE "${torch}/lib/lib${lib}.so" "")
endforeach()
file(WRITE "${torch}/share/cmake/Torch/TorchConfig.cmake" "target_compile_features(torch INTERFACE cxx_std_20)\n")
string(REPLACE "." ";" parts "${VERSION}")
list(GET parts 0 major)
list(GET parts 1 minor)
list(GET parts 2 patch)
file(WRITE "${torch}/include/torch/headeronly/version.h"
     "#define TORCH_VERSION_MAJOR ${major}\n#define TORCH_VERSION_MINOR ${minor}\n#define TORCH_VERSION_PATCH ${patch}\n")
# Each way a user names a wheel's LibTorch: torch.utils.cmake_prefix_path, the site-packages folder, Torch_DIR.
foreach(way "-DCMAKE_PREFIX_PATH=${torch}/share/cmake" "-DCMAKE_PREFIX_PATH=${WORK}/site"
            "-DTorch_DIR=${torch}/share/cmake/Torch")
  file(REMOVE_RECURSE "${WORK}/build")
  execute_process(COMMAND "${CMAKE_COMMAND}" -S "${GRADFLOW_SOURCE}/tests/cmake/torch_finder" -B "${WORK}/build"
                          "-DGRADFLOW_SOURCE=${GRADFLOW_SOURCE}" "${way}"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(all "${out}${err}")
  # CMake wraps a long message over several lines: read it as one.
  string(REGEX REPLACE "\n +" " " joined "${all}")
  if(REFUSED AND rc EQUAL 0)
    message(FATAL_ERROR "torch ${VERSION} (${way}) was accepted:\n${all}")
  elseif(NOT REFUSED AND NOT rc EQUAL 0)
    message(FATAL_ERROR "torch ${VERSION} (${way}) was refused:\n${all}")
  endif()
  if(NOT joined MATCHES "${EXPECT}")
    message(FATAL_ERROR "${way}: output does not match '${EXPECT}':\n${all}")
  endif()
endforeach()
file(REMOVE_RECURSE "${WORK}")
