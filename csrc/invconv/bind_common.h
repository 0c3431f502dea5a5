// The pybind11 surface shared by both backends. Functions take raw pointers, shapes and
// a stream handle, so the modules never link libtorch (DESIGN.md §4). Validation of
// shapes and dtypes happens in Python before these are called.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "invconv/registry.h"

namespace inverseflow {

namespace py = pybind11;

// generic[dtype][direction]: the runtime-shape kernel of the backend.
using GenericTable = SolveFn[2][kNumDirections];

inline void define_common(py::module_& m, const GenericTable& generic) {
  m.def(
      "solve",
      [&generic](std::uintptr_t y, std::uintptr_t weight, std::uintptr_t x, int64_t batch,
                 int64_t channels, int64_t depth, int64_t height, int64_t width, int kd,
                 int kh, int kw, int pattern, int dtype, int direction, int num_threads,
                 std::uintptr_t stream, bool force_generic) -> std::string {
        if (dtype < 0 || dtype > 1) throw py::value_error("dtype code must be 0 or 1");
        if (direction < 0 || direction >= kNumDirections)
          throw py::value_error("direction code must be 0 (solve), 1 (transposed) or 2 (conv)");
        if (pattern < kTL || pattern >= kNumPatterns)
          throw py::value_error("unknown pattern code");
        if (kd < 1 || kh < 1 || kw < 1) throw py::value_error("kernel size must be positive");
        if (channels % num_groups(pattern) != 0)
          throw py::value_error("a group pattern needs channels divisible by its group count");
        SolveArgs args{reinterpret_cast<const void*>(y),
                       reinterpret_cast<const void*>(weight),
                       reinterpret_cast<void*>(x),
                       batch, channels, depth, height, width, kd, kh, kw, pattern,
                       num_threads < 1 ? 1 : num_threads,
                       reinterpret_cast<void*>(stream)};
        const SpecEntry* spec =
            force_generic ? nullptr
                          : find_specialization(kd, kh, kw, channels, pattern, dtype,
                                                direction);
        const SolveFn fn = spec ? spec->fn : generic[dtype][direction];
        {
          py::gil_scoped_release release;
          fn(args);
        }
        return spec ? std::string(spec->name) : std::string("generic");
      },
      py::arg("y"), py::arg("weight"), py::arg("x"), py::arg("batch"), py::arg("channels"),
      py::arg("depth"), py::arg("height"), py::arg("width"), py::arg("kd"), py::arg("kh"),
      py::arg("kw"), py::arg("pattern"),
      py::arg("dtype"), py::arg("direction"), py::arg("num_threads"), py::arg("stream"),
      py::arg("force_generic") = false,
      "Solve into x (or, with direction 2, convolve: x = T y). Returns the name of the kernel "
      "that ran ('generic' for the fallback).");

  m.def("specializations", []() {
    py::list out;
    for (int i = 0; i < kNumSpecializations; ++i) {
      const SpecEntry& e = kSpecializations[i];
      py::dict d;
      d["name"] = e.name;
      d["dims"] = e.dims;
      d["kd"] = e.kd;
      d["kh"] = e.kh;
      d["kw"] = e.kw;
      d["group_channels"] = e.group_channels;
      d["dtype"] = e.dtype;
      d["direction"] = e.direction;
      out.append(d);
    }
    return out;
  });
}

}  // namespace inverseflow
