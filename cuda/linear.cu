// Dense-layer kernels: a tiled GEMM with strides (so transposes need no copies) and an optional
// fused bias, a row-broadcast bias add and a deterministic column sum (the bias gradient).
// Templates on T (float, double).
//
// gemm_v1: C[m, n] = sum_k A(m, k) * B(k, n) (+ bias[n] when has_bias), M x N output,
//   A(m, k) = A[m * a_sm + k * a_sk],  B(k, n) = B[k * b_sk + n * b_sn],  C row-major (ldc = N).
//   16 x 16 thread blocks, 16 x 16 tiles of A and B staged in shared memory; each thread owns one
//   C element and sums k in increasing order (deterministic). Row tiles run along grid.x (limit
//   2^31 - 1) so that a large batch M does not meet grid.y's limit of 65535 tiles.
// Versions (op "linear_gemm"): v1 is this kernel; v2 is the array library's matmul (cuBLAS through
// CuPy on a GPU, NumPy on the CPU) followed by bias_add_rows_v1. Default: v2 — cuBLAS is far
// faster than a simple tiled kernel at every size, and the hand-written v1 exists to keep a
// dependency-free, fully checked path (it runs in every CPU test through the emulator).
// bias_add_rows_v1: y[i, j] += bias[j] for y (rows, cols), grid-stride, in place.
// column_sum_v1: out[j] = sum_i a[i, j], one thread per column summing rows in order
//   (adjacent threads read adjacent columns: coalesced; deterministic).
#include "common.cuh"

#ifndef GC_GEMM_TILE
#error "compile with gpuconv's options: GC_GEMM_TILE comes from gpuconv/backends/launch/linear.py"
#endif

template <typename T>
__global__ void gemm_v1(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ bias,
                        T* __restrict__ C, int M, int N, int K, int a_sm, int a_sk, int b_sk,
                        int b_sn, int has_bias) {
    __shared__ T As[GC_GEMM_TILE][GC_GEMM_TILE];
    __shared__ T Bs[GC_GEMM_TILE][GC_GEMM_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int m = blockIdx.x * GC_GEMM_TILE + ty;
    const int n = blockIdx.y * GC_GEMM_TILE + tx;
    T acc = T(0);
    for (int k0 = 0; k0 < K; k0 += GC_GEMM_TILE) {
        const int ka = k0 + tx, kb = k0 + ty;
        As[ty][tx] = (m < M && ka < K) ? A[(long long)m * a_sm + (long long)ka * a_sk] : T(0);
        Bs[ty][tx] = (kb < K && n < N) ? B[(long long)kb * b_sk + (long long)n * b_sn] : T(0);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < GC_GEMM_TILE; ++k) acc += As[ty][k] * Bs[k][tx];
        __syncthreads();
    }
    if (m < M && n < N) C[(long long)m * N + n] = has_bias ? acc + bias[n] : acc;
}

template <typename T>
__global__ void bias_add_rows_v1(T* __restrict__ y, const T* __restrict__ bias, int rows, int cols) {
    GC_GRID_STRIDE_LOOP(i, rows * cols) { y[i] += bias[(int)i % cols]; }
}

template <typename T>
__global__ void column_sum_v1(const T* __restrict__ a, T* __restrict__ out, int rows, int cols) {
    GC_GRID_STRIDE_LOOP(j, cols) {
        T s = T(0);
        for (int i = 0; i < rows; ++i) s += a[(long long)i * cols + j];
        out[j] = s;
    }
}
