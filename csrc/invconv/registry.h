// One row of a generated registry (generated/registry_<backend>.*): a specialization and
// its function. The tables are the only place that maps specs to code.
#pragma once

#include "invconv/common.h"

namespace inverseflow {

struct SpecEntry {
  int dims;  // 1, 2 or 3: the layer's own dimension (names only; lookups ignore it)
  int kd, kh, kw, channels, pattern, dtype, direction;
  const char* name;
  SolveFn fn;
};

// Defined in the generated registry of each backend.
extern const SpecEntry kSpecializations[];
extern const int kNumSpecializations;

}  // namespace inverseflow
