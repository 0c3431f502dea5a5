// pybind11 module inverseflow._cpu: the CPU backend.
#include "build_info.h"
#include "invconv/bind_common.h"
#include "invconv/cpu_solve.h"

namespace {

using inverseflow::cpu::solve;

// The generic (runtime-shape) kernels: the same code with no compile-time sizes.
const inverseflow::GenericTable kGeneric = {
    {&solve<float, 0, 0, 0, 0, inverseflow::kSolve>, &solve<float, 0, 0, 0, 0, inverseflow::kTransposed>,
     &solve<float, 0, 0, 0, 0, inverseflow::kConv>},
    {&solve<double, 0, 0, 0, 0, inverseflow::kSolve>, &solve<double, 0, 0, 0, 0, inverseflow::kTransposed>,
     &solve<double, 0, 0, 0, 0, inverseflow::kConv>},
};

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "inverseflow CPU kernels (raw pointers; use inverseflow.inv_conv2d)";
  inverseflow::define_common(m, kGeneric);
  m.attr("build_info") = kBuildInfoJson;
  // The SIMD width the kernels were compiled for (64: AVX-512, 32: AVX/AVX2, 16: SSE), for
  // the FMA-peak estimate of `inverseflow bench` (inverseflow/bench/fma_peak.py).
  m.attr("vector_bytes") = inverseflow::cpu::kVectorBytes;
#if defined(_OPENMP)
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
