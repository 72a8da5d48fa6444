// Kernels with the bugs the CPU emulator must catch (tests/test_emulator.py). Line numbers of
// the marked lines are looked up by the tests through their "// @name" comments.

extern "C" __global__ void divergent_barrier(float* x) {
  if (threadIdx.x < 16) {
    __syncthreads();  // @div_a
  } else {
    __syncthreads();  // @div_b
  }
  x[threadIdx.x] = 1.0f;
}

extern "C" __global__ void exit_at_barrier(const float* x, float* y, int n) {
  __shared__ float s[256];
  const int i = threadIdx.x;
  if (i >= n) return;  // threads past n leave before the barrier
  s[i] = x[i];
  __syncthreads();  // @exit_bar
  y[i] = s[n - 1 - i];
}

extern "C" __global__ void shuffle_then_barrier(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_sync(0xffffffffu, v, 0);  // @dead_shfl
  __syncthreads();  // @dead_bar
  out[threadIdx.x] = v;
}

extern "C" __global__ void shuffle_sites_differ(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 16) {
    v = __shfl_xor_sync(0xffffffffu, v, 1);  // @site_a
  } else {
    v = __shfl_xor_sync(0xffffffffu, v, 2);  // @site_b
  }
  out[threadIdx.x] = v;
}

extern "C" __global__ void shuffle_mask_without_caller(int* out) {
  out[threadIdx.x] = __shfl_sync(0x0000ffffu, (int)threadIdx.x, 0);  // @mask_caller
}

extern "C" __global__ void shuffle_reads_inactive_lane(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_down_sync(0x0000ffffu, v, 8);  // @inactive
  out[threadIdx.x] = v;
}

extern "C" __global__ void smem_overrun(float* out) {
  extern __shared__ float buf[];
  buf[threadIdx.x] = (float)threadIdx.x;  // @overrun
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x];
}

extern "C" __global__ void assert_positive(const float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) assert(x[i] >= 0.0f);  // @assert
}

extern "C" __global__ void trap_on_negative(const float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && x[i] < 0.0f) __trap();  // @trap
}

__device__ float deep(volatile float* p, int depth) {
  volatile float local[512];
  local[depth & 511] = p[0];
  return depth > 0 ? deep(p, depth - 1) + local[(depth * 7) & 511] : local[0];
}

extern "C" __global__ void stack_overflow(float* x, int depth) {
  x[threadIdx.x] = deep(x, depth);
}

extern "C" __global__ void null_write(float* x) {
  float* p = x;
  if (threadIdx.x == 3) p = nullptr;
  p[threadIdx.x] = 1.0f;  // @null
}

extern "C" __global__ void read_past_end(const float* x, float* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i + 1];  // @oob
}
