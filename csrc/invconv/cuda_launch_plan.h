// Launch-side decisions of the CUDA solve (DESIGN.md §3, §8): block size, shared-memory
// budget, grid size and which of the three paths runs, as a pure function of the device's
// limits and the problem. Plain C++ without the CUDA runtime, so that the real launcher
// (cuda_solve.cuh) and the CPU emulation of the kernel (csrc/emu/, tests/test_cuda_emulated.py)
// take the very same decisions, and the emulation can force every path with a fake device.
#pragma once

#include <cstdint>
#include <stdexcept>

#include "invconv/common.h"

namespace inverseflow::cuda {

// Upper bound of the block size (see block_threads); the kernel's __launch_bounds__ must
// agree so that ptxas keeps registers at or under 65536 / 512 = 128 and a 512-thread launch
// never fails.
constexpr int kMaxThreads = 512;

// What the launcher needs to know about the device (cudaDeviceGetAttribute on a GPU,
// settable numbers in the emulation).
struct DeviceLimits {
  int smem_optin = 0;  // cudaDevAttrMaxSharedMemoryPerBlockOptin, bytes
  int sm_count = 0;    // cudaDevAttrMultiProcessorCount
  int max_grid_x = 0;  // cudaDevAttrMaxGridDimX
};

enum class Path : int {
  kSharedX = 0,          // padded x and folded weights in shared memory (specialized or generic)
  kGlobalX = 1,          // x walked in global memory, folded weights in shared (generic only)
  kGlobalWorkspace = 2,  // both in global memory: one fold slot per block (generic only)
};

struct LaunchPlan {
  Path path;
  int64_t blocks;           // gridDim.x: a multiple of the group count
  int threads;              // blockDim.x
  int64_t smem_bytes;       // dynamic shared memory per block
  int64_t workspace_bytes;  // global fold workspace (kGlobalWorkspace only, else 0)
};

// One thread per (voxel, channel) of the longest hyperplane (as the kernel covers it: depth
// × min(H, W) rows), so that a step is a single round of work when it fits: the walk is
// latency-bound by its D+H+W-2 barriers, and extra
// threads would only idle at them. Capped at kMaxThreads so that the unrolled double
// kernels keep up to 128 registers; longer diagonals take a few rounds per step. At least
// two warps, because staging and write-back cover the whole image, not one diagonal.
// Untuned: revisit with the benchmarks.
inline int block_threads(int64_t depth, int64_t height, int64_t width, int64_t cg) {
  const int64_t items = depth * (height < width ? height : width) * cg;
  const int64_t warps = (items + 31) / 32;
  return int(warps < 2 ? 64 : warps * 32 > kMaxThreads ? kMaxThreads : warps * 32);
}

inline bool is_empty(const SolveArgs& args) {
  return args.batch == 0 || args.channels == 0 || args.depth == 0 || args.height == 0 ||
         args.width == 0;
}

// Template sizes of 0 mean "given at run time" (the generic kernel).
inline void check_solve_shape(const SolveArgs& args, int CG, int KD, int KH, int KW) {
  const int64_t cg = args.channels / num_groups(args.pattern);
  if ((CG > 0 && cg != CG) || (KD > 0 && args.kd != KD) || (KH > 0 && args.kh != KH) ||
      (KW > 0 && args.kw != KW))
    throw std::invalid_argument("inverseflow CUDA solve: specialization called with "
                                "another shape (registry bug)");
  // Voxel coordinates, tap indices and a hyperplane's work items are int in the kernel.
  const int64_t min_hw = args.height < args.width ? args.height : args.width;
  if (args.depth + args.height + args.width + args.kd + args.kh + args.kw > INT32_MAX ||
      cg * cg * args.kd * args.kh * args.kw > INT32_MAX ||
      args.depth * min_hw * cg > INT32_MAX)
    throw std::invalid_argument("inverseflow CUDA solve: image or kernel too large");
}

// The path and launch configuration for one solve. Which kernel runs a path is the
// launcher's business: only kSharedX has specialized kernels.
inline LaunchPlan plan_launch(const DeviceLimits& lim, const SolveArgs& args,
                              int64_t elem_bytes) {
  const int G = num_groups(args.pattern);
  const int64_t cg = args.channels / G, kd = args.kd, kh = args.kh, kw = args.kw;
  const int64_t D = args.depth, H = args.height, W = args.width;
  const int threads = block_threads(D, H, W, cg);
  const int64_t weight_bytes = (kd * kh * kw + 1) * cg * cg * elem_bytes;
  const int64_t buf_bytes = (D + kd - 1) * (H + kh - 1) * (W + kw - 1) * cg * elem_bytes;
  // Blocks stride over samples, so capping the grid only bounds gridDim.x.
  const int64_t grid_samples = lim.max_grid_x / G > 0 ? lim.max_grid_x / G : 1;
  const int64_t max_samples = grid_samples < args.batch ? grid_samples : args.batch;

  if (weight_bytes + buf_bytes <= lim.smem_optin)
    return {Path::kSharedX, max_samples * G, threads, weight_bytes + buf_bytes, 0};
  if (weight_bytes <= lim.smem_optin)
    return {Path::kGlobalX, max_samples * G, threads, weight_bytes, 0};
  // Even the folded weights overflow shared memory (e.g. cg=64 in double): each block
  // folds into its own global slot. A few blocks per SM are enough for a path this slow;
  // the cap also bounds the workspace (at most 256 MiB unless one slot is more).
  int64_t samples = 2 * int64_t(lim.sm_count) / G;
  const int64_t by_memory = (int64_t(256) << 20) / (weight_bytes * G);
  samples = samples < by_memory ? samples : by_memory;
  samples = samples < 1 ? 1 : samples > max_samples ? max_samples : samples;
  return {Path::kGlobalWorkspace, samples * G, threads, 0, samples * G * weight_bytes};
}

}  // namespace inverseflow::cuda
