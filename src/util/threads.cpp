#include "gradflow/threads.h"

#include <dlfcn.h>

#include <torch/torch.h>

namespace gradflow {

namespace {
// Debian's LibTorch links the generic libblas.so.3; which implementation answers is chosen by
// the system's alternatives, so OpenBLAS's own entry points are looked up at run time.
void* openblas_symbol(const char* name) { return ::dlsym(RTLD_DEFAULT, name); }
}  // namespace

void set_threads(int torch_threads, int blas_threads_wanted) {
  if (torch_threads > 0) at::set_num_threads(torch_threads);
  if (blas_threads_wanted > 0) {
    if (auto* f = reinterpret_cast<void (*)(int)>(openblas_symbol("openblas_set_num_threads")))
      f(blas_threads_wanted);
  }
}

int blas_threads() {
  if (auto* f = reinterpret_cast<int (*)()>(openblas_symbol("openblas_get_num_threads"))) return f();
  return -1;
}

const char* blas_name() {
  return openblas_symbol("openblas_get_num_threads") ? "openblas" : "other";
}

}  // namespace gradflow
