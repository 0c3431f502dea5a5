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
// the generated registries. Every solve is 3-D (depth, height, width); 2-D data has a
// depth of 1 and 1-D data a depth and height of 1 (docs/nd-design.md). A corner is three
// bits, set for the far side of depth (4), height (2) and width (1): the 2-D corners TL..BR
// are the near-depth 3-D corners NTL..NBR (codes 0-3), and 1-D's L and R are TL and TR.
// The far-depth corners FTL..FBR have codes 7-10 so that the 2-D codes never changed.
enum Pattern : int {
  kTL = 0, kTR = 1, kBL = 2, kBR = 3,
  kQuad = 4,  // 2-D: four channel groups, from corners 0..3
  kPair = 5,  // 1-D: two channel groups, from L (0) and R (1)
  kOct = 6,   // 3-D: eight channel groups, from corners 0..7
  kFTL = 7, kFTR = 8, kFBL = 9, kFBR = 10,
  kNumPatterns = 11
};
enum DType : int { kFloat32 = 0, kFloat64 = 1 };
// kConv is the causal convolution itself, y = T x (the sampling pass): the solve's loops
// and data layout without the recurrence (DESIGN.md §15).
enum Direction : int { kSolve = 0, kTransposed = 1, kConv = 2, kNumDirections = 3 };

// Everything a solve needs, type-erased so that one function-pointer type serves every
// specialization. Tensors are contiguous NCDHW; weight is (C, C/G, kd, kh, kw).
struct SolveArgs {
  const void* y;
  const void* weight;
  void* x;
  int64_t batch, channels, depth, height, width;
  int kd, kh, kw;
  int pattern;
  int num_threads;  // CPU: OpenMP threads to use
  void* stream;     // CUDA: cudaStream_t
};

using SolveFn = void (*)(const SolveArgs&);

// The generic (run-time shape) solves of a backend, for both dtypes and every direction:
// `extern` in the launchers' headers, instantiated once per module (IFLOW_GENERIC_SOLVES()).
// Expands inside the backend's namespace, where `solve` is its entry point.
#define IFLOW_GENERIC_SOLVES(prefix)                                  \
  prefix template void solve<float, 0, 0, 0, 0, kSolve>(const SolveArgs&);       \
  prefix template void solve<float, 0, 0, 0, 0, kTransposed>(const SolveArgs&);  \
  prefix template void solve<float, 0, 0, 0, 0, kConv>(const SolveArgs&);        \
  prefix template void solve<double, 0, 0, 0, 0, kSolve>(const SolveArgs&);      \
  prefix template void solve<double, 0, 0, 0, 0, kTransposed>(const SolveArgs&); \
  prefix template void solve<double, 0, 0, 0, 0, kConv>(const SolveArgs&);

IFLOW_HD int num_groups(int pattern) {
  return pattern == kQuad ? 4 : pattern == kPair ? 2 : pattern == kOct ? 8 : 1;
}

// The corner (three bits, see Pattern) that group g of a pattern pads; a group pattern's
// groups take the corners in order.
IFLOW_HD int group_corner(int pattern, int g) {
  if (pattern == kQuad || pattern == kPair || pattern == kOct) return g;
  return pattern >= kFTL ? pattern - kFTL + 4 : pattern;
}

// Every solve is run as a near-top-left solve on a flipped volume: a corner padded at the
// bottom reads later rows, so flipping rows makes it read earlier ones (same for columns
// and depth). The transposed solve reads the opposite neighbours, hence the opposite corner.
IFLOW_HD int solved_corner(int corner, bool transposed) { return transposed ? 7 - corner : corner; }
IFLOW_HD bool flips_depth(int corner, bool transposed) {
  return (solved_corner(corner, transposed) & 4) != 0;
}
IFLOW_HD bool flips_rows(int corner, bool transposed) {
  return (solved_corner(corner, transposed) & 2) != 0;
}
IFLOW_HD bool flips_cols(int corner, bool transposed) {
  return (solved_corner(corner, transposed) & 1) != 0;
}

// Weight tap index [s, i, j] that lands on top-left-form tap (e, a, b), where (e, a, b)
// reads the flipped volume at offset (e - (kd-1), a - (kh-1), b - (kw-1)). Negating the
// offsets (transposed) and flipping for the opposite corner cancel out, so the map
// depends on the corner alone.
IFLOW_HD int tap_depth(int corner, int e, int kd) { return (corner & 4) ? kd - 1 - e : e; }
IFLOW_HD int tap_row(int corner, int a, int kh) { return (corner & 2) ? kh - 1 - a : a; }
IFLOW_HD int tap_col(int corner, int b, int kw) { return (corner & 1) ? kw - 1 - b : b; }

// Folded weights for one group, in top-left form (DESIGN §2 "folded form"):
//   folded[((e*kh + a)*kw + b)*cg*cg + c*cg + c'] = (Linv · A_eab)[c][c']  off the center,
//   folded[center] = Linv (the center is the last tap),
// with L the masked center matrix (unit lower triangular; its transpose when
// transposed), Linv = L^-1 and A_eab the tap matrix (transposed when transposed).
// Then x[p] = folded[center]·y[p] − Σ_{t≠center} folded[t]·x[p + off_t].
// `weight_group` points at the group's first output row: weight[(g*cg + c)][c'][s][i][j].
// `linv` holds cg*cg values. Runs serially; callers parallelize across groups/blocks.
template <typename T>
IFLOW_HD void fold_group_weights(const T* weight_group, int cg, int kd, int kh, int kw,
                                 int corner, bool transposed, T* folded, T* linv) {
  const int cs = tap_depth(corner, kd - 1, kd);
  const int ci = tap_row(corner, kh - 1, kh);
  const int cj = tap_col(corner, kw - 1, kw);
  const int64_t tap_stride = int64_t(kd) * kh * kw;
  auto w_at = [&](int c, int cp, int s, int i, int j) -> T {
    return weight_group[(int64_t(c) * cg + cp) * tap_stride + (int64_t(s) * kh + i) * kw + j];
  };
  // Linv of the unit lower-triangular L, column by column (forward substitution).
  for (int col = 0; col < cg; ++col) {
    for (int r = 0; r < cg; ++r) {
      T v = r == col ? T(1) : T(0);
      for (int m = col; m < r; ++m) v -= w_at(r, m, cs, ci, cj) * linv[m * cg + col];
      linv[r * cg + col] = r < col ? T(0) : v;
    }
  }
  const int taps = kd * kh * kw, center = taps - 1;
  for (int t = 0; t < taps; ++t) {
    T* out = folded + int64_t(t) * cg * cg;
    if (t == center) {
      for (int c = 0; c < cg; ++c)
        for (int cp = 0; cp < cg; ++cp)
          out[c * cg + cp] = transposed ? linv[cp * cg + c] : linv[c * cg + cp];
      continue;
    }
    const int e = t / (kh * kw), a = (t / kw) % kh, b = t % kw;
    const int s = tap_depth(corner, e, kd), i = tap_row(corner, a, kh), j = tap_col(corner, b, kw);
    for (int c = 0; c < cg; ++c) {
      for (int cp = 0; cp < cg; ++cp) {
        T acc = T(0);
        // Only the triangle of Linv that can be non-zero: a structural zero times
        // an inf in the weight must not become NaN.
        if (!transposed) {
          for (int m = 0; m <= c; ++m) acc += linv[c * cg + m] * w_at(m, cp, s, i, j);
        } else {
          for (int m = c; m < cg; ++m) acc += linv[m * cg + c] * w_at(cp, m, s, i, j);
        }
        out[c * cg + cp] = acc;
      }
    }
  }
}

// Weights of the causal convolution y = T x for one group, in the layout of
// fold_group_weights: conv[center] = L (the masked center, unit lower triangular) and
// conv[t] = −A_t off the center, negated so that the kernels' `acc -= w·x` adds the tap.
// conv_tap is one entry [t][c][c'], so that a GPU block can fill its copy in parallel.
template <typename T>
IFLOW_HD T conv_tap(const T* weight_group, int cg, int kd, int kh, int kw, int corner, int t,
                    int c, int cp) {
  const int center = kd * kh * kw - 1;
  const int e = t / (kh * kw), a = (t / kw) % kh, b = t % kw;
  const int64_t tap = (int64_t(tap_depth(corner, e, kd)) * kh + tap_row(corner, a, kh)) * kw +
                      tap_col(corner, b, kw);
  const T w = weight_group[(int64_t(c) * cg + cp) * kd * kh * kw + tap];
  return t != center ? -w : c == cp ? T(1) : c > cp ? w : T(0);
}

template <typename T>
IFLOW_HD void conv_group_weights(const T* weight_group, int cg, int kd, int kh, int kw,
                                 int corner, T* conv) {
  for (int t = 0; t < kd * kh * kw; ++t)
    for (int c = 0; c < cg; ++c)
      for (int cp = 0; cp < cg; ++cp)
        conv[(int64_t(t) * cg + c) * cg + cp] = conv_tap(weight_group, cg, kd, kh, kw, corner, t, c, cp);
}

}  // namespace inverseflow
