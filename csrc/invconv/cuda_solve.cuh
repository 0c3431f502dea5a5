// CUDA inverse-convolution solve (DESIGN.md §3 "CUDA"): the host-side launcher. The
// kernels are in cuda_solve_kernels.cuh, and the launch decisions (block size, shared
// memory, grid, path) in cuda_launch_plan.h, which the CPU emulation (DESIGN.md §8) shares.
// solve<T, 0, 0, 0, 0, Tr> runs the generic kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include "invconv/common.h"
#include "invconv/cuda_launch_plan.h"
#include "invconv/cuda_solve_kernels.cuh"

namespace inverseflow::cuda {
namespace detail {

inline void throw_if(cudaError_t err, const char* what, const std::string& kernel) {
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();  // clear it, so it does not resurface at an unrelated call
  throw std::runtime_error("inverseflow CUDA " + kernel + ": " + what + " failed: " +
                           cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// Makes the device that owns y current (and restores the caller's afterwards): the stream
// and the shared-memory limit must belong to the device the data lives on.
class DeviceGuard {
 public:
  explicit DeviceGuard(const void* ptr) {
    throw_if(cudaGetDevice(&prev_), "cudaGetDevice", "solve");
    device_ = prev_;
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
      (void)cudaGetLastError();
    } else if ((attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) &&
               attr.device != prev_) {
      throw_if(cudaSetDevice(attr.device), "cudaSetDevice", "solve");
      device_ = attr.device;
    }
  }
  ~DeviceGuard() {
    if (device_ != prev_) (void)cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  int device() const { return device_; }

 private:
  int prev_ = 0, device_ = 0;
};

// Queried once per device: attribute calls are cheap but not free, and a solve may be a
// few microseconds.
inline DeviceLimits device_limits(int device) {
  static std::mutex mu;
  static std::map<int, DeviceLimits> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  DeviceLimits lim;
  throw_if(cudaDeviceGetAttribute(&lim.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                  device), "cudaDeviceGetAttribute", "solve");
  throw_if(cudaDeviceGetAttribute(&lim.sm_count, cudaDevAttrMultiProcessorCount, device),
           "cudaDeviceGetAttribute", "solve");
  throw_if(cudaDeviceGetAttribute(&lim.max_grid_x, cudaDevAttrMaxGridDimX, device),
           "cudaDeviceGetAttribute", "solve");
  return cache.emplace(device, lim).first->second;
}

template <typename T, int CG, int KD, int KH, int KW, int Dir, bool XShared>
void launch(const Params<T>& p, const LaunchPlan& plan, cudaStream_t stream, T* ws_to_free) {
  const int64_t smem = plan.smem_bytes;
  const std::string name = kernel_name<T, CG, KD, KH, KW, Dir, XShared>();
  auto kernel = &solve_kernel<T, CG, KD, KH, KW, Dir, XShared>;
  cudaError_t err = cudaSuccess;
  const char* what = "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)";
  if (smem > 48 * 1024)  // beyond the default, every kernel must opt in explicitly
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err == cudaSuccess) {
    kernel<<<dim3(unsigned(plan.blocks)), dim3(plan.threads), size_t(smem), stream>>>(p);
    err = cudaGetLastError();
    what = "launch";
  }
  if (ws_to_free != nullptr) {  // stream-ordered: freed once the kernel is done with it
    const cudaError_t free_err = cudaFreeAsync(ws_to_free, stream);
    if (err == cudaSuccess) err = free_err, what = "cudaFreeAsync";
  }
  throw_if(err, what, name);
}

}  // namespace detail

template <typename T, int CG, int KD, int KH, int KW, int Dir>
void solve(const SolveArgs& args) {
  using namespace detail;
  if (is_empty(args)) return;
  check_solve_shape(args, CG, KD, KH, KW);
  DeviceGuard guard(args.y);
  const LaunchPlan plan = plan_launch(device_limits(guard.device()), args, sizeof(T));
  const Params<T> base = params_for<T>(args);
  const auto stream = static_cast<cudaStream_t>(args.stream);

  if (plan.path == Path::kSharedX) {
    launch<T, CG, KD, KH, KW, Dir, true>(base, plan, stream, nullptr);
  } else if constexpr (CG > 0 || KD > 0 || KH > 0 || KW > 0) {
    // Too big to stage: the generic kernel's fallback is as fast, and compiled once.
    solve<T, 0, 0, 0, 0, Dir>(args);
  } else if (plan.path == Path::kGlobalX) {
    launch<T, 0, 0, 0, 0, Dir, false>(base, plan, stream, nullptr);
  } else {
    Params<T> p = base;
    void* ws = nullptr;
    throw_if(cudaMallocAsync(&ws, size_t(plan.workspace_bytes), stream),
             "cudaMallocAsync of the fold workspace",
             kernel_name<T, 0, 0, 0, 0, Dir, false>());
    p.ws = static_cast<T*>(ws);
    launch<T, 0, 0, 0, 0, Dir, false>(p, plan, stream, p.ws);
  }
}

// The generic kernels are instantiated once, in bind_cuda.cu; the generated files, whose
// too-large shapes delegate to them, must not compile them again.
IFLOW_GENERIC_SOLVES(extern)

}  // namespace inverseflow::cuda
