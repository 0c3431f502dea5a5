// The generic CUDA kernels for a run-time specialized module (inverseflow.jit).
// A specialized CUDA solve falls back to them on the paths where compile-time sizes do not
// help (cuda_solve.cuh declares them extern; bind_cuda.cu instantiates them for _cuda).
#include "invconv/cuda_solve.cuh"

namespace inverseflow::cuda {
IFLOW_GENERIC_SOLVES()
}  // namespace inverseflow::cuda
