// One row of a generated registry (generated/registry_<backend>.*): an instantiation and
// its function. The tables are the only place that maps specs to code. A row is keyed by
// what solve<T, CG, KD, KH, KW, Dir> depends on: the corner is a flip in the packing and
// the group pattern a run-time argument, so a call is looked up by its group's channel
// count (channels / groups(pattern)) and any corner or group pattern finds the row.
#pragma once

#include "invconv/common.h"

namespace inverseflow {

struct SpecEntry {
  int dims;  // 1, 2 or 3: the instantiation's own dimension (names only; lookups ignore it)
  int kd, kh, kw, group_channels, dtype, direction;
  const char* name;
  SolveFn fn;
};

// Defined in the generated registry of each backend.
extern const SpecEntry kSpecializations[];
extern const int kNumSpecializations;

// The row for a call, or nullptr (the generic kernel then runs).
inline const SpecEntry* find_specialization(int kd, int kh, int kw, int64_t channels,
                                            int pattern, int dtype, int direction) {
  const int64_t cg = channels / num_groups(pattern);
  for (int i = 0; i < kNumSpecializations; ++i) {
    const SpecEntry& e = kSpecializations[i];
    if (e.kd == kd && e.kh == kh && e.kw == kw && e.group_channels == cg &&
        e.dtype == dtype && e.direction == direction)
      return &e;
  }
  return nullptr;
}

}  // namespace inverseflow
