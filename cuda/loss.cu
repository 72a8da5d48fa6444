// Softmax cross-entropy (forward and backward in one pass), the batch-mean reduction of the loss,
// and a row-wise argmax. Templates on T (float, double). Labels are int32 (the host converts).
//
// For row n of logits (N, K) with label c and label smoothing e in [0, 1] (PyTorch's definition:
// the target is q_k = (1 - e) [k == c] + e / K, loss_n = -sum_k q_k log p_k):
//   m = max_k x_k,  s = sum_k exp(x_k - m),
//   loss_n = log(s) - (1 - e) (x_c - m) - e * (1/K) sum_k (x_k - m),
//   dlogits_nk = (exp(x_k - m) / s - (1 - e) [k == c] - e / K) / N.
// With e = 0 the sum over (x_k - m) is skipped and the terms with e vanish exactly.
// A label outside [0, K) gives loss_n = NaN and a NaN dlogits row (visible, never a bad read).
// The batch loss is mean_reduce over loss_n: one block, fixed summation order (deterministic).
//
// Versions (op "softmax_cross_entropy"):
//   v1  one 128-thread block per row; max and sum by shared-memory tree reductions.
//   v2  one warp per row (4 rows per 128-thread block); max and sum by butterfly shuffles
//       (__shfl_xor_sync), no shared memory, no barriers.
// Default: v2 — classifier heads have K of 10..1000 classes, a warp covers such a row in a few
// steps and the block-level barriers of v1 cost more than they save (expected fastest, not yet
// measured on a GPU). v1 is kept for rows of many thousands of classes.
// mean_reduce_v1 (the only version): 256 threads, each sums a strided slice in order, then a
// shared-memory tree; out[0] = sum / n.
// argmax_rows_v1 (the only version): one thread per row; first maximum wins, first NaN wins.
#include "common.cuh"

#if !defined(GC_LOSS_BLOCK) || !defined(GC_REDUCE_BLOCK)
#error "compile with gpuconv's options: GC_LOSS_BLOCK, GC_REDUCE_BLOCK come from launch/loss.py"
#endif

// Shared-memory tree reduction over blockDim.x == BLOCK threads; every thread gets the result.
template <typename T, int BLOCK, bool IS_MAX>
__device__ inline T gc_block_reduce(T v, T* red) {
    const int t = threadIdx.x;
    red[t] = v;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            const T a = red[t], b = red[t + stride];
            red[t] = IS_MAX ? ((a > b || gc_isnan(a)) ? a : b) : a + b;
        }
        __syncthreads();
    }
    const T r = red[0];
    __syncthreads();  // red may be reused right after
    return r;
}

template <typename T>
__global__ void softmax_cross_entropy_v1(const T* __restrict__ logits, const int* __restrict__ labels,
                                         T* __restrict__ dlogits, T* __restrict__ row_loss, int N,
                                         int K, T smoothing) {
    __shared__ T red[GC_LOSS_BLOCK];
    const int n = blockIdx.x;
    if (n >= N) return;  // uniform over the block
    const T* x = logits + (long long)n * K;
    T* d = dlogits + (long long)n * K;
    const int label = labels[n];

    T m = -gc_inf<T>();
    for (int k = threadIdx.x; k < K; k += GC_LOSS_BLOCK) {
        const T v = x[k];
        m = (v > m || gc_isnan(v)) ? v : m;
    }
    m = gc_block_reduce<T, GC_LOSS_BLOCK, true>(m, red);
    T s = T(0);
    for (int k = threadIdx.x; k < K; k += GC_LOSS_BLOCK) s += gc_exp(x[k] - m);
    s = gc_block_reduce<T, GC_LOSS_BLOCK, false>(s, red);
    T shifted_sum = T(0);  // sum_k (x_k - m), only for label smoothing
    if (smoothing != T(0)) {  // uniform over the block
        for (int k = threadIdx.x; k < K; k += GC_LOSS_BLOCK) shifted_sum += x[k] - m;
        shifted_sum = gc_block_reduce<T, GC_LOSS_BLOCK, false>(shifted_sum, red);
    }

    const bool valid = label >= 0 && label < K;
    const T bad = valid ? T(0) : gc_nan<T>();
    const T keep = T(1) - smoothing, spread = smoothing / T(K);
    for (int k = threadIdx.x; k < K; k += GC_LOSS_BLOCK)
        d[k] = (gc_exp(x[k] - m) / s - (k == label ? keep : T(0)) - spread) / T(N) + bad;
    if (threadIdx.x == 0)
        row_loss[n] = valid ? gc_log(s) - keep * (x[label] - m) - spread * shifted_sum : gc_nan<T>();
}

template <typename T>
__device__ inline T gc_warp_max(T v) {
    for (int lane_mask = GC_WARP_SIZE / 2; lane_mask > 0; lane_mask >>= 1) {
        const T o = __shfl_xor_sync(0xffffffffu, v, lane_mask);
        v = (o > v || gc_isnan(o)) ? o : v;
    }
    return v;
}

template <typename T>
__device__ inline T gc_warp_sum(T v) {
    for (int lane_mask = GC_WARP_SIZE / 2; lane_mask > 0; lane_mask >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, lane_mask);
    return v;
}

template <typename T>
__global__ void softmax_cross_entropy_v2(const T* __restrict__ logits, const int* __restrict__ labels,
                                         T* __restrict__ dlogits, T* __restrict__ row_loss, int N,
                                         int K, T smoothing) {
    // blockDim = (32, rows per block); the whole warp leaves together when its row is past N.
    const int n = blockIdx.x * blockDim.y + threadIdx.y;
    if (n >= N) return;
    const int lane = threadIdx.x;
    const T* x = logits + (long long)n * K;
    T* d = dlogits + (long long)n * K;
    const int label = labels[n];

    T m = -gc_inf<T>();
    for (int k = lane; k < K; k += GC_WARP_SIZE) {
        const T v = x[k];
        m = (v > m || gc_isnan(v)) ? v : m;
    }
    m = gc_warp_max(m);
    T s = T(0);
    for (int k = lane; k < K; k += GC_WARP_SIZE) s += gc_exp(x[k] - m);
    s = gc_warp_sum(s);
    T shifted_sum = T(0);  // sum_k (x_k - m), only for label smoothing
    if (smoothing != T(0)) {  // uniform over the warp
        for (int k = lane; k < K; k += GC_WARP_SIZE) shifted_sum += x[k] - m;
        shifted_sum = gc_warp_sum(shifted_sum);
    }

    const bool valid = label >= 0 && label < K;
    const T bad = valid ? T(0) : gc_nan<T>();
    const T keep = T(1) - smoothing, spread = smoothing / T(K);
    for (int k = lane; k < K; k += GC_WARP_SIZE)
        d[k] = (gc_exp(x[k] - m) / s - (k == label ? keep : T(0)) - spread) / T(N) + bad;
    if (lane == 0)
        row_loss[n] = valid ? gc_log(s) - keep * (x[label] - m) - spread * shifted_sum : gc_nan<T>();
}

template <typename T>
__global__ void mean_reduce_v1(const T* __restrict__ v, T* __restrict__ out, int n) {
    __shared__ T red[GC_REDUCE_BLOCK];
    T s = T(0);
    for (int i = threadIdx.x; i < n; i += GC_REDUCE_BLOCK) s += v[i];
    s = gc_block_reduce<T, GC_REDUCE_BLOCK, false>(s, red);
    if (threadIdx.x == 0) out[0] = s / T(n);
}

template <typename T>
__global__ void argmax_rows_v1(const T* __restrict__ x, int* __restrict__ out, int N, int K) {
    GC_GRID_STRIDE_LOOP(n, N) {
        const T* row = x + (long long)n * K;
        T best = row[0];
        int arg = 0;
        for (int k = 1; k < K && !gc_isnan(best); ++k) {
            const T v = row[k];
            if (v > best || gc_isnan(v)) {
                best = v;
                arg = k;
            }
        }
        out[n] = arg;
    }
}
