// The CPU emulation's stand-in for csrc/invconv/cuda_solve.cuh (the CUDA launcher), DESIGN.md
// §8. The emulation compiles the generated CUDA files (generated/cuda/*.cu), the generated
// registry and csrc/emu/bind_cuda_emu.cpp as host C++ with `-I csrc/emu` before `-I csrc`,
// so their #include "invconv/cuda_solve.cuh" lands here: the generator's instantiations
// stay exactly as emitted, while the launch goes to the shim (cuda_host_shim.h).
//
// Same entry point as the real launcher, and the same decisions: plan_launch
// (invconv/cuda_launch_plan.h), here fed by a fake device whose limits the tests set, so
// that every path runs. The kernels are the real ones (invconv/cuda_solve_kernels.cuh).
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_host_shim.h"
#include "invconv/common.h"
#include "invconv/cuda_launch_plan.h"

namespace inverseflow::cuda::detail {
// What the kernels' `extern __shared__ unsigned char smem_raw[]` refers to on the host: one
// buffer that the emulated blocks use in turn. 256 KiB is above every GPU's opt-in limit.
inline constexpr size_t kSharedCapacity = size_t(256) << 10;
alignas(64) inline unsigned char smem_raw[kSharedCapacity];
}  // namespace inverseflow::cuda::detail

#include "invconv/cuda_solve_kernels.cuh"

namespace inverseflow::emu {

// One emulated launch, as the tests read it back.
struct LaunchRecord {
  std::string kernel;
  cuda::Path path;
  int64_t blocks;
  int threads;
  int64_t smem_bytes, workspace_bytes;
};

struct FakeDevice {
  // An H100/H200 (sm_90) by default: 227 KiB opt-in shared memory, 132 SMs.
  cuda::DeviceLimits limits{227 * 1024, 132, INT32_MAX};
  Schedule schedule = Schedule::kSerialReverse;
  std::vector<LaunchRecord> launches;
  std::recursive_mutex mu;  // one emulated solve at a time: the shared buffer is global
};

inline FakeDevice& fake_device() {
  static FakeDevice device;
  return device;
}

}  // namespace inverseflow::emu

namespace inverseflow::cuda {
namespace detail {

// The checks the CUDA runtime would make at launch, then the grid on the shim.
template <typename T, int CG, int KD, int KH, int KW, int Dir, bool XShared>
void launch(const Params<T>& p, const LaunchPlan& plan) {
  emu::FakeDevice& dev = emu::fake_device();
  const std::string name = kernel_name<T, CG, KD, KH, KW, Dir, XShared>();
  auto fail = [&](const std::string& why) {
    throw std::runtime_error("inverseflow emulated CUDA " + name + ": launch failed: " + why);
  };
  if (plan.threads < 1 || plan.threads > kMaxThreads)
    fail(std::to_string(plan.threads) + " threads exceed __launch_bounds__(" +
         std::to_string(kMaxThreads) + ")");
  if (plan.smem_bytes > dev.limits.smem_optin)
    fail(std::to_string(plan.smem_bytes) + " bytes of shared memory exceed the device's " +
         std::to_string(dev.limits.smem_optin));
  if (plan.blocks < 1 || plan.blocks > dev.limits.max_grid_x)
    fail("grid of " + std::to_string(plan.blocks) + " blocks (device maximum " +
         std::to_string(dev.limits.max_grid_x) + ")");
  dev.launches.push_back({name, plan.path, plan.blocks, plan.threads, plan.smem_bytes,
                          plan.workspace_bytes});
  emu::run_grid(dim3(unsigned(plan.blocks)), dim3(unsigned(plan.threads)),
                size_t(plan.smem_bytes), {smem_raw, kSharedCapacity}, dev.schedule,
                [&p] { solve_kernel<T, CG, KD, KH, KW, Dir, XShared>(p); });
}

}  // namespace detail

// Mirrors solve() in csrc/invconv/cuda_solve.cuh branch for branch.
template <typename T, int CG, int KD, int KH, int KW, int Dir>
void solve(const SolveArgs& args) {
  using namespace detail;
  // Recursive: a specialization that delegates to the generic solve re-enters.
  std::lock_guard<std::recursive_mutex> lock(emu::fake_device().mu);
  if (is_empty(args)) return;
  check_solve_shape(args, CG, KD, KH, KW);
  const LaunchPlan plan = plan_launch(emu::fake_device().limits, args, sizeof(T));
  const Params<T> base = params_for<T>(args);

  if (plan.path == Path::kSharedX) {
    launch<T, CG, KD, KH, KW, Dir, true>(base, plan);
  } else if constexpr (CG > 0 || KD > 0 || KH > 0 || KW > 0) {
    solve<T, 0, 0, 0, 0, Dir>(args);
  } else if (plan.path == Path::kGlobalX) {
    launch<T, 0, 0, 0, 0, Dir, false>(base, plan);
  } else {
    // cudaMallocAsync does not clear: poison it like shared memory.
    std::unique_ptr<unsigned char[]> ws(new unsigned char[size_t(plan.workspace_bytes)]);
    std::memset(ws.get(), emu::kPoisonByte, size_t(plan.workspace_bytes));
    Params<T> p = base;
    p.ws = reinterpret_cast<T*>(ws.get());
    launch<T, 0, 0, 0, 0, Dir, false>(p, plan);
  }
}

// As in the real launcher: the generic kernels are instantiated once (bind_cuda_emu.cpp).
IFLOW_GENERIC_SOLVES(extern)

}  // namespace inverseflow::cuda
