// CUDA inverse-convolution solve kernels (DESIGN.md §3 "CUDA"): the device code only.
//
// One launch; each block owns one (sample, channel group) and keeps that group's folded
// weights in shared memory. Fast path: the padded x, [hp][wp][c] in top-left form, lives
// in shared memory too; the block stages y there, applies Linv per pixel, then walks the
// H+W-1 anti-diagonals with one barrier each (threads cover pixel × output channel) and
// writes x back. Fallback, when that does not fit: the generic kernel walks in the output
// x in global memory (bounds checks instead of a border), with the folded weights in
// shared memory or, if even they do not fit, in a per-block global workspace. Template
// sizes of 0 mean "given at run time"; CG = KH = KW = 0 is the generic kernel.
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
  int cg, kh, kw, height, width, pattern;
};

// Folds this block's group (fold_group_weights, same triangles and summation order) into
// fw, stored [t][c'][c] rather than [t][c][c'] so that the threads of one pixel, which
// differ in c, read consecutive banks. linv is cg×cg scratch, [r][col].
template <typename T, bool Tr>
__device__ void fold(const T* __restrict__ wg, int cg, int kh, int kw, int corner, T* fw,
                     T* linv) {
  const int ci = tap_row(corner, kh - 1, kh), cj = tap_col(corner, kw - 1, kw);
  const int taps = kh * kw, cc = cg * cg;
  auto w_at = [&](int c, int cp, int i, int j) {
    return wg[(int64_t(c) * cg + cp) * taps + i * kw + j];
  };
  // Columns of Linv are independent forward substitutions: one thread each, no barriers.
#pragma unroll 1
  for (int col = threadIdx.x; col < cg; col += blockDim.x) {
#pragma unroll 1
    for (int r = 0; r < cg; ++r) {
      T v = r == col ? T(1) : T(0);
#pragma unroll 1
      for (int m = col; m < r; ++m) v -= w_at(r, m, ci, cj) * linv[m * cg + col];
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
      const int i = tap_row(corner, t / kw, kh), j = tap_col(corner, t % kw, kw);
      // Structural zeros of Linv are skipped so that 0 · inf never makes a NaN.
      if (!Tr) {
#pragma unroll 1
        for (int m = 0; m <= c; ++m) acc += linv[c * cg + m] * w_at(m, cp, i, j);
      } else {
#pragma unroll 1
        for (int m = c; m < cg; ++m) acc += linv[m * cg + c] * w_at(cp, m, i, j);
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

template <typename T, int CG, int KH, int KW, bool Tr, bool XShared>
__global__ void __launch_bounds__(kMaxThreads) solve_kernel(const Params<T> p) {
  const int cg = CG > 0 ? CG : p.cg;
  const int kh = KH > 0 ? KH : p.kh;
  const int kw = KW > 0 ? KW : p.kw;
  const int H = p.height, W = p.width, taps = kh * kw, cc = cg * cg;
  const int64_t plane = int64_t(H) * W;
  const int G = num_groups(p.pattern), g = int(blockIdx.x) % G;
  const int corner = group_corner(p.pattern, g);
  const bool fr = flips_rows(corner, Tr), fc = flips_cols(corner, Tr);

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  // XShared is a constant, so the fast path's weight loads are plain ld.shared.
  T* fw = (XShared || p.ws == nullptr) ? smem : p.ws + int64_t(blockIdx.x) * (taps + 1) * cc;
  fold<T, Tr>(p.weight + int64_t(g) * cc * taps, cg, kh, kw, corner, fw, fw + taps * cc);
  const T* lin = fw + (taps - 1) * cc;

  // gridDim.x is a multiple of G, so a block keeps its group (and its fold) while it
  // strides over samples; only the global-workspace fallback has fewer blocks than items.
  for (int64_t n = blockIdx.x / G; n < p.batch; n += gridDim.x / G) {
    const int64_t base = (n * G + g) * cg * plane;
    const T* yn = p.y + base;
    T* xn = p.x + base;
    if constexpr (XShared) {
      T* buf = smem + (taps + 1) * cc;
      const int wp = W + kw - 1;
      // Zero the border: the top kh-1 padded rows, then the left kw-1 columns of each row.
      const int top = (kh - 1) * wp * cg, side = (kw - 1) * cg;
      for (int e = threadIdx.x; e < top + H * side; e += blockDim.x) {
        const int r = (e - top) / (side > 0 ? side : 1);
        buf[e < top ? e : top + r * wp * cg + (e - top - r * side)] = T(0);
      }
      // Stage y in global order, so the reads coalesce along w.
      for (int e = threadIdx.x; e < cg * H * W; e += blockDim.x) {
        const int c = e / (H * W), gh = (e / W) % H, gw = e % W;
        const int h = fr ? H - 1 - gh : gh, w = fc ? W - 1 - gw : gw;
        buf[((h + kh - 1) * wp + w + kw - 1) * cg + c] = yn[e];
      }
      __syncthreads();
      // y' = Linv·y for every pixel at once, off the dependent chain of the walk.
      for (int e = threadIdx.x; e < H * W; e += blockDim.x) {
        T* px = buf + ((e / W + kh - 1) * wp + e % W + kw - 1) * cg;
        apply_center<T, CG, Tr>(px, px, 1, lin, cg);
      }
      __syncthreads();
      for (int d = 0; d < H + W - 1; ++d) {
        const int h0 = d - (W - 1) > 0 ? d - (W - 1) : 0, h1 = d < H - 1 ? d : H - 1;
        for (int i = threadIdx.x; i < (h1 - h0 + 1) * cg; i += blockDim.x) {
          const int q = i / cg, c = i - q * cg, h = h0 + q, w = d - h;
          // Padded (h + a, w + b) is tap (a, b) of the window of pixel (h, w).
          const T* win = buf + (h * wp + w) * cg;
          T* out = buf + ((h + kh - 1) * wp + w + kw - 1) * cg + c;
          T acc = *out;
#pragma unroll
          for (int a = 0; a < kh; ++a) {
#pragma unroll
            for (int b = 0; b < kw; ++b) {
              if (a == kh - 1 && b == kw - 1) continue;
              const T* src = win + (a * wp + b) * cg;
              const T* wt = fw + (a * kw + b) * cc + c;
#pragma unroll
              for (int cp = 0; cp < cg; ++cp) acc -= wt[cp * cg] * src[cp];
            }
          }
          *out = acc;
        }
        __syncthreads();
      }
      for (int e = threadIdx.x; e < cg * H * W; e += blockDim.x) {
        const int c = e / (H * W), gh = (e / W) % H, gw = e % W;
        const int h = fr ? H - 1 - gh : gh, w = fc ? W - 1 - gw : gw;
        xn[e] = buf[((h + kh - 1) * wp + w + kw - 1) * cg + c];
      }
      __syncthreads();  // the next sample restages buf
    } else {
      __syncthreads();  // fw complete
      for (int64_t e = threadIdx.x; e < plane; e += blockDim.x)
        apply_center<T, CG, Tr>(yn + e, xn + e, plane, lin, cg);
      __syncthreads();
      // A block's global writes are visible to the block after __syncthreads; x is read
      // through plain (not read-only-cache) loads because it is not const here.
      auto at = [&](int h, int w) {
        return int64_t(fr ? H - 1 - h : h) * W + (fc ? W - 1 - w : w);
      };
      for (int d = 0; d < H + W - 1; ++d) {
        const int h0 = d - (W - 1) > 0 ? d - (W - 1) : 0, h1 = d < H - 1 ? d : H - 1;
        for (int64_t i = threadIdx.x; i < int64_t(h1 - h0 + 1) * cg; i += blockDim.x) {
          const int q = int(i / cg), c = int(i - int64_t(q) * cg), h = h0 + q, w = d - h;
          T* out = xn + c * plane + at(h, w);
          T acc = *out;
          for (int a = 0; a < kh; ++a) {
            for (int b = 0; b < kw; ++b) {
              if (a == kh - 1 && b == kw - 1) continue;
              const int hh = h + a - (kh - 1), ww = w + b - (kw - 1);
              // Out-of-image reads are zero but still multiplied, as the CPU's zero
              // border is: an inf weight there gives NaN on both backends.
              const bool inside = hh >= 0 && ww >= 0;
              const int64_t off = inside ? at(hh, ww) : 0;
              const T* wt = fw + (a * kw + b) * cc + c;
              for (int cp = 0; cp < cg; ++cp)
                acc -= wt[cp * cg] * (inside ? xn[cp * plane + off] : T(0));
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
          static_cast<T*>(args.x), nullptr, args.batch, int(args.channels / G), args.kh,
          args.kw, int(args.height), int(args.width), args.pattern};
}

template <typename T, int CG, int KH, int KW, bool Tr, bool XShared>
std::string kernel_name() {
  auto dim = [](int v) { return v > 0 ? std::to_string(v) : std::string("rt"); };
  return std::string("solve_kernel<") + (sizeof(T) == 4 ? "float" : "double") + ", cg=" +
         dim(CG) + ", k=" + dim(KH) + "x" + dim(KW) + (Tr ? ", transposed" : ", solve") +
         (XShared ? ", shared x>" : ", global x>");
}

}  // namespace detail
}  // namespace inverseflow::cuda
