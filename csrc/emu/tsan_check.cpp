// ThreadSanitizer check of the CUDA kernels (DESIGN.md §8): built by tests/cuda_emulation.py
// with -fsanitize=thread together with the generated CUDA files it serves, run by
// tests/test_cuda_emulated.py. Small cases of every path (shared x, global x, global fold
// workspace), every direction (solve, transposed, conv) and both dtypes, specialized and
// generic kernels, with the emulated threads running concurrently between barriers: a
// missing __syncthreads() is then a data race that TSan reports (exit code 66). Results
// are also compared with the CPU kernel.
// Exit status: 0 clean, 1 a wrong result, 2 a failed launch, 66 a race (TSan's).
// `tsan_check --self-test` instead runs a kernel with a deliberately missing barrier, so
// the test can see that this build does report races.
#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "invconv/cpu_solve.h"
#include "invconv/cuda_solve.cuh"  // the emulated launcher (-I csrc/emu first)
#include "invconv/registry.h"

namespace inverseflow::cuda {
IFLOW_GENERIC_SOLVES()
}  // namespace inverseflow::cuda

namespace {

using namespace inverseflow;

struct Case {
  int batch, channels, depth, height, width, kd, kh, kw, pattern;
};

// Specialized on the shared path when the build has their layers (k3x3_c4 tl / quad);
// then 3-D (a far corner and oct, whose hyperplanes cover several depths) and 1-D (pair).
const Case kCases[] = {
    {3, 4, 1, 3, 4, 1, 3, 3, kTL},
    {3, 4, 1, 3, 4, 1, 3, 3, kQuad},
    {3, 4, 1, 3, 4, 1, 2, 3, kBR},
    {2, 4, 1, 3, 3, 1, 2, 2, kTR},
    {2, 3, 3, 2, 4, 2, 2, 3, kFBL},
    {2, 8, 3, 3, 2, 2, 3, 2, kOct},
    {3, 4, 1, 1, 7, 1, 1, 3, kPair},
};

const char* const kPathNames[] = {"shared_x", "global_x", "global_workspace"};

// Device limits that force `path` for this case (the boundaries of plan_launch).
cuda::DeviceLimits limits_for(const Case& c, int path, int elem) {
  const int G = num_groups(c.pattern), cg = c.channels / G;
  const int weight_bytes = (c.kd * c.kh * c.kw + 1) * cg * cg * elem;
  const int buf_bytes =
      (c.depth + c.kd - 1) * (c.height + c.kh - 1) * (c.width + c.kw - 1) * cg * elem;
  const int grid = 2 * G;  // two samples per grid, so blocks stride over the batch
  if (path == 0) return {weight_bytes + buf_bytes, 132, grid};
  if (path == 1) return {weight_bytes + buf_bytes - 1, 132, grid};
  return {weight_bytes - 1, 1, grid};
}

SolveFn lookup(const Case& c, int dtype, int direction, SolveFn generic, std::string* name) {
  if (const SpecEntry* e = find_specialization(c.kd, c.kh, c.kw, c.channels, c.pattern, dtype,
                                               direction)) {
    *name = e->name;
    return e->fn;
  }
  *name = "generic";
  return generic;
}

template <typename T, int Dir>
bool run(const Case& c, int path, std::mt19937_64& rng) {
  const int G = num_groups(c.pattern);
  const size_t n = size_t(c.batch) * c.channels * c.depth * c.height * c.width;
  const size_t nw = size_t(c.channels) * (c.channels / G) * c.kd * c.kh * c.kw;
  std::normal_distribution<double> normal;
  const double scale = 0.1 / (c.kh > c.kw ? c.kh : c.kw);
  std::vector<T> y(n), w(nw), x_cpu(n), x_emu(n, std::numeric_limits<T>::quiet_NaN());
  for (T& v : y) v = T(normal(rng));
  for (T& v : w) v = T(normal(rng) * scale);

  SolveArgs args{y.data(), w.data(), x_cpu.data(), c.batch, c.channels, c.depth, c.height,
                 c.width, c.kd, c.kh, c.kw, c.pattern, 1, nullptr};
  cpu::solve<T, 0, 0, 0, 0, Dir>(args);

  auto& dev = emu::fake_device();
  dev.limits = limits_for(c, path, int(sizeof(T)));
  dev.schedule = emu::Schedule::kConcurrent;
  dev.launches.clear();
  args.x = x_emu.data();
  std::string name;
  lookup(c, sizeof(T) == 4 ? kFloat32 : kFloat64, Dir, &cuda::solve<T, 0, 0, 0, 0, Dir>,
         &name)(args);

  const bool right_path = !dev.launches.empty() && int(dev.launches.back().path) == path;
  double diff = 0, peak = 0;
  size_t exact = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = std::fabs(double(x_emu[i]) - double(x_cpu[i]));
    diff = std::isnan(d) || d > diff ? d : diff;
    peak = std::fmax(peak, std::fabs(double(x_cpu[i])));
    exact += x_emu[i] == x_cpu[i];
  }
  const double rel = diff / (peak > 0 ? peak : 1), tol = sizeof(T) == 4 ? 1e-5 : 1e-12;
  const bool ok = right_path && rel <= tol;  // NaN fails both comparisons
  std::printf("%s B%d C%d D%d H%d W%d k%dx%dx%d pattern %d %s %s %s: %s, rel err %.3g, "
              "%zu/%zu bit-equal%s\n",
              ok ? "ok  " : "FAIL", c.batch, c.channels, c.depth, c.height, c.width, c.kd,
              c.kh, c.kw,
              c.pattern, sizeof(T) == 4 ? "f32" : "f64",
              Dir == kConv ? "conv" : Dir == kTransposed ? "transposed" : "solve",
              kPathNames[path], name.c_str(), rel, exact, n,
              right_path ? "" : " (launched on another path)");
  return ok;
}

// Thread 1 reads what thread 0 wrote to shared memory, with no __syncthreads() between.
void racy_kernel(float* out) {
  if (threadIdx.x == 0) inverseflow::cuda::detail::smem_raw[0] = 1;
  if (threadIdx.x == 1) *out = inverseflow::cuda::detail::smem_raw[0];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--self-test") {
    float out = 0;
    emu::run_grid(dim3(1), dim3(2), 4, {cuda::detail::smem_raw, cuda::detail::kSharedCapacity},
                  emu::Schedule::kConcurrent, [&out] { racy_kernel(&out); });
    std::printf("self-test kernel ran\n");
    return 0;
  }
  std::mt19937_64 rng(20261129);
  int failures = 0, cases = 0;
  try {
    for (const Case& c : kCases) {
      for (int path = 0; path < 3; ++path) {
        failures += !run<float, kSolve>(c, path, rng);
        failures += !run<float, kTransposed>(c, path, rng);
        failures += !run<float, kConv>(c, path, rng);
        failures += !run<double, kSolve>(c, path, rng);
        failures += !run<double, kTransposed>(c, path, rng);
        failures += !run<double, kConv>(c, path, rng);
        cases += 6;
      }
    }
  } catch (const std::exception& e) {
    std::printf("launch failed: %s\n", e.what());
    return 2;
  }
  std::printf("%d of %d cases wrong\n", failures, cases);
  return failures == 0 ? 0 : 1;
}
