#pragma once
/// \file
/// Thread counts for LibTorch and the BLAS it calls.

namespace gradflow {

/// Sets LibTorch's intra-op threads and, when the BLAS is OpenBLAS, its threads. Two pools on
/// the same cores oversubscribe them: on 2 cores, OpenBLAS at 2 plus LibTorch at 2 made training
/// steps 2-7x slower. The CLI calls it once at start (see docs/performance.md, "Threads").
/// A value of 0 leaves that pool as it is.
void set_threads(int torch_threads, int blas_threads);

/// OpenBLAS's thread count, or -1 when the BLAS in use is not OpenBLAS.
int blas_threads();

/// "openblas", or "other" when the process's BLAS is something else.
const char* blas_name();

}  // namespace gradflow
