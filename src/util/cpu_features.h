#pragma once
// What the CPU the process runs on supports, asked once: the statistics kernels pick their
// instruction set from it at run time (the binary itself stays baseline x86-64).

namespace gradflow::detail {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GRADFLOW_X86 1

inline bool cpu_has_avx512f() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return has;
}

inline bool cpu_has_avx2_fma() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}
#endif

}  // namespace gradflow::detail
