// Host C++ stand-ins for the CUDA features that csrc/invconv/cuda_solve_kernels.cuh uses, so
// that the unchanged kernel bodies compile with the project's C++ compiler and run on the
// CPU (DESIGN.md §8). This checks the kernels' logic only: timing, occupancy, bank
// conflicts and the GPU's memory ordering are not modelled.
//
// - Every CUDA thread of a block is one std::thread; blocks run one after another.
// - threadIdx / blockIdx / blockDim / gridDim are thread-locals set for each emulated thread.
// - __syncthreads() is a real barrier over the block's live threads (a thread that returns
//   leaves it, as on the GPU). Between barriers the threads either run freely
//   (Schedule::kConcurrent: what ThreadSanitizer needs to see a missing barrier as a race)
//   or one at a time in ascending / descending threadIdx order (kSerialForward /
//   kSerialReverse), so that a missing barrier gives wrong numbers on every run rather than
//   by scheduling luck.
// - Dynamic `extern __shared__` memory: the kernel's extern array is one host buffer that the
//   blocks use in turn (the emulated launcher defines it, sized kSharedCapacity). Before
//   each block it is filled with 0xFF bytes (a NaN in float and double), so a read of
//   shared memory the block never wrote shows up in the results; a write past the launch's
//   dynamic size is reported as an error.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// ---- CUDA language keywords -------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __shared__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is a GNU extension that g++ and clang++ already understand.

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

namespace inverseflow::emu {

enum class Schedule : int { kConcurrent = 0, kSerialForward = 1, kSerialReverse = 2 };

// The barrier of one emulated block, and in the serial schedules its turnstile.
class BlockBarrier {
 public:
  BlockBarrier(int threads, Schedule schedule)
      : schedule_(schedule), live_(size_t(threads), 1), arrived_(size_t(threads), 0),
        turns_(size_t(threads)), num_live_(threads) {}

  // Releases the threads once all are created (serial: the first in order gets the turn).
  // The concurrent start gate has a mutex of its own: were it the barrier's, a thread that
  // starts late would acquire what others released at a barrier it has not reached, and
  // ThreadSanitizer would take that for synchronization the kernel does not have.
  void open() {
    if (serial()) {
      std::lock_guard<std::mutex> lock(mu_);
      opened_ = true;
      give_turn(first_live());
    } else {
      std::lock_guard<std::mutex> lock(gate_mu_);
      opened_ = true;
      gate_cv_.notify_all();
    }
  }

  // Called by thread t before it runs the kernel.
  void enter(int t) {
    if (serial()) {
      std::unique_lock<std::mutex> lock(mu_);
      turns_[size_t(t)].wait(lock, [&] { return opened_ && turn_ == t; });
    } else {
      std::unique_lock<std::mutex> lock(gate_mu_);
      gate_cv_.wait(lock, [&] { return opened_; });
    }
  }

  // __syncthreads(): returns once every live thread of the block has arrived.
  void arrive_and_wait(int t) {
    std::unique_lock<std::mutex> lock(mu_);
    ++num_arrived_;
    if (serial()) {
      arrived_[size_t(t)] = 1;
      pass_turn(t);
      turns_[size_t(t)].wait(lock, [&] { return turn_ == t; });
      return;
    }
    const uint64_t phase = phase_;
    if (num_arrived_ == num_live_) next_phase();
    else phase_cv_.wait(lock, [&] { return phase_ != phase; });
  }

  // Thread t returned from the kernel: the others no longer wait for it.
  void arrive_and_drop(int t) {
    std::lock_guard<std::mutex> lock(mu_);
    live_[size_t(t)] = 0;
    --num_live_;
    if (serial()) pass_turn(t);
    else if (num_arrived_ > 0 && num_arrived_ == num_live_) next_phase();
  }

 private:
  bool serial() const { return schedule_ != Schedule::kConcurrent; }
  int size() const { return int(live_.size()); }
  // Position <-> thread index in the serial order.
  int thread_at(int pos) const {
    return schedule_ == Schedule::kSerialReverse ? size() - 1 - pos : pos;
  }
  int position_of(int t) const { return schedule_ == Schedule::kSerialReverse ? size() - 1 - t : t; }
  int first_live() const {
    for (int pos = 0; pos < size(); ++pos)
      if (live_[size_t(thread_at(pos))]) return thread_at(pos);
    return -1;
  }
  void give_turn(int t) {
    turn_ = t;
    if (t >= 0) turns_[size_t(t)].notify_one();
  }
  // Everyone before t in the order has already run this phase; hand over to the next live
  // thread that has not arrived, or start the next phase once all live ones have.
  void pass_turn(int t) {
    for (int pos = position_of(t) + 1; pos < size(); ++pos) {
      const int u = thread_at(pos);
      if (live_[size_t(u)] && !arrived_[size_t(u)]) return give_turn(u);
    }
    std::fill(arrived_.begin(), arrived_.end(), 0);
    num_arrived_ = 0;
    ++phase_;
    give_turn(first_live());
  }
  void next_phase() {
    num_arrived_ = 0;
    ++phase_;
    phase_cv_.notify_all();
  }

  const Schedule schedule_;
  std::mutex mu_, gate_mu_;
  std::condition_variable phase_cv_, gate_cv_;
  std::vector<char> live_, arrived_;
  std::vector<std::condition_variable> turns_;
  int num_live_, num_arrived_ = 0, turn_ = -1;
  uint64_t phase_ = 0;
  bool opened_ = false;
};

namespace detail {
inline thread_local BlockBarrier* block_barrier = nullptr;
inline thread_local int linear_thread = 0;
}  // namespace detail

// The host buffer that backs the kernels' extern __shared__ array.
struct SharedBuffer {
  unsigned char* data;
  size_t capacity;
};

constexpr unsigned char kPoisonByte = 0xFF;

// Runs `kernel()` (a call of the __global__ function with its arguments) as the grid
// <<<grid, block, smem_bytes>>> would: block after block, one std::thread per CUDA thread.
// Throws std::runtime_error when the configuration is impossible or a block wrote past
// its dynamic shared memory.
template <typename Kernel>
void run_grid(dim3 grid, dim3 block, size_t smem_bytes, SharedBuffer shared, Schedule schedule,
              const Kernel& kernel) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024)
    throw std::runtime_error("emulated launch: block of " + std::to_string(threads) +
                             " threads (CUDA allows 1..1024)");
  if (uint64_t(grid.x) * grid.y * grid.z == 0)
    throw std::runtime_error("emulated launch: empty grid");
  if (smem_bytes > shared.capacity)
    throw std::runtime_error("emulated launch: " + std::to_string(smem_bytes) +
                             " bytes of dynamic shared memory exceed the emulator's " +
                             std::to_string(shared.capacity));
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::memset(shared.data, kPoisonByte, shared.capacity);
        BlockBarrier barrier(int(threads), schedule);
        std::vector<std::thread> pool;
        pool.reserve(size_t(threads));
        for (int t = 0; t < int(threads); ++t) {
          pool.emplace_back([&, t] {
            threadIdx = {unsigned(t) % block.x, unsigned(t) / block.x % block.y,
                         unsigned(t) / (block.x * block.y)};
            blockIdx = {bx, by, bz};
            blockDim = block;
            gridDim = grid;
            detail::block_barrier = &barrier;
            detail::linear_thread = t;
            barrier.enter(t);
            kernel();
            barrier.arrive_and_drop(t);
          });
        }
        barrier.open();
        for (std::thread& th : pool) th.join();
        for (size_t i = smem_bytes; i < shared.capacity; ++i) {
          if (shared.data[i] != kPoisonByte)
            throw std::runtime_error(
                "emulated launch: block (" + std::to_string(bx) + "," + std::to_string(by) +
                "," + std::to_string(bz) + ") wrote shared memory byte " + std::to_string(i) +
                ", past its " + std::to_string(smem_bytes) + " bytes of dynamic shared memory");
        }
      }
    }
  }
}

}  // namespace inverseflow::emu

inline void __syncthreads() {
  inverseflow::emu::detail::block_barrier->arrive_and_wait(
      inverseflow::emu::detail::linear_thread);
}
