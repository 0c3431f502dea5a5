// pybind11 module _cuda_emu: the CUDA kernels run on the CPU (DESIGN.md §8), for
// tests/test_cuda_emulated.py. Compiled as host C++ with `-I csrc/emu -I csrc`, so that
// "invconv/cuda_solve.cuh" is the emulated launcher; the `solve` entry, the registry lookup
// and the generic fallback are the real module's (bind_common.h), and the fake device's
// limits and the thread schedule are settable.
#include <pybind11/pybind11.h>

#include <string>

#include "invconv/bind_common.h"
#include "invconv/cuda_solve.cuh"

// The one instantiation of the generic kernels, as in bind_cuda.cu.
namespace inverseflow::cuda {
IFLOW_GENERIC_SOLVES()
}  // namespace inverseflow::cuda

namespace {

namespace py = pybind11;
using inverseflow::cuda::solve;
using inverseflow::cuda::Path;

const inverseflow::GenericTable kGeneric = {
    {&solve<float, 0, 0, 0, 0, inverseflow::kSolve>, &solve<float, 0, 0, 0, 0, inverseflow::kTransposed>,
     &solve<float, 0, 0, 0, 0, inverseflow::kConv>},
    {&solve<double, 0, 0, 0, 0, inverseflow::kSolve>, &solve<double, 0, 0, 0, 0, inverseflow::kTransposed>,
     &solve<double, 0, 0, 0, 0, inverseflow::kConv>},
};

const char* path_name(Path path) {
  switch (path) {
    case Path::kSharedX: return "shared_x";
    case Path::kGlobalX: return "global_x";
    case Path::kGlobalWorkspace: return "global_workspace";
  }
  return "?";
}

inverseflow::emu::Schedule parse_schedule(const std::string& name) {
  using inverseflow::emu::Schedule;
  if (name == "concurrent") return Schedule::kConcurrent;
  if (name == "serial_forward") return Schedule::kSerialForward;
  if (name == "serial_reverse") return Schedule::kSerialReverse;
  throw py::value_error("schedule must be 'concurrent', 'serial_forward' or 'serial_reverse', got '" +
                        name + "'");
}

}  // namespace

PYBIND11_MODULE(_cuda_emu, m) {
  m.doc() = "inverseflow CUDA kernels emulated on the CPU (host pointers; tests only)";
  inverseflow::define_common(m, kGeneric);
  auto& dev = inverseflow::emu::fake_device();

  m.def(
      "set_device",
      [&dev](int smem_optin, int sm_count, int max_grid_x, const std::string& schedule) {
        if (smem_optin < 0 || size_t(smem_optin) > inverseflow::cuda::detail::kSharedCapacity)
          throw py::value_error("smem_optin must be in [0, " +
                                std::to_string(inverseflow::cuda::detail::kSharedCapacity) +
                                "], got " + std::to_string(smem_optin));
        if (sm_count < 1) throw py::value_error("sm_count must be >= 1");
        if (max_grid_x < 1) throw py::value_error("max_grid_x must be >= 1");
        const auto parsed = parse_schedule(schedule);
        std::lock_guard<std::recursive_mutex> lock(dev.mu);
        dev.limits = {smem_optin, sm_count, max_grid_x};
        dev.schedule = parsed;
      },
      py::arg("smem_optin") = 227 * 1024, py::arg("sm_count") = 132,
      py::arg("max_grid_x") = 2147483647, py::arg("schedule") = "serial_reverse",
      "Sets the fake device's limits (defaults: an sm_90 GPU) and the emulated threads' "
      "schedule between barriers.");

  m.def(
      "plan",
      [&dev](int64_t batch, int64_t channels, int64_t height, int64_t width, int kh, int kw,
             int pattern, int elem_bytes, int64_t depth, int kd) {
        inverseflow::SolveArgs args{nullptr, nullptr, nullptr, batch, channels, depth, height,
                                    width, kd, kh, kw, pattern, 1, nullptr};
        std::lock_guard<std::recursive_mutex> lock(dev.mu);
        const auto plan = inverseflow::cuda::plan_launch(dev.limits, args, elem_bytes);
        py::dict d;
        d["path"] = path_name(plan.path);
        d["blocks"] = plan.blocks;
        d["threads"] = plan.threads;
        d["smem_bytes"] = plan.smem_bytes;
        d["workspace_bytes"] = plan.workspace_bytes;
        return d;
      },
      py::arg("batch"), py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("kh"),
      py::arg("kw"), py::arg("pattern"), py::arg("elem_bytes"), py::arg("depth") = 1,
      py::arg("kd") = 1,
      "plan_launch (csrc/invconv/cuda_launch_plan.h) on the fake device.");

  m.def("launches", [&dev]() {
    std::lock_guard<std::recursive_mutex> lock(dev.mu);
    py::list out;
    for (const auto& r : dev.launches) {
      py::dict d;
      d["kernel"] = r.kernel;
      d["path"] = path_name(r.path);
      d["blocks"] = r.blocks;
      d["threads"] = r.threads;
      d["smem_bytes"] = r.smem_bytes;
      d["workspace_bytes"] = r.workspace_bytes;
      out.append(d);
    }
    dev.launches.clear();
    return out;
  }, "The emulated launches since the last call (and forgets them).");

  m.attr("shared_capacity") = inverseflow::cuda::detail::kSharedCapacity;
}
