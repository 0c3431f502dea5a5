// The generic CUDA kernels for a run-time specialized module (inverseflow.jit).
// A specialized CUDA solve falls back to them on the paths where compile-time sizes do not
// help (cuda_solve.cuh declares them extern; bind_cuda.cu instantiates them for _cuda).
#include "invconv/cuda_solve.cuh"

template void inverseflow::cuda::solve<float, 0, 0, 0, 0, inverseflow::kSolve>(
    const inverseflow::SolveArgs&);
template void inverseflow::cuda::solve<float, 0, 0, 0, 0, inverseflow::kTransposed>(
    const inverseflow::SolveArgs&);
template void inverseflow::cuda::solve<float, 0, 0, 0, 0, inverseflow::kConv>(
    const inverseflow::SolveArgs&);
template void inverseflow::cuda::solve<double, 0, 0, 0, 0, inverseflow::kSolve>(
    const inverseflow::SolveArgs&);
template void inverseflow::cuda::solve<double, 0, 0, 0, 0, inverseflow::kTransposed>(
    const inverseflow::SolveArgs&);
template void inverseflow::cuda::solve<double, 0, 0, 0, 0, inverseflow::kConv>(
    const inverseflow::SolveArgs&);
