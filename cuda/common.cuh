// gpuconv shared device header: index helpers, window bounds, numeric helpers for float/double.
//
// Included by every cuda/*.cu. It must compile under NVRTC (no host headers: never include
// <cstdint>, <cmath>, <algorithm>, <cfloat>), under nvcc, and under the CPU emulator, which
// defines GPUCONV_EMU. Everything here is device code only.
#pragma once

// ---- launch-shape helpers ---------------------------------------------------------------------

// Grid-stride loop over [0, n) with an unsigned counter: n <= 2^31 - 1 (checked on the host) and
// the host caps the grid at 2^31 threads, so i + stride never wraps.
#define GC_GRID_STRIDE_LOOP(i, n)                                                          \
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)(n);            \
         i += blockDim.x * gridDim.x)

#define GC_WARP_SIZE 32

// ---- numeric helpers (overloads for float and double) -----------------------------------------

__device__ inline float gc_exp(float x) { return expf(x); }
__device__ inline double gc_exp(double x) { return exp(x); }
__device__ inline float gc_log(float x) { return logf(x); }
__device__ inline double gc_log(double x) { return log(x); }
__device__ inline float gc_sqrt(float x) { return sqrtf(x); }
__device__ inline double gc_sqrt(double x) { return sqrt(x); }
__device__ inline float gc_tanh(float x) { return tanhf(x); }
__device__ inline double gc_tanh(double x) { return tanh(x); }

// IEEE NaN test that does not depend on a math header (no fast math is ever used).
template <typename T>
__device__ inline bool gc_isnan(T x) { return x != x; }

template <typename T> __device__ inline T gc_inf();
template <> __device__ inline float gc_inf<float>() { return __int_as_float(0x7f800000); }
template <> __device__ inline double gc_inf<double>() {
    return __longlong_as_double(0x7ff0000000000000LL);
}

template <typename T> __device__ inline T gc_nan();
template <> __device__ inline float gc_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ inline double gc_nan<double>() {
    return __longlong_as_double(0x7ff8000000000000LL);
}

template <typename T>
__device__ inline T gc_max(T a, T b) { return a > b ? a : b; }
template <typename T>
__device__ inline T gc_min(T a, T b) { return a < b ? a : b; }

// ReLU, the one rule of every kernel that applies it (element-wise, conv epilogues): NaN
// propagates (as torch.relu); -0 and negatives give +0. Its gradient from the output y: dy where
// y > 0, else 0.
template <typename T>
__device__ inline T gc_relu(T x) { return (x > T(0) || gc_isnan(x)) ? x : T(0); }
template <typename T>
__device__ inline T gc_relu_backward(T dy, T y) { return y > T(0) ? dy : T(0); }

// Four consecutive elements loaded/stored as one aligned access (LDG.128 for float).
template <typename T>
struct alignas(4 * sizeof(T)) gc_vec4 {
    T v[4];
};

// The four elements at p as one vector (one LDG/STG/LDS/STS.128 for float, two for double):
// every vector access goes through these. The hosts only take a vector path for pointers aligned
// to sizeof(gc_vec4<T>); the GPU faults on a vector access that is not aligned to its own width
// (16 bytes at most), which is what the emulator checks here. For a pointer to an array of
// vectors, the base's alignment is checked once.
#ifdef GPUCONV_EMU
// (the emulator's fault names the line of the access: the caller's)
template <typename T>
inline gc_vec4<T>* gc_vec4_at(T* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    gpuconv_emu_check_aligned(p, sizeof(gc_vec4<T>) < 16 ? sizeof(gc_vec4<T>) : 16, file, line);
    return reinterpret_cast<gc_vec4<T>*>(p);
}
template <typename T>
inline const gc_vec4<T>* gc_vec4_at(const T* p, const char* file = __builtin_FILE(),
                                    int line = __builtin_LINE()) {
    gpuconv_emu_check_aligned(p, sizeof(gc_vec4<T>) < 16 ? sizeof(gc_vec4<T>) : 16, file, line);
    return reinterpret_cast<const gc_vec4<T>*>(p);
}
#else
template <typename T>
__device__ __forceinline__ gc_vec4<T>* gc_vec4_at(T* p) { return reinterpret_cast<gc_vec4<T>*>(p); }
template <typename T>
__device__ __forceinline__ const gc_vec4<T>* gc_vec4_at(const T* p) {
    return reinterpret_cast<const gc_vec4<T>*>(p);
}
#endif

// ---- pooling window bounds ---------------------------------------------------------------------

// Output cells o whose window covers input cell i along one axis:
//   o * s - p + k * d == i  for some tap k in [0, K)
// The range of candidate o is [o_lo, o_hi] (inclusive, may be empty: o_lo > o_hi); callers still
// test (i + p - o * s) % d == 0 when d > 1.
__device__ inline void gc_covering_range(int i, int K, int s, int p, int d, int out_size,
                                         int* o_lo, int* o_hi) {
    int top = i + p;                    // position in the padded input
    int span = (K - 1) * d;             // effective window minus one
    int lo = top - span;                // o * s >= lo
    *o_lo = lo <= 0 ? 0 : (lo + s - 1) / s;
    int hi = top / s;                   // o * s <= top
    *o_hi = hi < out_size - 1 ? hi : out_size - 1;
}
