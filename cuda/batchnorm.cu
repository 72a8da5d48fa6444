// Batch normalisation over channel 1 of x (N, C, S), S the product of the spatial sizes: forward
// (training and evaluation), backward, and the same with a ReLU fused after the normalisation.
// Templates on T (float, double). The equations and their derivation: docs/batchnorm.md.
//
// Training forward, three launches:
//   batch_norm_stats_v1     block (chunk, c) runs Welford's update over the values of channel c
//                           with flat (n, s) index in [chunk * chunk_len, (chunk + 1) * chunk_len),
//                           each thread over a strided subset, then merges the threads' (count,
//                           mean, M2) with Chan's formula: warp shuffles, then the warps in order.
//                           Writes part_mean / part_m2 [c * chunks + chunk].
//   batch_norm_finalize_v1  one thread per channel merges its chunks in order (Chan), writes
//                           mean and invstd = 1/sqrt(M2/count + eps) and updates the running
//                           statistics (unbiased variance M2/(count - 1), PyTorch's momentum rule).
//   batch_norm_apply_v1     y = (x - mean) * invstd * weight + bias (then max(., 0) if relu).
// Evaluation forward: batch_norm_eval_stats_v1 (mean = running_mean, invstd from running_var),
// then batch_norm_apply_v1. x is read twice in training (statistics, normalisation), y written once.
//
// Backward, three launches:
//   batch_norm_backward_reduce_v1    block (chunk, c): sums of g and g * (x - mean) over the
//                                    chunk, g = dy (relu: dy where y > 0, else 0).
//   batch_norm_backward_finalize_v1  one thread per channel adds its chunks in order:
//                                    dbias = sum g, dweight = invstd * sum g * (x - mean).
//   batch_norm_backward_dx_v1        training: dx = weight * invstd * (g - dbias / count
//                                    - xhat * dweight / count), xhat = (x - mean) * invstd;
//                                    evaluation: dx = weight * invstd * g.
//
// Determinism: the chunk count depends on the sizes only (gpuconv/backends/launch/batchnorm.py),
// every sum and merge runs in a fixed order, and no kernel uses atomics: the same input gives
// the same bits on every run. Welford's update and Chan's merge keep M2 accurate where the mean is
// large against the spread (E[x^2] - E[x]^2 would cancel every digit).
//
// Version 2 (training; evaluation as v1), two launches per pass instead of three, the merge of the
// chunks moved into the element-wise kernel:
//   forward   batch_norm_stats_v2 (as v1, Welford's update on groups of four values: one division
//             per four values instead of one per value), then batch_norm_apply_v2: block (chunk, c)
//             first merges channel c's partials itself (warp 0, a fixed order: every block of the
//             channel gets the same bits), block (0, c) writes mean, invstd and the running
//             statistics, then the block normalises its chunk.
//   backward  batch_norm_backward_reduce_v1, then batch_norm_backward_dx_v2: block (chunk, c) sums
//             channel c's partials (warp 0, fixed order), block (0, c) writes dweight and dbias,
//             then the block computes dx over its chunk.
// The chunking of v2 (``stat_chunks_v2``) aims at twice v1's blocks, so that a small layer still
// has enough warps in flight to keep DRAM busy.
//
// Versions: 1 and 2 (ops "batch_norm_forward" and "batch_norm_backward").
#include "common.cuh"

#ifndef GC_BN_THREADS  // threads per block of every kernel here
#error "compile with gpuconv's options: GC_BN_THREADS comes from gpuconv/backends/launch/batchnorm.py"
#endif

// ---- index cursors ------------------------------------------------------------------------------

// Channel c and position s of flat index i of an (N, C, S) tensor, advanced by a fixed stride
// without a division per element: s += stride % S, c += (stride / S) % C with carries
// (c + dc + carry < 2C, so one subtraction wraps it).
struct GcChannelCursor {
    int s, c, ds, dc;
    __device__ GcChannelCursor(unsigned i, unsigned stride, int C, int S) {
        const unsigned plane = i / (unsigned)S;
        s = (int)(i - plane * (unsigned)S);
        c = (int)(plane % (unsigned)C);
        ds = (int)(stride % (unsigned)S);
        dc = (int)((stride / (unsigned)S) % (unsigned)C);
    }
    __device__ void advance(int C, int S) {
        s += ds;
        int carry = 0;
        if (s >= S) {
            s -= S;
            carry = 1;
        }
        c += dc + carry;
        if (c >= C) c -= C;
    }
};

// Image n and position s of the flat per-channel index m = n * S + s, advanced by GC_BN_THREADS.
struct GcImageCursor {
    int n, s;
    __device__ GcImageCursor(unsigned m, int S) {
        n = (int)(m / (unsigned)S);
        s = (int)(m - (unsigned)n * (unsigned)S);
    }
    __device__ void advance(int S) {
        n += GC_BN_THREADS / S;
        s += GC_BN_THREADS % S;
        if (s >= S) {
            s -= S;
            ++n;
        }
    }
};

// Pointer to the value of channel c at flat per-channel index m = n * S + s of an (N, C, S) tensor,
// advanced by GC_BN_THREADS values of the channel: one pointer add per value (and one more when s
// wraps) instead of the index arithmetic of GcImageCursor.
template <typename T>
struct GcChannelPointer {
    const T* p;
    int s, ds;
    long long step, wrap;
    __device__ GcChannelPointer(const T* x, unsigned m, int c, int C, int S) {
        const unsigned n = m / (unsigned)S;
        s = (int)(m - n * (unsigned)S);
        p = x + ((long long)n * C + c) * S + s;
        ds = GC_BN_THREADS % S;
        step = (long long)(GC_BN_THREADS / S) * C * S + ds;
        wrap = (long long)(C - 1) * S;
    }
    __device__ void advance(int S) {
        s += ds;
        p += step;
        if (s >= S) {
            s -= S;
            p += wrap;
        }
    }
};

// ---- Welford / Chan -------------------------------------------------------------------------------

// (count, mean, M2) of a set of values; M2 = sum of squared deviations from the mean.
template <typename T>
struct GcMoments {
    int n;
    T mean, m2;
};

template <typename T>
__device__ inline void gc_welford_add(GcMoments<T>& a, T v) {
    a.n += 1;
    const T d = v - a.mean;
    a.mean += d / T(a.n);
    a.m2 += d * (v - a.mean);
}

// a <- the moments of the union of a's and b's values (Chan, Golub and LeVeque).
template <typename T>
__device__ inline void gc_moments_merge(GcMoments<T>& a, const GcMoments<T>& b) {
    if (b.n == 0) return;
    if (a.n == 0) {
        a = b;
        return;
    }
    const int n = a.n + b.n;
    const T d = b.mean - a.mean;
    const T fb = T(b.n) / T(n);
    a.mean += d * fb;
    a.m2 += b.m2 + d * d * T(a.n) * fb;
    a.n = n;
}

// The warp's moments, valid in lane 0: a shuffle tree (every lane of the warp must call it).
template <typename T>
__device__ inline GcMoments<T> gc_warp_moments(GcMoments<T> a) {
#pragma unroll
    for (int off = GC_WARP_SIZE / 2; off > 0; off /= 2) {
        GcMoments<T> b;
        b.n = __shfl_down_sync(0xffffffffu, a.n, off);
        b.mean = __shfl_down_sync(0xffffffffu, a.mean, off);
        b.m2 = __shfl_down_sync(0xffffffffu, a.m2, off);
        gc_moments_merge(a, b);
    }
    return a;
}

// The block's moments, valid in thread 0: a shuffle tree in each warp, then the warps in order.
template <typename T>
__device__ inline GcMoments<T> gc_block_moments(GcMoments<T> a) {
    constexpr int NWARPS = GC_BN_THREADS / GC_WARP_SIZE;
    __shared__ GcMoments<T> warp_moments[NWARPS];
    const int lane = threadIdx.x % GC_WARP_SIZE, warp = threadIdx.x / GC_WARP_SIZE;
    a = gc_warp_moments(a);
    if (lane == 0) warp_moments[warp] = a;
    __syncthreads();
    if (threadIdx.x == 0) {
        a = warp_moments[0];
        for (int w = 1; w < NWARPS; ++w) gc_moments_merge(a, warp_moments[w]);
    }
    __syncthreads();  // warp_moments is reused by the block's next channel
    return a;
}

// The block's sums of a and b, valid in thread 0 (fixed order: shuffle tree, then warps in order).
template <typename T>
__device__ inline void gc_block_sum2(T& a, T& b) {
    constexpr int NWARPS = GC_BN_THREADS / GC_WARP_SIZE;
    __shared__ T warp_a[NWARPS], warp_b[NWARPS];
    const int lane = threadIdx.x % GC_WARP_SIZE, warp = threadIdx.x / GC_WARP_SIZE;
#pragma unroll
    for (int off = GC_WARP_SIZE / 2; off > 0; off /= 2) {
        a += __shfl_down_sync(0xffffffffu, a, off);
        b += __shfl_down_sync(0xffffffffu, b, off);
    }
    if (lane == 0) {
        warp_a[warp] = a;
        warp_b[warp] = b;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        a = warp_a[0];
        b = warp_b[0];
        for (int w = 1; w < NWARPS; ++w) {
            a += warp_a[w];
            b += warp_b[w];
        }
    }
    __syncthreads();  // warp_a / warp_b are reused by the block's next channel
}

// Values of chunk j of a channel with `count` values split into chunks of chunk_len.
__device__ inline int gc_chunk_count(int j, int count, int chunk_len) {
    const int begin = j * chunk_len;
    return count - begin < chunk_len ? count - begin : chunk_len;
}

// ---- forward --------------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(GC_BN_THREADS)
batch_norm_stats_v1(const T* __restrict__ x, T* __restrict__ part_mean, T* __restrict__ part_m2, int N,
                    int C, int S, int chunk_len) {
    const int count = N * S;
    const int begin = blockIdx.x * chunk_len;
    const int end = begin + gc_chunk_count(blockIdx.x, count, chunk_len);
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        GcMoments<T> a = {0, T(0), T(0)};
        // Unsigned: m + GC_BN_THREADS cannot overflow when N*S is within a block of 2^31 - 1.
        unsigned m = begin + threadIdx.x;
        GcImageCursor at(m, S);
        for (; m < (unsigned)end; m += GC_BN_THREADS) {
            gc_welford_add(a, x[((long long)at.n * C + c) * S + at.s]);
            at.advance(S);
        }
        a = gc_block_moments(a);
        if (threadIdx.x == 0) {
            part_mean[c * gridDim.x + blockIdx.x] = a.mean;
            part_m2[c * gridDim.x + blockIdx.x] = a.m2;
        }
    }
}

template <typename T>
__global__ void batch_norm_finalize_v1(const T* __restrict__ part_mean, const T* __restrict__ part_m2,
                                       T* __restrict__ running_mean, T* __restrict__ running_var,
                                       T* __restrict__ mean, T* __restrict__ invstd, int C, int count,
                                       int chunks, int chunk_len, T momentum, T eps, int track) {
    GC_GRID_STRIDE_LOOP(c, C) {
        GcMoments<T> a = {0, T(0), T(0)};
        for (int j = 0; j < chunks; ++j) {
            const GcMoments<T> b = {gc_chunk_count(j, count, chunk_len), part_mean[c * chunks + j],
                                    part_m2[c * chunks + j]};
            gc_moments_merge(a, b);
        }
        mean[c] = a.mean;
        invstd[c] = T(1) / gc_sqrt(a.m2 / T(count) + eps);
        if (track) {
            running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * a.mean;
            running_var[c] = (T(1) - momentum) * running_var[c] + momentum * (a.m2 / T(count - 1));
        }
    }
}

template <typename T>
__global__ void batch_norm_eval_stats_v1(const T* __restrict__ running_mean,
                                         const T* __restrict__ running_var, T* __restrict__ mean,
                                         T* __restrict__ invstd, int C, T eps) {
    GC_GRID_STRIDE_LOOP(c, C) {
        mean[c] = running_mean[c];
        invstd[c] = T(1) / gc_sqrt(running_var[c] + eps);
    }
}

template <typename T>
__global__ void __launch_bounds__(GC_BN_THREADS)
batch_norm_apply_v1(const T* __restrict__ x, const T* __restrict__ mean, const T* __restrict__ invstd,
                    const T* __restrict__ weight, const T* __restrict__ bias, T* __restrict__ y, int N,
                    int C, int S, int has_weight, int has_bias, int relu) {
    const unsigned n = (unsigned)N * (unsigned)C * (unsigned)S;
    const unsigned start = blockIdx.x * blockDim.x + threadIdx.x, stride = blockDim.x * gridDim.x;
    if (start >= n) return;
    GcChannelCursor at(start, stride, C, S);
    for (unsigned i = start; i < n; i += stride) {
        const int c = at.c;
        T v = (x[i] - mean[c]) * invstd[c];
        if (has_weight) v *= weight[c];
        if (has_bias) v += bias[c];
        y[i] = relu ? ((v > T(0) || gc_isnan(v)) ? v : T(0)) : v;
        at.advance(C, S);
    }
}

// ---- backward -------------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(GC_BN_THREADS)
batch_norm_backward_reduce_v1(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                              const T* __restrict__ mean, T* __restrict__ part_g,
                              T* __restrict__ part_gx, int N, int C, int S, int chunk_len, int relu) {
    const int count = N * S;
    const int begin = blockIdx.x * chunk_len;
    const int end = begin + gc_chunk_count(blockIdx.x, count, chunk_len);
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        const T mu = mean[c];
        T sg = T(0), sgx = T(0);
        unsigned m = begin + threadIdx.x;
        GcImageCursor at(m, S);
        for (; m < (unsigned)end; m += GC_BN_THREADS) {
            const long long i = ((long long)at.n * C + c) * S + at.s;
            const T g = (!relu || y[i] > T(0)) ? dy[i] : T(0);
            sg += g;
            sgx += g * (x[i] - mu);
            at.advance(S);
        }
        gc_block_sum2(sg, sgx);
        if (threadIdx.x == 0) {
            part_g[c * gridDim.x + blockIdx.x] = sg;
            part_gx[c * gridDim.x + blockIdx.x] = sgx;
        }
    }
}

template <typename T>
__global__ void batch_norm_backward_finalize_v1(const T* __restrict__ part_g, const T* __restrict__ part_gx,
                                                const T* __restrict__ invstd, T* __restrict__ dweight,
                                                T* __restrict__ dbias, int C, int chunks) {
    GC_GRID_STRIDE_LOOP(c, C) {
        T sg = part_g[c * chunks], sgx = part_gx[c * chunks];
        for (int j = 1; j < chunks; ++j) {
            sg += part_g[c * chunks + j];
            sgx += part_gx[c * chunks + j];
        }
        dbias[c] = sg;
        dweight[c] = sgx * invstd[c];
    }
}

template <typename T>
__global__ void __launch_bounds__(GC_BN_THREADS)
batch_norm_backward_dx_v1(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                          const T* __restrict__ mean, const T* __restrict__ invstd,
                          const T* __restrict__ weight, const T* __restrict__ dweight,
                          const T* __restrict__ dbias, T* __restrict__ dx, int N, int C, int S,
                          int has_weight, int relu, int training) {
    const unsigned n = (unsigned)N * (unsigned)C * (unsigned)S;
    const unsigned start = blockIdx.x * blockDim.x + threadIdx.x, stride = blockDim.x * gridDim.x;
    if (start >= n) return;
    const T inv_count = T(1) / T(N * S);
    GcChannelCursor at(start, stride, C, S);
    for (unsigned i = start; i < n; i += stride) {
        const int c = at.c;
        const T is = invstd[c];
        T g = (!relu || y[i] > T(0)) ? dy[i] : T(0);
        if (training) {
            const T xhat = (x[i] - mean[c]) * is;
            g = g - dbias[c] * inv_count - xhat * (dweight[c] * inv_count);
        }
        dx[i] = (has_weight ? weight[c] * is : is) * g;
        at.advance(C, S);
    }
}

// ---- version 2: the chunks' merge inside the element-wise kernel ----------------------------------

// Channel c's moments from the statistics kernel's partials, valid in lane 0 of the calling warp:
// lane l merges chunks l, l + 32, ... in order, then the shuffle tree (a fixed order).
template <typename T>
__device__ inline GcMoments<T> gc_channel_moments(const T* __restrict__ part_mean, const T* __restrict__ part_m2,
                                                  int c, int chunks, int count, int chunk_len) {
    GcMoments<T> a = {0, T(0), T(0)};
    for (int j = threadIdx.x % GC_WARP_SIZE; j < chunks; j += GC_WARP_SIZE) {
        const GcMoments<T> b = {gc_chunk_count(j, count, chunk_len), part_mean[c * chunks + j],
                                part_m2[c * chunks + j]};
        gc_moments_merge(a, b);
    }
    return gc_warp_moments(a);
}

// Channel c's sums of the backward partials, valid in lane 0 of the calling warp (fixed order).
template <typename T>
__device__ inline void gc_channel_sums(const T* __restrict__ part_g, const T* __restrict__ part_gx, int c,
                                       int chunks, T& sg, T& sgx) {
    sg = T(0);
    sgx = T(0);
    for (int j = threadIdx.x % GC_WARP_SIZE; j < chunks; j += GC_WARP_SIZE) {
        sg += part_g[c * chunks + j];
        sgx += part_gx[c * chunks + j];
    }
#pragma unroll
    for (int off = GC_WARP_SIZE / 2; off > 0; off /= 2) {
        sg += __shfl_down_sync(0xffffffffu, sg, off);
        sgx += __shfl_down_sync(0xffffffffu, sgx, off);
    }
}

template <typename T>
__global__ void __launch_bounds__(GC_BN_THREADS)
batch_norm_stats_v2(const T* __restrict__ x, T* __restrict__ part_mean, T* __restrict__ part_m2, int N,
                    int C, int S, int chunk_len) {
    constexpr unsigned B = GC_BN_THREADS;
    const int count = N * S;
    const int begin = blockIdx.x * chunk_len;
    const int end = begin + gc_chunk_count(blockIdx.x, count, chunk_len);
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        GcMoments<T> a = {0, T(0), T(0)};
        unsigned m = begin + threadIdx.x;
        GcChannelPointer<T> at(x, m, c, C, S);
        // Four values m, m + B, m + 2B, m + 3B: their mean and M2 about it from the deviations from
        // the first (exact for close values), merged into a by (16).
        for (; m + 3 * B < (unsigned)end; m += 4 * B) {
            T v[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                v[k] = *at.p;
                at.advance(S);
            }
            const T d1 = v[1] - v[0], d2 = v[2] - v[0], d3 = v[3] - v[0];
            const T shift = (d1 + d2 + d3) * T(0.25);
            const T e1 = d1 - shift, e2 = d2 - shift, e3 = d3 - shift;
            const GcMoments<T> b = {4, v[0] + shift, shift * shift + e1 * e1 + e2 * e2 + e3 * e3};
            gc_moments_merge(a, b);
        }
        for (; m < (unsigned)end; m += B) {
            gc_welford_add(a, *at.p);
            at.advance(S);
        }
        a = gc_block_moments(a);
        if (threadIdx.x == 0) {
            part_mean[c * gridDim.x + blockIdx.x] = a.mean;
            part_m2[c * gridDim.x + blockIdx.x] = a.m2;
        }
    }
}

// Block (chunk, c): channel c's statistics from the partials of batch_norm_stats_v2 (stat_chunks
// of stat_len values), written with the running statistics by block (0, c) only; then
// y = (x - mean) * invstd * weight + bias (then max(., 0) if relu) over the block's chunk of
// chunk_len values, as batch_norm_apply_v1 computes it.
template <typename T>
__global__ void __launch_bounds__(GC_BN_THREADS)
batch_norm_apply_v2(const T* __restrict__ x, const T* __restrict__ part_mean, const T* __restrict__ part_m2,
                    const T* __restrict__ weight, const T* __restrict__ bias, T* __restrict__ running_mean,
                    T* __restrict__ running_var, T* __restrict__ mean, T* __restrict__ invstd,
                    T* __restrict__ y, int N, int C, int S, int stat_chunks, int stat_len, int chunk_len,
                    T momentum, T eps, int has_weight, int has_bias, int relu, int track) {
    __shared__ T channel[2];  // mean, invstd
    const int count = N * S;
    const int begin = blockIdx.x * chunk_len;
    const int end = begin + gc_chunk_count(blockIdx.x, count, chunk_len);
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        if (threadIdx.x < GC_WARP_SIZE) {
            const GcMoments<T> a = gc_channel_moments(part_mean, part_m2, c, stat_chunks, count, stat_len);
            if (threadIdx.x == 0) {
                const T is = T(1) / gc_sqrt(a.m2 / T(count) + eps);
                channel[0] = a.mean;
                channel[1] = is;
                if (blockIdx.x == 0) {
                    mean[c] = a.mean;
                    invstd[c] = is;
                    if (track) {
                        running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * a.mean;
                        running_var[c] = (T(1) - momentum) * running_var[c] + momentum * (a.m2 / T(count - 1));
                    }
                }
            }
        }
        __syncthreads();
        const T mu = channel[0], is = channel[1];
        const T w = has_weight ? weight[c] : T(1), b = has_bias ? bias[c] : T(0);
        unsigned m = begin + threadIdx.x;
        GcImageCursor at(m, S);
        for (; m < (unsigned)end; m += GC_BN_THREADS) {
            const long long i = ((long long)at.n * C + c) * S + at.s;
            T v = (x[i] - mu) * is;
            if (has_weight) v *= w;
            if (has_bias) v += b;
            y[i] = relu ? ((v > T(0) || gc_isnan(v)) ? v : T(0)) : v;
            at.advance(S);
        }
        __syncthreads();  // channel is rewritten for the block's next channel
    }
}

// Block (chunk, c): channel c's dbias = sum g and dweight = invstd * sum g * (x - mean) from the
// partials of batch_norm_backward_reduce_v1 (stat_chunks of them), written by block (0, c) only;
// then dx over the block's chunk of chunk_len values, as batch_norm_backward_dx_v1 computes it.
template <typename T>
__global__ void __launch_bounds__(GC_BN_THREADS)
batch_norm_backward_dx_v2(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                          const T* __restrict__ mean, const T* __restrict__ invstd,
                          const T* __restrict__ weight, const T* __restrict__ part_g,
                          const T* __restrict__ part_gx, T* __restrict__ dweight, T* __restrict__ dbias,
                          T* __restrict__ dx, int N, int C, int S, int stat_chunks, int chunk_len,
                          int has_weight, int relu, int training) {
    __shared__ T channel[2];  // dbias, dweight
    const int count = N * S;
    const int begin = blockIdx.x * chunk_len;
    const int end = begin + gc_chunk_count(blockIdx.x, count, chunk_len);
    const T inv_count = T(1) / T(count);
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        const T is = invstd[c];
        if (threadIdx.x < GC_WARP_SIZE) {
            T sg, sgx;
            gc_channel_sums(part_g, part_gx, c, stat_chunks, sg, sgx);
            if (threadIdx.x == 0) {
                channel[0] = sg;
                channel[1] = sgx * is;
                if (blockIdx.x == 0) {
                    dbias[c] = sg;
                    dweight[c] = sgx * is;
                }
            }
        }
        __syncthreads();
        const T mu = mean[c], db = channel[0], dw = channel[1];
        const T scale = has_weight ? weight[c] * is : is;
        unsigned m = begin + threadIdx.x;
        GcImageCursor at(m, S);
        for (; m < (unsigned)end; m += GC_BN_THREADS) {
            const long long i = ((long long)at.n * C + c) * S + at.s;
            T g = (!relu || y[i] > T(0)) ? dy[i] : T(0);
            if (training) {
                const T xhat = (x[i] - mu) * is;
                g = g - db * inv_count - xhat * (dw * inv_count);
            }
            dx[i] = scale * g;
            at.advance(S);
        }
        __syncthreads();  // channel is rewritten for the block's next channel
    }
}
