// CPU inverse-convolution solve (DESIGN.md §3 "CPU").
//
// Samples sit in the SIMD lanes: a work item packs up to `Lanes` samples of one channel
// group into a padded buffer laid out [d][h][w][c][lane], solves it in raster order (every
// step a full-width FMA, no cross-lane work), and unpacks. 2-D data is a volume of depth 1
// and 1-D data also has height 1 (docs/nd-design.md); their kernels have KD = 1 (and KH = 1)
// at compile time, so the extra axis costs nothing. OpenMP spreads work items
// (lane blocks × groups) over threads. Template arguments of 0 mean "given at run time":
// that instantiation is the generic kernel, the others are the generated specializations.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "invconv/common.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace inverseflow::cpu {

template <typename T, int Lanes>
struct Vec {
  typedef T type __attribute__((vector_size(sizeof(T) * Lanes)));
};
template <typename T>
struct Vec<T, 1> {
  using type = T;
};

// Full-width blocks fill one vector register of the target; leftovers use one lane. A
// chunk of output channels keeps one accumulator register each, plus the input and a
// broadcast weight, so the chunk is bounded by the register file: 32 zmm with AVX-512,
// 16 ymm/xmm otherwise. (64-byte vectors on an AVX2 target are pairs of ymm registers:
// 12 accumulators then need 24 of 16 and spill, which made the C=12 solve ~5x slower.)
#if defined(__AVX512F__)
inline constexpr int kVectorBytes = 64;
inline constexpr int kMaxChunk = 16;
#elif defined(__AVX__)
inline constexpr int kVectorBytes = 32;
inline constexpr int kMaxChunk = 12;
#else
inline constexpr int kVectorBytes = 16;
inline constexpr int kMaxChunk = 12;
#endif
template <typename T>
constexpr int kWideLanes = kVectorBytes / int(sizeof(T));

// Largest divisor of cg that is at most kMaxChunk: output channels are computed in chunks
// of this many accumulators so that they stay in registers.
constexpr int chunk_for(int cg) {
  for (int d = cg < kMaxChunk ? cg : kMaxChunk; d > 1; --d)
    if (cg % d == 0) return d;
  return 1;
}

// The generic kernel's chunk widths: its group size is known only at run time, so it picks
// one of these compile-time widths (register accumulators, unrolled FMAs) per call and
// pads each tap's matrix with zero rows up to whole chunks.
inline constexpr int kGenericChunks[] = {1, 2, 3, 4, 6, 8, 12, 16};

// The width for a run-time group size: fewest FMAs plus input loads, ceil(cg/w)·cg·(w+1),
// among the widths that fit the register file (larger on a tie).
constexpr int generic_chunk_for(int cg) {
  int best = 1;
  int64_t best_cost = -1;
  for (int w : kGenericChunks) {
    if (w > kMaxChunk) break;
    const int64_t cost = int64_t((cg + w - 1) / w) * (w + 1);
    if (best_cost < 0 || cost <= best_cost) best = w, best_cost = cost;
  }
  return best;
}

// Rows of one tap's matrix in the folded weights: the group size rounded up to whole chunks
// (a specialization's chunk divides it, so only the generic kernel pads).
constexpr int padded_rows(int cg, int chunk) { return (cg + chunk - 1) / chunk * chunk; }

// Where one block's samples live in NCDHW memory and in the packed buffer.
struct BlockLayout {
  int64_t depth, height, width, padded_height, padded_width;
  int64_t sample_stride, channel_stride;  // NCDHW strides, in elements
  int kd, kh, kw, cg;
  bool flip_depth, flip_rows, flip_cols;

  // Index (in vectors) of the packed voxel for image plane d, row h, column w, channel c.
  int64_t packed(int64_t d, int64_t h, int64_t w, int c) const {
    const int64_t dd = (flip_depth ? depth - 1 - d : d) + kd - 1;
    const int64_t hh = (flip_rows ? height - 1 - h : h) + kh - 1;
    const int64_t ww = (flip_cols ? width - 1 - w : w) + kw - 1;
    return ((dd * padded_height + hh) * padded_width + ww) * cg + c;
  }
  int64_t rows() const { return depth * height; }  // image rows, depth-major
};

// Solves one packed block in place. On entry the interior of `buf` holds y (top-left
// form) and its border is zero; on exit the interior holds x. With Dir = kConv it computes
// y = T x instead: the same loops in reverse raster order (a voxel reads only earlier ones,
// which still hold x) and no dependent chain. Output channels go in chunks of Chunk
// register accumulators; `folded` holds padded_rows(cg, Chunk) rows per tap (for the
// generic kernel, off-centre taps chunk-major: see solve_chunked).
template <typename T, int Lanes, int CG, int KD, int KH, int KW, int Dir, int Chunk>
void solve_packed(typename Vec<T, Lanes>::type* buf, const T* folded, const BlockLayout& g) {
  using V = typename Vec<T, Lanes>::type;
  constexpr bool Transposed = Dir == kTransposed, kReverse = Dir == kConv;
  constexpr bool kStatic = CG > 0 && KD > 0 && KH > 0 && KW > 0;
  static_assert(!kStatic || CG % Chunk == 0, "a specialization's chunk divides its group");
  const int cg = kStatic ? CG : g.cg;
  const int kd = kStatic ? KD : g.kd;
  const int kh = kStatic ? KH : g.kh;
  const int kw = kStatic ? KW : g.kw;
  const int center = kd * kh * kw - 1;
  const int64_t pw = g.padded_width, plane = g.padded_height * pw;
  const int64_t tap_stride = int64_t(padded_rows(cg, Chunk)) * cg;
  // With several chunks, later chunks still read y from `out`, so results wait in
  // `staged` until every chunk is done.
  const bool chunked = Chunk < cg;
  V staged_static[kStatic && Chunk < CG ? CG : 1];
  std::vector<V> staged_heap(kStatic ? 0 : cg);
  V* staged = kStatic ? staged_static : staged_heap.data();

  for (int64_t ri = 0; ri < g.rows(); ++ri) {  // image rows, depth-major
    const int64_t r = kReverse ? g.rows() - 1 - ri : ri;
    const int64_t d = r / g.height, h = r % g.height;
    for (int64_t wi = 0; wi < g.width; ++wi) {
      const int64_t w = kReverse ? g.width - 1 - wi : wi;
      V* out = buf + ((d + kd - 1) * plane + (h + kh - 1) * pw + (w + kw - 1)) * cg;
      for (int c0 = 0; c0 < cg; c0 += Chunk) {
        V acc[Chunk];
        // y' = Linv·y (for the conv, L·x) over the triangle that can be non-zero only
        // (lower for the solve and the conv, upper for the transposed solve), so a NaN in
        // channel c' reaches just the channels that depend on it.
        const T* lin = folded + center * tap_stride;
#pragma GCC unroll 16
        for (int c = 0; c < Chunk; ++c) {
          const int co = c0 + c;
          if (!kStatic && co >= cg) {  // a padding row of the generic kernel's last chunk
            acc[c] = V{};
            continue;
          }
          const int lo = Transposed ? co : 0, hi = Transposed ? cg - 1 : co;
          V s = out[co] * lin[co * cg + co];
          for (int cp = lo; cp <= hi; ++cp)
            if (cp != co) s += out[cp] * lin[co * cg + cp];
          acc[c] = s;
        }
        for (int e = 0; e < kd; ++e) {
          for (int a = 0; a < kh; ++a) {
            for (int b = 0; b < kw; ++b) {
              const int t = (e * kh + a) * kw + b;
              if (t == center) continue;
              const V* src = buf + ((d + e) * plane + (h + a) * pw + (w + b)) * cg;
              const T* wt = folded + t * tap_stride + int64_t(c0) * cg;
              for (int cp = 0; cp < cg; ++cp) {
                const V xv = src[cp];
                if constexpr (kStatic) {
#pragma GCC unroll 16
                  for (int c = 0; c < Chunk; ++c) acc[c] -= wt[c * cg + cp] * xv;
                } else {  // chunk-major [cp][c]: constant offsets from one pointer
                  const T* wc = wt + cp * Chunk;
#pragma GCC unroll 16
                  for (int c = 0; c < Chunk; ++c) acc[c] -= wc[c] * xv;
                }
              }
            }
          }
        }
        V* dst = chunked ? staged : out;
#pragma GCC unroll 16
        for (int c = 0; c < Chunk; ++c)
          if (kStatic || c0 + c < cg) dst[c0 + c] = acc[c];
      }
      if (chunked)
        for (int c = 0; c < cg; ++c) out[c] = staged[c];
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#define IFLOW_HAVE_SHUFFLE 1
template <typename T, int Lanes>
struct MaskOf {
  using Int = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef Int type __attribute__((vector_size(sizeof(T) * Lanes)));
};

// In-register transpose of a Lanes x Lanes tile: log2(Lanes) rounds of two-input
// shuffles, each round swapping the off-diagonal sub-blocks of width b.
template <typename T, int Lanes>
inline void transpose_tile(typename Vec<T, Lanes>::type* rows) {
  using V = typename Vec<T, Lanes>::type;
  using M = typename MaskOf<T, Lanes>::type;
#pragma GCC unroll 8
  for (int b = Lanes / 2; b >= 1; b /= 2) {
    M lo, hi;
#pragma GCC unroll 16
    for (int p = 0; p < Lanes; ++p) {
      const int seg = p / (2 * b) * 2 * b, off = p % (2 * b);
      lo[p] = off < b ? seg + off : Lanes + seg + off - b;
      hi[p] = off < b ? seg + b + off : Lanes + seg + off;
    }
#pragma GCC unroll 16
    for (int i = 0; i < Lanes; ++i) {
      if (i & b) continue;
      const V a = rows[i], c = rows[i + b];
      rows[i] = __builtin_shuffle(a, c, lo);
      rows[i + b] = __builtin_shuffle(a, c, hi);
    }
  }
}
#endif

// NCDHW samples -> packed [d][h][w][c][lane] (top-left form). Lanes past nb stay zero.
template <typename T, int Lanes>
void pack_block(const T* y, int nb, const BlockLayout& l, typename Vec<T, Lanes>::type* buf) {
  using V = typename Vec<T, Lanes>::type;
#if defined(IFLOW_HAVE_SHUFFLE)
  if constexpr (Lanes > 1) {
    // Tiles of Lanes samples x Lanes columns, transposed in registers.
    for (int c = 0; c < l.cg; ++c) {
      for (int64_t r = 0; r < l.rows(); ++r) {
        const int64_t d = r / l.height, h = r % l.height;
        const T* row0 = y + c * l.channel_stride + r * l.width;
        for (int64_t w0 = 0; w0 < l.width; w0 += Lanes) {
          const int n = int(std::min<int64_t>(Lanes, l.width - w0));
          V tile[Lanes];
          for (int s = 0; s < Lanes; ++s) {
            tile[s] = V{};
            if (s < nb) std::memcpy(&tile[s], row0 + s * l.sample_stride + w0, n * sizeof(T));
          }
          transpose_tile<T, Lanes>(tile);
          for (int j = 0; j < n; ++j) buf[l.packed(d, h, w0 + j, c)] = tile[j];
        }
      }
    }
    return;
  }
#endif
  T* lanes = reinterpret_cast<T*>(buf);
  for (int s = 0; s < nb; ++s)
    for (int c = 0; c < l.cg; ++c)
      for (int64_t r = 0; r < l.rows(); ++r) {
        const int64_t d = r / l.height, h = r % l.height;
        const T* src = y + s * l.sample_stride + c * l.channel_stride + r * l.width;
        for (int64_t w = 0; w < l.width; ++w) lanes[l.packed(d, h, w, c) * Lanes + s] = src[w];
      }
}

// Packed [d][h][w][c][lane] -> NCDHW samples, the inverse of pack_block for lanes < nb.
template <typename T, int Lanes>
void unpack_block(const typename Vec<T, Lanes>::type* buf, int nb, const BlockLayout& l, T* x) {
  using V = typename Vec<T, Lanes>::type;
#if defined(IFLOW_HAVE_SHUFFLE)
  if constexpr (Lanes > 1) {
    for (int c = 0; c < l.cg; ++c) {
      for (int64_t r = 0; r < l.rows(); ++r) {
        const int64_t d = r / l.height, h = r % l.height;
        T* row0 = x + c * l.channel_stride + r * l.width;
        for (int64_t w0 = 0; w0 < l.width; w0 += Lanes) {
          const int n = int(std::min<int64_t>(Lanes, l.width - w0));
          V tile[Lanes];
          for (int j = 0; j < Lanes; ++j) tile[j] = j < n ? buf[l.packed(d, h, w0 + j, c)] : V{};
          transpose_tile<T, Lanes>(tile);
          for (int s = 0; s < nb; ++s)
            std::memcpy(row0 + s * l.sample_stride + w0, &tile[s], n * sizeof(T));
        }
      }
    }
    return;
  }
#endif
  const T* lanes = reinterpret_cast<const T*>(buf);
  for (int s = 0; s < nb; ++s)
    for (int c = 0; c < l.cg; ++c)
      for (int64_t r = 0; r < l.rows(); ++r) {
        const int64_t d = r / l.height, h = r % l.height;
        T* dst = x + s * l.sample_stride + c * l.channel_stride + r * l.width;
        for (int64_t w = 0; w < l.width; ++w) dst[w] = lanes[l.packed(d, h, w, c) * Lanes + s];
      }
}

template <typename T, int Lanes, int CG, int KD, int KH, int KW, int Dir, int Chunk>
void solve_block(const SolveArgs& args, const T* folded_all, int64_t b0, int nb, int group,
                 std::vector<typename Vec<T, Lanes>::type>& buf) {
  using V = typename Vec<T, Lanes>::type;
  constexpr bool Transposed = Dir == kTransposed;
  const int G = num_groups(args.pattern);
  const int cg = int(args.channels / G);
  const int kd = args.kd, kh = args.kh, kw = args.kw;
  const int64_t D = args.depth, H = args.height, W = args.width, C = args.channels;
  const int64_t ph = H + kh - 1, pw = W + kw - 1;
  const int64_t volume = D * H * W;
  const int corner = group_corner(args.pattern, group);

  const size_t need = size_t((D + kd - 1) * ph * pw * cg);
  if (buf.size() != need) buf.assign(need, V{});
  else std::memset(static_cast<void*>(buf.data()), 0, need * sizeof(V));

  const T* y = static_cast<const T*>(args.y) + (b0 * C + int64_t(group) * cg) * volume;
  T* x = static_cast<T*>(args.x) + (b0 * C + int64_t(group) * cg) * volume;
  const BlockLayout layout{D, H, W, ph, pw, C * volume, volume, kd, kh, kw, cg,
                           flips_depth(corner, Transposed), flips_rows(corner, Transposed),
                           flips_cols(corner, Transposed)};
  pack_block<T, Lanes>(y, nb, layout, buf.data());
  solve_packed<T, Lanes, CG, KD, KH, KW, Dir, Chunk>(
      buf.data(), folded_all + int64_t(group) * kd * kh * kw * padded_rows(cg, Chunk) * cg,
      layout);
  unpack_block<T, Lanes>(buf.data(), nb, layout, x);
}

// The causal conv of one sample's channel group with the lanes holding row strips of that
// sample instead of samples (the conv has no dependency between voxels): lane s takes the
// top-left-form rows [s·strip, (s+1)·strip) plus the kh−1 rows above them as its border, so
// a batch smaller than the vector still fills it. Depth 1 and kd = 1 (2-D data) only.
template <typename T, int Lanes, int CG, int KD, int KH, int KW, int Chunk>
void conv_strips(const SolveArgs& args, const T* folded_all, int64_t n, int group,
                 std::vector<typename Vec<T, Lanes>::type>& buf) {
  using V = typename Vec<T, Lanes>::type;
  const int G = num_groups(args.pattern);
  const int cg = int(args.channels / G);
  const int kh = args.kh, kw = args.kw;
  const int64_t H = args.height, W = args.width, C = args.channels, plane = H * W;
  const int64_t strip = (H + Lanes - 1) / Lanes;
  const int64_t ph = strip + kh - 1, pw = W + kw - 1;
  const int corner = group_corner(args.pattern, group);
  const bool fr = flips_rows(corner, false), fc = flips_cols(corner, false);

  const size_t need = size_t(ph * pw * cg);
  if (buf.size() != need) buf.assign(need, V{});
  else std::memset(static_cast<void*>(buf.data()), 0, need * sizeof(V));
  T* lanes = reinterpret_cast<T*>(buf.data());
  const T* y = static_cast<const T*>(args.y) + (n * C + int64_t(group) * cg) * plane;
  T* x = static_cast<T*>(args.x) + (n * C + int64_t(group) * cg) * plane;

  for (int s = 0; s < Lanes; ++s)
    for (int64_t i = 0; i < ph; ++i) {   // buffer row i of lane s: top-left-form row r
      const int64_t r = s * strip + i - (kh - 1);
      if (r < 0 || r >= H) continue;     // the image's own zero border, or past its end
      const int64_t h = fr ? H - 1 - r : r;
      for (int c = 0; c < cg; ++c) {
        const T* src = y + c * plane + h * W;
        for (int64_t w = 0; w < W; ++w)
          lanes[((i * pw + w + kw - 1) * cg + c) * Lanes + s] = src[fc ? W - 1 - w : w];
      }
    }
  const BlockLayout layout{1, strip, W, ph, pw, C * plane, plane, 1, kh, kw, cg,
                           false, false, false};
  solve_packed<T, Lanes, CG, KD, KH, KW, kConv, Chunk>(
      buf.data(), folded_all + int64_t(group) * kh * kw * padded_rows(cg, Chunk) * cg, layout);
  for (int s = 0; s < Lanes; ++s)
    for (int64_t i = 0; i < strip; ++i) {
      const int64_t r = s * strip + i;
      if (r >= H) break;
      const int64_t h = fr ? H - 1 - r : r;
      for (int c = 0; c < cg; ++c) {
        T* dst = x + c * plane + h * W;
        for (int64_t w = 0; w < W; ++w)
          dst[fc ? W - 1 - w : w] = lanes[(((i + kh - 1) * pw + w + kw - 1) * cg + c) * Lanes + s];
      }
    }
}

// One solve with Chunk output channels per chunk (see solve below).
template <typename T, int CG, int KD, int KH, int KW, int Dir, int Chunk>
void solve_chunked(const SolveArgs& args) {
  const int G = num_groups(args.pattern);
  const int cg = int(args.channels / G);
  const int kd = args.kd, kh = args.kh, kw = args.kw;
  const int64_t taps = int64_t(kd) * kh * kw;
  if (args.batch == 0 || args.channels == 0 || args.depth == 0 || args.height == 0 ||
      args.width == 0)
    return;

  std::vector<T> folded(size_t(G * taps * cg * cg));
  std::vector<T> linv(size_t(cg * cg));
  const T* weight = static_cast<const T*>(args.weight);
  for (int g = 0; g < G; ++g) {
    const T* wg = weight + int64_t(g) * cg * cg * taps;
    T* fg = folded.data() + g * taps * cg * cg;
    if constexpr (Dir == kConv)
      conv_group_weights<T>(wg, cg, kd, kh, kw, group_corner(args.pattern, g), fg);
    else
      fold_group_weights<T>(wg, cg, kd, kh, kw, group_corner(args.pattern, g),
                            Dir == kTransposed, fg, linv.data());
  }
  if constexpr (!(CG > 0 && KD > 0 && KH > 0 && KW > 0)) {
    // The generic kernel: each tap's rows padded with zeros up to whole chunks, and the
    // off-centre taps stored chunk by chunk as [input channel][output channel in chunk],
    // so that with a run-time group size the unrolled chunk still reads its weights at
    // constant offsets from one pointer (a row stride known only at run time needed a
    // register per row: 1.6x the specialization on AVX2). The centre stays row-major.
    const int rows = padded_rows(cg, Chunk);
    std::vector<T> packed(size_t(G * taps * rows * cg), T(0));
    for (int64_t m = 0; m < G * taps; ++m) {
      const T* src = folded.data() + m * cg * cg;
      T* dst = packed.data() + m * rows * cg;
      const bool centre = m % taps == taps - 1;
      for (int c = 0; c < cg; ++c)
        for (int cp = 0; cp < cg; ++cp)
          dst[centre ? c * cg + cp : (c / Chunk * Chunk) * cg + cp * Chunk + c % Chunk] =
              src[c * cg + cp];
    }
    folded.swap(packed);
  }

  constexpr int L = kWideLanes<T>;
  const T* fp = folded.data();
  if constexpr (Dir == kConv && (KD == 0 || KD == 1)) {
    // A batch of at most half a vector: row strips of each sample fill the lanes instead.
    if (args.batch * 2 <= L && args.depth == 1 && args.kd == 1 && args.height >= 2) {
      const int64_t items = args.batch * G;
      const int threads = int(std::max<int64_t>(1, std::min<int64_t>(args.num_threads, items)));
#pragma omp parallel num_threads(threads)
      {
        std::vector<typename Vec<T, L>::type> strip_buf;
#pragma omp for schedule(static)
        for (int64_t item = 0; item < items; ++item)
          conv_strips<T, L, CG, KD, KH, KW, Chunk>(args, fp, item / G, int(item % G), strip_buf);
      }
      return;
    }
  }
  // Samples go in full-width blocks; a short tail runs one sample at a time unless it
  // fills at least a quarter of a block.
  const int64_t full = args.batch / L;
  const int64_t tail = args.batch - full * L;
  const bool tail_wide = tail * 4 >= L;
  const int64_t wide_blocks = full + (tail_wide && tail > 0 ? 1 : 0);
  const int64_t narrow = tail_wide ? 0 : tail;
  const int64_t items = (wide_blocks + narrow) * G;
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(args.num_threads, items)));

#pragma omp parallel num_threads(threads)
  {
    std::vector<typename Vec<T, L>::type> wide_buf;
    std::vector<T> narrow_buf;
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int group = int(item % G);
      const int64_t block = item / G;
      if (block < wide_blocks) {
        const int64_t b0 = block * L;
        const int nb = int(std::min<int64_t>(L, args.batch - b0));
        solve_block<T, L, CG, KD, KH, KW, Dir, Chunk>(args, fp, b0, nb, group, wide_buf);
      } else {
        const int64_t b0 = full * L + (block - wide_blocks);
        solve_block<T, 1, CG, KD, KH, KW, Dir, Chunk>(args, fp, b0, 1, group, narrow_buf);
      }
    }
  }
}

// Entry point for one specialization (or, with zeros, the generic kernel). A
// specialization's chunk is the largest divisor of its group size that fits the register
// file; the generic kernel picks a compile-time chunk width for the run-time group size,
// so its accumulators stay in registers too (issue 27: it had run 1.6-2.5x slower, with
// one heap accumulator per channel).
template <typename T, int CG, int KD, int KH, int KW, int Dir>
void solve(const SolveArgs& args) {
  constexpr bool kStatic = CG > 0 && KD > 0 && KH > 0 && KW > 0;
  if constexpr (kStatic) {
    solve_chunked<T, CG, KD, KH, KW, Dir, chunk_for(CG)>(args);
  } else {
    const int cg = int(args.channels / num_groups(args.pattern));
    switch (generic_chunk_for(cg)) {
      case 1: return solve_chunked<T, CG, KD, KH, KW, Dir, 1>(args);
      case 2: return solve_chunked<T, CG, KD, KH, KW, Dir, 2>(args);
      case 3: return solve_chunked<T, CG, KD, KH, KW, Dir, 3>(args);
      case 4: return solve_chunked<T, CG, KD, KH, KW, Dir, 4>(args);
      case 6: return solve_chunked<T, CG, KD, KH, KW, Dir, 6>(args);
      case 8: return solve_chunked<T, CG, KD, KH, KW, Dir, 8>(args);
      case 12: return solve_chunked<T, CG, KD, KH, KW, Dir, 12>(args);
      default: return solve_chunked<T, CG, KD, KH, KW, Dir, 16>(args);
    }
  }
}

}  // namespace inverseflow::cpu
