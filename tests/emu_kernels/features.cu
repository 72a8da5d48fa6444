// Kernels exercising every CUDA feature the CPU emulator supports (tests/test_emulator.py).
#include "features_common.cuh"

__constant__ float c_coeffs[4];
__device__ int d_counter;

extern "C" __global__ void vec_add(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

// Tree reduction of one block (blockDim.x a power of two) into out[blockIdx.x].
extern "C" __global__ void block_sum(const float* x, float* out, int n) {
  __shared__ float s[1024];
  const unsigned t = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + t;
  s[t] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (unsigned h = blockDim.x / 2; h > 0; h >>= 1) {
    if (t < h) s[t] += s[t + h];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// A reduction that folds towards the last element, with the barrier after the initial store
// missing: each thread reads only elements of lower-numbered threads in the first step, so it is
// right when threads run in increasing order without switching, and wrong otherwise.
extern "C" __global__ void block_sum_missing_barrier(const float* x, float* out, int n) {
  __shared__ float s[1024];
  const unsigned t = threadIdx.x;
  const unsigned last = blockDim.x - 1;
  const int i = blockIdx.x * blockDim.x + t;
  s[t] = i < n ? x[i] : 0.0f;
  for (unsigned h = blockDim.x / 2; h > 0; h >>= 1) {
    if (t + h > last && t >= h) s[t] += s[t - h];
    __syncthreads();
  }
  if (t == last) out[blockIdx.x] = s[last];
}

// Warp sums with __shfl_down_sync; lane 0 of each warp writes.
extern "C" __global__ void warp_sum_down(const int* x, int* out) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  int v = x[i];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if ((threadIdx.x & (warpSize - 1)) == 0) out[i / warpSize] = v;
}

// Butterfly all-reduce: every lane ends with the warp's sum (double, exact for integers).
extern "C" __global__ void warp_allreduce_xor(const double* x, double* out) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  double v = x[i];
  for (int m = 1; m < 32; m <<= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  out[i] = v;
}

// Every shuffle flavour with a given width: out has 4 rows (idx, up, down, xor) of blockDim.x.
extern "C" __global__ void shuffles(const float* x, float* out, int src, int delta, int width) {
  const unsigned t = threadIdx.x;
  const float v = x[t];
  const unsigned n = blockDim.x;
  out[t] = __shfl_sync(0xffffffffu, v, src, width);
  out[n + t] = __shfl_up_sync(0xffffffffu, v, (unsigned)delta, width);
  out[2 * n + t] = __shfl_down_sync(0xffffffffu, v, (unsigned)delta, width);
  out[3 * n + t] = __shfl_xor_sync(0xffffffffu, v, delta, width);
}

// Votes and counting barriers: per thread [ballot, any, all, count, and, or, activemask].
extern "C" __global__ void votes(const int* pred, unsigned* out) {
  const unsigned t = threadIdx.x;
  const int p = pred[t];
  unsigned* o = out + 7 * t;
  o[0] = __ballot_sync(0xffffffffu, p);
  o[1] = (unsigned)__any_sync(0xffffffffu, p);
  o[2] = (unsigned)__all_sync(0xffffffffu, p);
  o[3] = (unsigned)__syncthreads_count(p);
  o[4] = (unsigned)__syncthreads_and(p);
  o[5] = (unsigned)__syncthreads_or(p);
  o[6] = __activemask();
  __syncwarp();
}

// Two extern __shared__ arrays of different types alias one buffer, as on the GPU.
extern "C" __global__ void dyn_shared_two_types(const float* x, int* bits, float* back) {
  extern __shared__ float fbuf[];
  extern __shared__ int ibuf[];
  const unsigned t = threadIdx.x;
  fbuf[t] = x[t];
  __syncthreads();
  bits[t] = ibuf[blockDim.x - 1 - t];
  __syncthreads();
  ibuf[t] = __float_as_int(2.0f * x[t]);
  __syncthreads();
  back[t] = fbuf[t];
}

// Reverses each block's slice through dynamic shared memory, for any element type.
template <typename T>
__global__ void reverse_block(const T* x, T* y) {
  extern __shared__ unsigned char smem_raw[];
  T* s = reinterpret_cast<T*>(smem_raw);
  const unsigned t = threadIdx.x;
  const unsigned i = blockIdx.x * blockDim.x + t;
  s[t] = x[i];
  __syncthreads();
  y[i] = s[blockDim.x - 1 - t];
}

namespace feat {
template <typename T, int K>
__global__ void scale(T* y, const T* x, T alpha, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = static_cast<T>(K) * alpha * x[i];
}
}  // namespace feat

// Atomics: ints[0] add, [1] sub, [2] max, [3] min, [4] or, [5] and, [6] xor, [7] CAS-once flag,
// [8] exch; uints[0] inc (wraps at 7), [1] dec (wraps at 5); ull[0] add; f[0] add; d[0] add.
extern "C" __global__ void atomics(int* ints, unsigned* uints, unsigned long long* ull, float* f, double* d) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&ints[0], i);
  atomicSub(&ints[1], 1);
  atomicMax(&ints[2], i);
  atomicMin(&ints[3], -i);
  atomicOr(&ints[4], 1 << (i % 31));
  atomicAnd(&ints[5], ~(1 << (i % 31)));
  atomicXor(&ints[6], i);
  atomicCAS(&ints[7], 0, i + 1);
  atomicExch(&ints[8], 7);
  atomicInc(&uints[0], 7u);
  atomicDec(&uints[1], 5u);
  atomicAdd(&ull[0], (unsigned long long)i);
  atomicAdd(&f[0], 1.0f);
  atomicAdd(&d[0], 0.5);
}

// Each thread writes its global linear index at its position in a 3-D grid of 3-D blocks.
extern "C" __global__ void index3d(int* out, unsigned* dims) {
  const unsigned gx = gridDim.x * blockDim.x, gy = gridDim.y * blockDim.y;
  const unsigned x = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned y = blockIdx.y * blockDim.y + threadIdx.y;
  const unsigned z = blockIdx.z * blockDim.z + threadIdx.z;
  out[(z * gy + y) * gx + x] = (int)(((blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) * 1000 +
                                     (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x);
  if (x == 0 && y == 0 && z == 0) {
    dims[0] = gridDim.x; dims[1] = gridDim.y; dims[2] = gridDim.z;
    dims[3] = blockDim.x; dims[4] = blockDim.y; dims[5] = blockDim.z;
  }
}

extern "C" __global__ void copy_float4(const float4* in, float4* out, int n4) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n4) {
    float4 v = __ldg(&in[i]);
    out[i] = make_float4(v.w, v.z, v.y, v.x);
  }
}

extern "C" __global__ void scalars(float* out, int a, unsigned b, long long c, unsigned long long d, float e,
                                   double f, size_t g) {
  out[0] = (float)a; out[1] = (float)b; out[2] = (float)c; out[3] = (float)d; out[4] = e; out[5] = (float)f;
  out[6] = (float)g;
}

extern "C" __global__ void hello(int tag) {
  printf("hello from block %u thread %u tag %d\n", blockIdx.x, threadIdx.x, tag);
}

extern "C" __global__ void apply_coeffs(const float* x, float* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = c_coeffs[i % 4] * x[i];
  if (i == 0) atomicAdd(&d_counter, 1);
}

// Math functions and intrinsics: 16 results per input.
extern "C" __global__ void math_funcs(const float* x, float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float v = x[i];
  float* o = out + 16 * i;
  o[0] = expf(v); o[1] = __expf(v); o[2] = logf(fabsf(v) + 1.0f); o[3] = sqrtf(fabsf(v));
  o[4] = rsqrtf(fabsf(v) + 1.0f); o[5] = fmaxf(v, 0.5f); o[6] = fminf(v, 0.5f); o[7] = fmaf(v, 2.0f, 1.0f);
  o[8] = __fdividef(v, 3.0f); o[9] = copysignf(1.0f, v); o[10] = isnan(v) ? 1.0f : 0.0f;
  o[11] = isinf(v) ? 1.0f : 0.0f; o[12] = max(v, -1.0f); o[13] = (float)min(i, 3);
  o[14] = tanhf(v); o[15] = v > 0.0f ? INFINITY : -INFINITY;
}

// Integer intrinsics: 6 results per input.
extern "C" __global__ void int_funcs(const unsigned* x, int* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const unsigned v = x[i];
  int* o = out + 6 * i;
  o[0] = __popc(v); o[1] = __clz((int)v); o[2] = __ffs((int)v); o[3] = (int)__brev(v);
  o[4] = __float_as_int(__int_as_float((int)v)) == (int)v; o[5] = max((int)v, -5);
}

#ifndef GPUCONV_EMU
// GPU-only code is invisible to the emulator and to its lint.
extern "C" __global__ void gpu_only(int* x) {
  int lane;
  asm volatile("mov.u32 %0, %%laneid;" : "=r"(lane));
  x[threadIdx.x] = lane;
}
#endif
