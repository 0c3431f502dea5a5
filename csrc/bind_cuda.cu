// pybind11 module inverseflow._cuda: the CUDA backend. Linked with the static CUDA runtime
// and without libtorch (DESIGN.md §4), so it imports on machines without a driver; the
// first CUDA call there fails, and device_count turns that into a clear error.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "invconv/bind_common.h"
#include "invconv/cuda_solve.cuh"

// The one instantiation of the generic kernels (cuda_solve.cuh declares them extern).
namespace inverseflow::cuda {
IFLOW_GENERIC_SOLVES()
}  // namespace inverseflow::cuda

namespace {

using inverseflow::cuda::solve;

// The generic (runtime-shape) kernels: the same code with no compile-time sizes.
const inverseflow::GenericTable kGeneric = {
    {&solve<float, 0, 0, 0, 0, inverseflow::kSolve>, &solve<float, 0, 0, 0, 0, inverseflow::kTransposed>,
     &solve<float, 0, 0, 0, 0, inverseflow::kConv>},
    {&solve<double, 0, 0, 0, 0, inverseflow::kSolve>, &solve<double, 0, 0, 0, 0, inverseflow::kTransposed>,
     &solve<double, 0, 0, 0, 0, inverseflow::kConv>},
};

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "inverseflow CUDA kernels (raw pointers; use inverseflow.inv_conv2d)";
  inverseflow::define_common(m, kGeneric);

  m.def(
      "device_count",
      []() {
        int count = 0;
        const cudaError_t err = cudaGetDeviceCount(&count);
        if (err != cudaSuccess) {
          (void)cudaGetLastError();
          // e.g. 35 (cudaErrorInsufficientDriver) on a machine without a driver, or 100
          // (cudaErrorNoDevice): name the error rather than report zero devices.
          throw std::runtime_error(
              std::string("cudaGetDeviceCount failed with CUDA error ") +
              std::to_string(int(err)) + " " + cudaGetErrorName(err) + " (" +
              cudaGetErrorString(err) +
              "); the inverseflow CUDA backend cannot be used on this machine");
        }
        return count;
      },
      "Number of CUDA devices; raises RuntimeError naming the CUDA error when there is "
      "no usable driver or device.");

  m.def(
      "runtime_version",
      []() {
        int version = 0;
        (void)cudaRuntimeGetVersion(&version);  // needs no driver: the runtime is static
        return version;
      },
      "CUDA runtime version this module was built with (e.g. 13000 for 13.0).");
}
