// pybind11 module for one layer shape specialized at run time (inverseflow.jit).
//
// Compiled together with the layer's generated kernel file and a registry holding only that
// layer, for either backend (the CUDA kernels are in the .cu files nvcc compiles beside this
// one). It exposes the same `solve` and `specializations` as inverseflow.ops._cpu/_cuda, so
// the one dispatch place (inverseflow/ops/_dispatch.py) calls it the same way.
//
// IFLOW_JIT_MODULE names the module; each cache entry has its own name so that several
// entries can be loaded into one process.
#include <stdexcept>

#include "invconv/bind_common.h"

#ifndef IFLOW_JIT_MODULE
#error "compile with -DIFLOW_JIT_MODULE=<module name> (inverseflow.jit does)"
#endif

namespace {

// The dispatch only calls this module for its own layer shape, so there is no generic
// kernel here: reaching one means the dispatch table is wrong, which must be loud.
void not_this_module(const inverseflow::SolveArgs&) {
  throw std::logic_error(
      "inverseflow.jit: a run-time module was called for a shape it was not built for");
}

const inverseflow::GenericTable kNoGeneric = {
    {&not_this_module, &not_this_module, &not_this_module},
    {&not_this_module, &not_this_module, &not_this_module},
};

}  // namespace

PYBIND11_MODULE(IFLOW_JIT_MODULE, m) {
  m.doc() = "inverseflow kernels for one layer shape, specialized at run time";
  inverseflow::define_common(m, kNoGeneric);
}
