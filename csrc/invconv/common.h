// Shared by the CPU and CUDA kernels: the argument block, the pattern geometry and the
// weight folding of DESIGN.md §2. Everything here is plain C++ usable on host and device.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define IFLOW_HD __host__ __device__ __forceinline__
#else
#define IFLOW_HD inline
#endif

namespace inverseflow {

// Values are fixed: they cross the Python boundary (inverseflow/_dispatch.py) and index
// the generated registries.
enum Pattern : int { kTL = 0, kTR = 1, kBL = 2, kBR = 3, kQuad = 4 };
enum DType : int { kFloat32 = 0, kFloat64 = 1 };
enum Direction : int { kSolve = 0, kTransposed = 1 };

// Everything a solve needs, type-erased so that one function-pointer type serves every
// specialization. Tensors are contiguous NCHW; weight is (C, C/G, kh, kw).
struct SolveArgs {
  const void* y;
  const void* weight;
  void* x;
  int64_t batch, channels, height, width;
  int kh, kw;
  int pattern;
  int num_threads;  // CPU: OpenMP threads to use
  void* stream;     // CUDA: cudaStream_t
};

using SolveFn = void (*)(const SolveArgs&);

IFLOW_HD int num_groups(int pattern) { return pattern == kQuad ? 4 : 1; }

// The corner that group g of a pattern pads; quad's groups are TL, TR, BL, BR in order.
IFLOW_HD int group_corner(int pattern, int g) { return pattern == kQuad ? g : pattern; }

// Every solve is run as a top-left solve on a flipped image: a corner padded at the
// bottom reads later rows, so flipping rows makes it read earlier ones (same for columns).
// The transposed solve reads the opposite neighbours, hence the opposite corner.
IFLOW_HD bool flips_rows(int corner, bool transposed) {
  return ((transposed ? 3 - corner : corner) & 2) != 0;
}
IFLOW_HD bool flips_cols(int corner, bool transposed) {
  return ((transposed ? 3 - corner : corner) & 1) != 0;
}

// Weight tap index [i, j] that lands on top-left-form tap (a, b), where (a, b) reads the
// flipped image at offset (a - (kh-1), b - (kw-1)). Negating the offsets (transposed) and
// flipping for the opposite corner cancel out, so the map depends on the corner alone.
IFLOW_HD int tap_row(int corner, int a, int kh) { return (corner & 2) ? kh - 1 - a : a; }
IFLOW_HD int tap_col(int corner, int b, int kw) { return (corner & 1) ? kw - 1 - b : b; }

// Folded weights for one group, in top-left form (DESIGN §2 "folded form"):
//   folded[(a*kw + b)*cg*cg + c*cg + c'] = (Linv · A_ab)[c][c']  for off-center taps,
//   folded[center] = Linv,
// with L the masked center matrix (unit lower triangular; its transpose when
// transposed), Linv = L^-1 and A_ab the tap matrix (transposed when transposed).
// Then x[p] = folded[center]·y[p] − Σ_{t≠center} folded[t]·x[p + off_t].
// `weight_group` points at the group's first output row: weight[(g*cg + c)][c'][i][j].
// `scratch` holds cg*cg values. Runs serially; callers parallelize across groups/blocks.
template <typename T>
IFLOW_HD void fold_group_weights(const T* weight_group, int cg, int kh, int kw, int corner,
                                 bool transposed, T* folded, T* linv) {
  const int ci = tap_row(corner, kh - 1, kh);
  const int cj = tap_col(corner, kw - 1, kw);
  const int64_t tap_stride = int64_t(kh) * kw;
  auto w_at = [&](int c, int cp, int i, int j) -> T {
    return weight_group[(int64_t(c) * cg + cp) * tap_stride + int64_t(i) * kw + j];
  };
  // Linv of the unit lower-triangular L, column by column (forward substitution).
  for (int col = 0; col < cg; ++col) {
    for (int r = 0; r < cg; ++r) {
      T v = r == col ? T(1) : T(0);
      for (int m = col; m < r; ++m) v -= w_at(r, m, ci, cj) * linv[m * cg + col];
      linv[r * cg + col] = r < col ? T(0) : v;
    }
  }
  const int center = (kh - 1) * kw + (kw - 1);
  for (int a = 0; a < kh; ++a) {
    for (int b = 0; b < kw; ++b) {
      const int t = a * kw + b;
      T* out = folded + int64_t(t) * cg * cg;
      if (t == center) {
        for (int c = 0; c < cg; ++c)
          for (int cp = 0; cp < cg; ++cp)
            out[c * cg + cp] = transposed ? linv[cp * cg + c] : linv[c * cg + cp];
        continue;
      }
      const int i = tap_row(corner, a, kh), j = tap_col(corner, b, kw);
      for (int c = 0; c < cg; ++c) {
        for (int cp = 0; cp < cg; ++cp) {
          T acc = T(0);
          // Only the triangle of Linv that can be non-zero: a structural zero times
          // an inf in the weight must not become NaN.
          if (!transposed) {
            for (int m = 0; m <= c; ++m) acc += linv[c * cg + m] * w_at(m, cp, i, j);
          } else {
            for (int m = c; m < cg; ++m) acc += linv[m * cg + c] * w_at(cp, m, i, j);
          }
          out[c * cg + cp] = acc;
        }
      }
    }
  }
}

}  // namespace inverseflow
