// CUDA inverse-convolution solve kernels (DESIGN.md §3 "CUDA"): the device code only.
//
// One launch; each block owns one (sample, channel group) and keeps that group's folded
// weights in shared memory. Every solve is 3-D (docs/nd-design.md): 2-D data has depth 1,
// 1-D data depth and height 1. Fast path: the padded x, [dp][hp][wp][c] in top-left form,
// lives in shared memory too; the block stages y there, applies Linv per voxel, then walks
// the D+H+W-2 hyperplanes d+h+w = s with one barrier each (threads cover voxel × output
// channel) and writes x back. Fallback, when that does not fit: the generic kernel walks
// in the output x in global memory (bounds checks instead of a border), with the folded
// weights in shared memory or, if even they do not fit, in a per-block global workspace.
// Template sizes of 0 mean "given at run time"; CG = KD = KH = KW = 0 is the generic kernel.
// Dir = kConv computes the causal convolution y = T x instead (the sampling pass): every
// voxel at once from the staged input, with no walk and no barrier after staging.
//
// Kept apart from the launcher (cuda_solve.cuh, with its <<<...>>> and CUDA runtime calls)
// so that the CPU emulation (DESIGN.md §8, csrc/emu/) compiles these very bodies as host
// C++. Hence no #include <cuda_runtime.h> here: nvcc pre-includes the CUDA language
// definitions, and the emulation's launcher (csrc/emu/invconv/cuda_solve.cuh) includes
// csrc/emu/cuda_host_shim.h before this header instead.
#pragma once

#include <cstdint>
#include <string>

#include "invconv/common.h"
#include "invconv/cuda_launch_plan.h"

namespace inverseflow::cuda {
namespace detail {

template <typename T>
struct Params {
  const T* __restrict__ y;
  const T* __restrict__ weight;
  T* x;   // also read back inside the kernel (fallback), so never __restrict__/read-only
  T* ws;  // per-block folded weights in global memory, or null when they fit in shared
  int64_t batch;
  int cg, kd, kh, kw, depth, height, width, pattern;
};

// The voxels of hyperplane d + h + w = s: depths d0..d1, and for each depth the rows
// h0(d)..h1(d) (w = s - d - h). Threads cover a rectangle of depths × `span` rows ×
// channels and skip rows outside the plane; with depth 1 the span is the diagonal's exact
// length, as in a 2-D walk.
struct Hyperplane {
  int d0, d1, span;
  IFLOW_HD Hyperplane(int s, int D, int H, int W) {
    d0 = s - (H - 1) - (W - 1) > 0 ? s - (H - 1) - (W - 1) : 0;
    d1 = s < D - 1 ? s : D - 1;
    if (d0 == d1) {
      span = row_hi(d0, s, H) - row_lo(d0, s, W) + 1;
    } else {
      span = H < W ? H : W;
    }
  }
  static IFLOW_HD int row_lo(int d, int s, int W) { return s - d - (W - 1) > 0 ? s - d - (W - 1) : 0; }
  static IFLOW_HD int row_hi(int d, int s, int H) { return s - d < H - 1 ? s - d : H - 1; }
  // Fits in int: check_solve_shape bounds D·min(H, W)·cg.
  IFLOW_HD int items(int cg) const { return (d1 - d0 + 1) * span * cg; }
};

// Folds this block's group (fold_group_weights, same triangles and summation order) into
// fw, stored [t][c'][c] rather than [t][c][c'] so that the threads of one pixel, which
// differ in c, read consecutive banks. linv is cg×cg scratch, [r][col].
template <typename T, bool Tr>
__device__ void fold(const T* __restrict__ wg, int cg, int kd, int kh, int kw, int corner,
                     T* fw, T* linv) {
  const int cs = tap_depth(corner, kd - 1, kd), ci = tap_row(corner, kh - 1, kh),
            cj = tap_col(corner, kw - 1, kw);
  const int taps = kd * kh * kw, cc = cg * cg;
  auto w_at = [&](int c, int cp, int s, int i, int j) {
    return wg[(int64_t(c) * cg + cp) * taps + (s * kh + i) * kw + j];
  };
  // Columns of Linv are independent forward substitutions: one thread each, no barriers.
#pragma unroll 1
  for (int col = threadIdx.x; col < cg; col += blockDim.x) {
#pragma unroll 1
    for (int r = 0; r < cg; ++r) {
      T v = r == col ? T(1) : T(0);
#pragma unroll 1
      for (int m = col; m < r; ++m) v -= w_at(r, m, cs, ci, cj) * linv[m * cg + col];
      linv[r * cg + col] = r < col ? T(0) : v;
    }
  }
  __syncthreads();
#pragma unroll 1
  for (int e = threadIdx.x; e < taps * cc; e += blockDim.x) {
    const int t = e / cc, cp = (e - t * cc) / cg, c = e - t * cc - cp * cg;
    T acc = T(0);
    if (t == taps - 1) {  // the center tap is the last one in top-left form
      acc = Tr ? linv[cp * cg + c] : linv[c * cg + cp];
    } else {
      const int s = tap_depth(corner, t / (kh * kw), kd);
      const int i = tap_row(corner, (t / kw) % kh, kh), j = tap_col(corner, t % kw, kw);
      // Structural zeros of Linv are skipped so that 0 · inf never makes a NaN.
      if (!Tr) {
#pragma unroll 1
        for (int m = 0; m <= c; ++m) acc += linv[c * cg + m] * w_at(m, cp, s, i, j);
      } else {
#pragma unroll 1
        for (int m = c; m < cg; ++m) acc += linv[m * cg + c] * w_at(cp, m, s, i, j);
      }
    }
    fw[e] = acc;
  }
}

// dst[c] = Σ lin[c][c'] src[c'] over the structurally non-zero triangle only (c' ≤ c for
// the solve, c' ≥ c transposed), so a NaN in channel c' reaches just the channels that
// depend on it; diagonal first, then ascending c', as the CPU kernel sums. Channels are
// visited in the order that never reads one already written, so src == dst is safe.
template <typename T, int CG, bool Tr, typename S>
__device__ __forceinline__ void apply_center(const T* src, T* dst, S stride, const T* lin,
                                             int cg) {
#pragma unroll 1
  for (int k = 0; k < cg; ++k) {
    const int c = Tr ? k : cg - 1 - k;
    T s = lin[c * cg + c] * src[c * stride];
    const int lo = Tr ? c + 1 : 0, hi = Tr ? cg : c;
#pragma unroll 4
    for (int cp = lo; cp < hi; ++cp) s += lin[cp * cg + c] * src[cp * stride];
    dst[c * stride] = s;
  }
}

template <typename T, int CG, int KD, int KH, int KW, int Dir, bool XShared>
__global__ void __launch_bounds__(kMaxThreads) solve_kernel(const Params<T> p) {
  constexpr bool Tr = Dir == kTransposed, kConvolve = Dir == kConv;
  constexpr int kUnroll = CG > 0 && KD > 0 && KH > 0 && KW > 0 ? 64 : 1;
  const int cg = CG > 0 ? CG : p.cg;
  const int kd = KD > 0 ? KD : p.kd;
  const int kh = KH > 0 ? KH : p.kh;
  const int kw = KW > 0 ? KW : p.kw;
  const int D = p.depth, H = p.height, W = p.width, taps = kd * kh * kw, cc = cg * cg;
  const int64_t plane = int64_t(H) * W, volume = D * plane;
  const int G = num_groups(p.pattern), g = int(blockIdx.x) % G;
  const int corner = group_corner(p.pattern, g);
  const bool fd = flips_depth(corner, Tr), fr = flips_rows(corner, Tr),
             fc = flips_cols(corner, Tr);
  const int steps = D + H + W - 2;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  // XShared is a constant, so the fast path's weight loads are plain ld.shared.
  T* fw = (XShared || p.ws == nullptr) ? smem : p.ws + int64_t(blockIdx.x) * (taps + 1) * cc;
  if constexpr (kConvolve) {
    // The taps with the center masked, stored [t][c'][c] like fold's.
    for (int e = threadIdx.x; e < taps * cc; e += blockDim.x) {
      const int t = e / cc, cp = (e - t * cc) / cg, c = e - t * cc - cp * cg;
      fw[e] = conv_tap<T>(p.weight + int64_t(g) * cc * taps, cg, kd, kh, kw, corner, t, c, cp);
    }
    __syncthreads();
  } else {
    fold<T, Tr>(p.weight + int64_t(g) * cc * taps, cg, kd, kh, kw, corner, fw, fw + taps * cc);
  }
  const T* lin = fw + (taps - 1) * cc;

  // gridDim.x is a multiple of G, so a block keeps its group (and its fold) while it
  // strides over samples; only the global-workspace fallback has fewer blocks than items.
  for (int64_t n = blockIdx.x / G; n < p.batch; n += gridDim.x / G) {
    const int64_t base = (n * G + g) * cg * volume;
    const T* yn = p.y + base;
    T* xn = p.x + base;
    if constexpr (XShared) {
      T* buf = smem + (taps + 1) * cc;
      const int hp = H + kh - 1, wp = W + kw - 1;
      // Everything staged fits in shared memory, so its indices fit in int (32-bit
      // division: 64-bit division is a call that made the generic kernels spill).
      const int padded = (D + kd - 1) * hp * wp;
      // Zero the border: padded voxels before the image on any axis.
      for (int e = threadIdx.x; e < padded; e += blockDim.x) {
        const int dd = e / (hp * wp), hh = (e / wp) % hp, ww = e % wp;
        if (dd < kd - 1 || hh < kh - 1 || ww < kw - 1)
          for (int c = 0; c < cg; ++c) buf[e * cg + c] = T(0);
      }
      // Stage y in global order, so the reads coalesce along w.
      const int vol = int(volume), pl = H * W;
      auto at = [&](int e) {  // global NCDHW index within the sample -> buffer index
        const int c = e / vol, gd = (e / pl) % D, gh = (e / W) % H, gw = e % W;
        const int d = fd ? D - 1 - gd : gd, h = fr ? H - 1 - gh : gh, w = fc ? W - 1 - gw : gw;
        return (((d + kd - 1) * hp + h + kh - 1) * wp + w + kw - 1) * cg + c;
      };
      for (int e = threadIdx.x; e < cg * vol; e += blockDim.x) buf[at(e)] = yn[e];
      __syncthreads();
      // The causal conv: output element e reads its window of the staged input, with no
      // walk (the solve's walk below is compiled out).
      auto convolved = [&](int e) {
        const int centre = at(e);
        const int c = centre % cg;
        const T* px = buf + (centre - c);
        T acc = lin[c * cg + c] * px[c];
        for (int cp = 0; cp < c; ++cp) acc += lin[cp * cg + c] * px[cp];
        const T* win = px - (((kd - 1) * hp + kh - 1) * wp + kw - 1) * cg;
        for (int t = 0; t < taps - 1; ++t) {
          const int te = t / (kh * kw), ta = (t / kw) % kh, tb = t % kw;
          const T* src = win + ((te * hp + ta) * wp + tb) * cg;
          const T* wt = fw + int64_t(t) * cc + c;
          for (int cp = 0; cp < cg; ++cp) acc -= wt[cp * cg] * src[cp];
        }
        return acc;
      };
      if constexpr (!kConvolve) {
        // y' = Linv·y for every voxel at once, off the dependent chain of the walk.
        for (int e = threadIdx.x; e < vol; e += blockDim.x) {
          const int d = e / pl, h = (e / W) % H, w = e % W;
          T* px = buf + (((d + kd - 1) * hp + h + kh - 1) * wp + w + kw - 1) * cg;
          apply_center<T, CG, Tr>(px, px, 1, lin, cg);
        }
        __syncthreads();
        for (int s = 0; s <= steps; ++s) {
          const Hyperplane hyp(s, D, H, W);
          for (int i = threadIdx.x; i < hyp.items(cg); i += blockDim.x) {
            const int c = i % cg, q = (i / cg) % hyp.span;
            const int d = hyp.d0 + i / (cg * hyp.span);
            const int h = Hyperplane::row_lo(d, s, W) + q, w = s - d - h;
            if (h > Hyperplane::row_hi(d, s, H)) continue;
            // Padded (d + e, h + a, w + b) is tap (e, a, b) of the window of voxel (d, h, w).
            const T* win = buf + ((d * hp + h) * wp + w) * cg;
            T* out = buf + (((d + kd - 1) * hp + h + kh - 1) * wp + w + kw - 1) * cg + c;
            T acc = *out;
            // Fully unrolled when the sizes are compile-time; the generic kernel keeps its
            // loops rolled (partial unrolling of run-time loops made it spill).
#pragma unroll kUnroll
            for (int e = 0; e < kd; ++e) {
#pragma unroll kUnroll
              for (int a = 0; a < kh; ++a) {
#pragma unroll kUnroll
                for (int b = 0; b < kw; ++b) {
                  if (e == kd - 1 && a == kh - 1 && b == kw - 1) continue;
                  const T* src = win + ((e * hp + a) * wp + b) * cg;
                  const T* wt = fw + ((e * kh + a) * kw + b) * cc + c;
#pragma unroll kUnroll
                  for (int cp = 0; cp < cg; ++cp) acc -= wt[cp * cg] * src[cp];
                }
              }
            }
            *out = acc;
          }
          __syncthreads();
        }
      }
      // Written in global order, so the writes coalesce along w.
      for (int e = threadIdx.x; e < cg * vol; e += blockDim.x)
        xn[e] = kConvolve ? convolved(e) : buf[at(e)];
      __syncthreads();  // the next sample restages buf
    } else if constexpr (kConvolve) {
      // Straight from global memory: each output element reads its window of the input.
      auto at = [&](int d, int h, int w) {
        return (int64_t(fd ? D - 1 - d : d) * H + (fr ? H - 1 - h : h)) * W +
               (fc ? W - 1 - w : w);
      };
      for (int64_t e = threadIdx.x; e < cg * volume; e += blockDim.x) {
        const int c = int(e / volume);
        const int64_t v = e - int64_t(c) * volume;
        const int gd = int(v / plane), gh = int((v / W) % H), gw = int(v % W);
        const int d = fd ? D - 1 - gd : gd, h = fr ? H - 1 - gh : gh, w = fc ? W - 1 - gw : gw;
        T acc = lin[c * cg + c] * yn[e];
        for (int cp = 0; cp < c; ++cp) acc += lin[cp * cg + c] * yn[int64_t(cp) * volume + v];
        for (int t = 0; t < taps - 1; ++t) {
          const int dd = d + t / (kh * kw) - (kd - 1), hh = h + (t / kw) % kh - (kh - 1),
                    ww = w + t % kw - (kw - 1);
          const bool inside = dd >= 0 && hh >= 0 && ww >= 0;
          const int64_t off = inside ? at(dd, hh, ww) : 0;
          const T* wt = fw + int64_t(t) * cc + c;
          for (int cp = 0; cp < cg; ++cp)
            acc -= wt[cp * cg] * (inside ? yn[int64_t(cp) * volume + off] : T(0));
        }
        xn[e] = acc;
      }
    } else {
      __syncthreads();  // fw complete
      for (int64_t e = threadIdx.x; e < volume; e += blockDim.x)
        apply_center<T, CG, Tr>(yn + e, xn + e, volume, lin, cg);
      __syncthreads();
      // A block's global writes are visible to the block after __syncthreads; x is read
      // through plain (not read-only-cache) loads because it is not const here.
      auto at = [&](int d, int h, int w) {
        return (int64_t(fd ? D - 1 - d : d) * H + (fr ? H - 1 - h : h)) * W +
               (fc ? W - 1 - w : w);
      };
      for (int s = 0; s <= steps; ++s) {
        const Hyperplane hyp(s, D, H, W);
        for (int i = threadIdx.x; i < hyp.items(cg); i += blockDim.x) {
          const int c = i % cg, q = (i / cg) % hyp.span;
          const int d = hyp.d0 + i / (cg * hyp.span);
          const int h = Hyperplane::row_lo(d, s, W) + q, w = s - d - h;
          if (h > Hyperplane::row_hi(d, s, H)) continue;
          const T* voxel = xn + at(d, h, w);
          T* out = xn + c * volume + (voxel - xn);
          T acc = *out;
          // Tap (e, a, b) reads `back` steps towards the corner on each axis; a step is ±1
          // row, plane or column in memory, by the flips (fewer live registers than
          // recomputing at() per tap, which made the generic double kernel spill).
          const T* wt = fw + c;
          for (int e = 0; e < kd; ++e) {
            for (int a = 0; a < kh; ++a) {
              for (int b = 0; b < kw; ++b, wt += cc) {
                if (e == kd - 1 && a == kh - 1 && b == kw - 1) continue;
                const int back_d = kd - 1 - e, back_h = kh - 1 - a, back_w = kw - 1 - b;
                // Out-of-volume reads are zero but still multiplied, as the CPU's zero
                // border is: an inf weight there gives NaN on both backends.
                const bool inside = d >= back_d && h >= back_h && w >= back_w;
                const T* src = voxel + (inside ? (fd ? back_d : -back_d) * plane +
                                                 (fr ? back_h : -back_h) * int64_t(W) +
                                                 (fc ? back_w : -back_w)
                                               : 0);
                for (int cp = 0; cp < cg; ++cp)
                  acc -= wt[cp * cg] * (inside ? src[cp * volume] : T(0));
              }
            }
          }
          *out = acc;
        }
        __syncthreads();
      }
    }
  }
}

// Kernel arguments for a solve; ws is set by the launcher on the workspace path.
template <typename T>
Params<T> params_for(const SolveArgs& args) {
  const int G = num_groups(args.pattern);
  return {static_cast<const T*>(args.y), static_cast<const T*>(args.weight),
          static_cast<T*>(args.x), nullptr, args.batch, int(args.channels / G), args.kd,
          args.kh, args.kw, int(args.depth), int(args.height), int(args.width), args.pattern};
}

template <typename T, int CG, int KD, int KH, int KW, int Dir, bool XShared>
std::string kernel_name() {
  auto dim = [](int v) { return v > 0 ? std::to_string(v) : std::string("rt"); };
  // 2-D kernels (KD = 1) keep their 2-D names.
  const std::string depth = KD == 1 ? std::string() : dim(KD) + "x";
  return std::string("solve_kernel<") + (sizeof(T) == 4 ? "float" : "double") + ", cg=" +
         dim(CG) + ", k=" + depth + dim(KH) + "x" + dim(KW) +
         (Dir == kConv ? ", conv" : Dir == kTransposed ? ", transposed" : ", solve") +
         (XShared ? ", shared x>" : ", global x>");
}

}  // namespace detail
}  // namespace inverseflow::cuda
