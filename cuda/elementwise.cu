// Element-wise kernels: activations (forward, and backward from the output y), dropout with a
// counter-based hash RNG, add and mul. All are templates on T (float or double).
//
// Versions (op name "elementwise", shared by every kernel in this file):
//   v1  one element per loop step, grid-stride loop over n elements. Any alignment.
//   v2  four elements per loop step through one aligned 16-byte (float) / 32-byte (double)
//       access (gc_vec4), grid-stride over n / 4 vectors, then a scalar tail of n % 4 elements.
//       The host launches v2 only when every pointer is aligned to 4 * sizeof(T); otherwise it
//       falls back to v1 for that call.
// Default: v2 — these kernels are bandwidth-bound and wide accesses halve the load/store
// instructions per byte (expected fastest, not yet measured on a GPU).
//
// Backward kernels take the forward OUTPUT y (relu: dy where y > 0; sigmoid: dy*y*(1-y);
// tanh: dy*(1-y)*(1+y)), so layers cache only y.
//
// Dropout: keep element i iff (h(i) >> 8) >= threshold, where threshold = round(p * 2^24) and
//   h(i) = mix(mix(i + offset) ^ key),  key = mix(seed_lo ^ mix(seed_hi ^ 0x9e3779b9)),
//   mix = the "lowbias32" integer hash (xorshift-multiply, two rounds; cuda/counter_hash.cuh),
//   all in uint32.
// mask[i] = keep ? scale : 0 with scale = 1/(1-p), y[i] = x[i] * mask[i]. The same rule is
// transcribed in NumPy by gpuconv/dropout_rng.py.
#include "common.cuh"
#include "counter_hash.cuh"

// ---- element functions ---------------------------------------------------------------------------

template <typename T> struct ReluForward {
    __device__ T operator()(T x) const { return gc_relu(x); }  // common.cuh: the rule
};
template <typename T> struct SigmoidForward {
    // exp of a non-positive argument only: no overflow for large |x|.
    __device__ T operator()(T x) const {
        if (x >= T(0)) return T(1) / (T(1) + gc_exp(-x));
        T e = gc_exp(x);
        return e / (T(1) + e);
    }
};
template <typename T> struct TanhForward {
    __device__ T operator()(T x) const { return gc_tanh(x); }
};
template <typename T> struct ReluBackward {  // (dy, y)
    __device__ T operator()(T dy, T y) const { return gc_relu_backward(dy, y); }
};
template <typename T> struct SigmoidBackward {
    __device__ T operator()(T dy, T y) const { return dy * (y * (T(1) - y)); }
};
template <typename T> struct TanhBackward {
    // (1 - y)(1 + y) rather than 1 - y*y: no cancellation when |y| is close to 1.
    __device__ T operator()(T dy, T y) const { return dy * ((T(1) - y) * (T(1) + y)); }
};
template <typename T> struct Add {
    __device__ T operator()(T a, T b) const { return a + b; }
};
template <typename T> struct Mul {
    __device__ T operator()(T a, T b) const { return a * b; }
};

// ---- map drivers --------------------------------------------------------------------------------

template <typename T, typename F>
__device__ inline void gc_map1_v1(const T* __restrict__ a, T* __restrict__ y, int n, F f) {
    GC_GRID_STRIDE_LOOP(i, n) { y[i] = f(a[i]); }
}

template <typename T, typename F>
__device__ inline void gc_map1_v2(const T* __restrict__ a, T* __restrict__ y, int n, F f) {
    const int nv = n / 4;
    const gc_vec4<T>* a4 = gc_vec4_at(a);
    gc_vec4<T>* y4 = gc_vec4_at(y);
    GC_GRID_STRIDE_LOOP(i, nv) {
        gc_vec4<T> va = a4[i];
        gc_vec4<T> vy;
#pragma unroll
        for (int k = 0; k < 4; ++k) vy.v[k] = f(va.v[k]);
        y4[i] = vy;
    }
    GC_GRID_STRIDE_LOOP(j, n - nv * 4) {
        int i = nv * 4 + (int)j;
        y[i] = f(a[i]);
    }
}

template <typename T, typename F>
__device__ inline void gc_map2_v1(const T* __restrict__ a, const T* __restrict__ b,
                                  T* __restrict__ y, int n, F f) {
    GC_GRID_STRIDE_LOOP(i, n) { y[i] = f(a[i], b[i]); }
}

template <typename T, typename F>
__device__ inline void gc_map2_v2(const T* __restrict__ a, const T* __restrict__ b,
                                  T* __restrict__ y, int n, F f) {
    const int nv = n / 4;
    const gc_vec4<T>* a4 = gc_vec4_at(a);
    const gc_vec4<T>* b4 = gc_vec4_at(b);
    gc_vec4<T>* y4 = gc_vec4_at(y);
    GC_GRID_STRIDE_LOOP(i, nv) {
        gc_vec4<T> va = a4[i];
        gc_vec4<T> vb = b4[i];
        gc_vec4<T> vy;
#pragma unroll
        for (int k = 0; k < 4; ++k) vy.v[k] = f(va.v[k], vb.v[k]);
        y4[i] = vy;
    }
    GC_GRID_STRIDE_LOOP(j, n - nv * 4) {
        int i = nv * 4 + (int)j;
        y[i] = f(a[i], b[i]);
    }
}

// ---- kernels --------------------------------------------------------------------------------------

#define GC_UNARY_KERNELS(NAME, FUNC)                                                       \
    template <typename T>                                                                  \
    __global__ void NAME##_v1(const T* __restrict__ x, T* __restrict__ y, int n) {         \
        gc_map1_v1<T>(x, y, n, FUNC<T>());                                                 \
    }                                                                                      \
    template <typename T>                                                                  \
    __global__ void NAME##_v2(const T* __restrict__ x, T* __restrict__ y, int n) {         \
        gc_map1_v2<T>(x, y, n, FUNC<T>());                                                 \
    }

#define GC_BINARY_KERNELS(NAME, FUNC)                                                      \
    template <typename T>                                                                  \
    __global__ void NAME##_v1(const T* __restrict__ a, const T* __restrict__ b,            \
                              T* __restrict__ y, int n) {                                  \
        gc_map2_v1<T>(a, b, y, n, FUNC<T>());                                              \
    }                                                                                      \
    template <typename T>                                                                  \
    __global__ void NAME##_v2(const T* __restrict__ a, const T* __restrict__ b,            \
                              T* __restrict__ y, int n) {                                  \
        gc_map2_v2<T>(a, b, y, n, FUNC<T>());                                              \
    }

GC_UNARY_KERNELS(relu_forward, ReluForward)
GC_UNARY_KERNELS(sigmoid_forward, SigmoidForward)
GC_UNARY_KERNELS(tanh_forward, TanhForward)
GC_BINARY_KERNELS(relu_backward, ReluBackward)
GC_BINARY_KERNELS(sigmoid_backward, SigmoidBackward)
GC_BINARY_KERNELS(tanh_backward, TanhBackward)
GC_BINARY_KERNELS(add, Add)
GC_BINARY_KERNELS(mul, Mul)

// ---- dropout --------------------------------------------------------------------------------------

__device__ inline bool gc_dropout_keep(unsigned i, unsigned offset, unsigned key, unsigned threshold) {
    return (gc_mix32(gc_mix32(i + offset) ^ key) >> 8) >= threshold;
}

template <typename T>
__global__ void dropout_forward_v1(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ mask,
                                   int n, int seed_lo, int seed_hi, int offset, int threshold,
                                   T scale) {
    const unsigned key = gc_seed_key(seed_lo, seed_hi);
    GC_GRID_STRIDE_LOOP(i, n) {
        T m = gc_dropout_keep(i, (unsigned)offset, key, (unsigned)threshold) ? scale : T(0);
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

template <typename T>
__global__ void dropout_forward_v2(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ mask,
                                   int n, int seed_lo, int seed_hi, int offset, int threshold,
                                   T scale) {
    const unsigned key = gc_seed_key(seed_lo, seed_hi);
    const int nv = n / 4;
    const gc_vec4<T>* x4 = gc_vec4_at(x);
    gc_vec4<T>* y4 = gc_vec4_at(y);
    gc_vec4<T>* m4 = gc_vec4_at(mask);
    GC_GRID_STRIDE_LOOP(i, nv) {
        gc_vec4<T> vx = x4[i];
        gc_vec4<T> vy, vm;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            vm.v[k] = gc_dropout_keep(4 * i + k, (unsigned)offset, key, (unsigned)threshold) ? scale
                                                                                            : T(0);
            vy.v[k] = vx.v[k] * vm.v[k];
        }
        y4[i] = vy;
        m4[i] = vm;
    }
    GC_GRID_STRIDE_LOOP(j, n - nv * 4) {
        unsigned i = (unsigned)(nv * 4) + j;
        T m = gc_dropout_keep(i, (unsigned)offset, key, (unsigned)threshold) ? scale : T(0);
        mask[i] = m;
        y[i] = x[i] * m;
    }
}
