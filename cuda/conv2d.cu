// gpuconv 2-D convolution kernels: forward, backward-data (dx), backward-filter (dw), bias (db).
//
// Layout NCHW, C-contiguous; weight K x (C/groups) x R x S; bias K. Every kernel takes the geometry
// as individual int scalars
//     N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups
// (pad_h/pad_w are the top/left padding; bottom/right padding only shows in P and Q). Offsets are
// int32: the host refuses tensors of 2^31 elements or more. Templates on T = float or double.
//
// Three of the kernels are implicit GEMMs over one group g (Cg = C/groups, Kg = K/groups):
//     forward          y[m=(n,p,q)][k]      = sum over red=(c,r,s)  of im2col(x)[m][red] * w[k][red]
//     backward-data    dx[m=(n,h,w)][c]     = sum over red=(k,r,s)  of col(dy)[m][red]   * w[k][c,r,s]
//     backward-filter  dw[k][red=(c,r,s)]   = sum over m=(n,p,q)    of dy[m][k] * im2col(x)[m][red]
// They share one block design: 256 threads, a BM x BN output tile (BM * BN = 4096, each thread a
// 4 x 4 register tile of outer products), a reduction step of BK = 64 / sizeof(T) (16 floats,
// 8 doubles), double-buffered shared tiles filled through registers (the next tile's global
// loads are in flight while the current one is multiplied; one barrier per step), and a small
// per-step table in shared memory that turns each reduction index of the step into offsets and
// window displacements once, so the gather needs no division per element (and for float the
// table itself is filled without one: ConvCrsDigits advances each slot's digits by BK). Padding, tails and
// out-of-range taps are zero-filled by predicates. BN is a template parameter (16, 32, 64) the
// host picks from the GEMM's column count, so thin layers (K = 16) do not waste 3/4 of a 64-wide
// tile. The loaders (ConvLoader: one operand gathered through the table's window displacements,
// the other read through its offsets), the table entries and the double-buffered step loop
// (conv_gemm_steps) are written once, for these three kernels and for v4.
//
// Versions (llm.c dev/cuda style; the host picks one per call, gpuconv/backends/select.py):
//   conv2d_forward
//     v1  one thread per output element, direct loops over (c, r, s). Simplest correct.
//     v2  shared-memory tiled implicit GEMM described above. DEFAULT: expected fastest for the
//         3x3 layers with >= 16 channels (compute-bound), not yet measured on a GPU. For float
//         layers of more than 32 output channels per group with enough rows (the host's rule,
//         WIDE_TILE_MIN_BLOCKS), a wide tile: 8 x 8 outputs per thread, a 256 x 64 block tile,
//         a reduction step of 8, four gc_vec4 fragment loads per 64 FMAs instead of two per 16;
//         64 accumulators need more than 128 registers, so it is compiled for one resident
//         block per SM.
//     v3  direct convolution, one output pixel per thread for 8 output channels at once, the
//         weights of those channels staged in shared memory (read as broadcasts). For the 1- and
//         3-channel stems, where the GEMM reduction (C*R*S = 25..27) is shorter than two steps.
//     v4  the implicit GEMM of v2 on TF32 tensor cores (float only): 128 threads, a 64 x 64 tile,
//         BK = 16, each warp a 32 x 32 sub-tile of mma.sync m16n8k8 TF32 fragments with fp32
//         accumulators; operands rounded to TF32 (cvt.rna) when stored to shared memory. Lower
//         precision (TF32 keeps 10 mantissa bits: about 1e-3 relative), not default, not yet
//         measured on a GPU. Each row group of its B tile is shifted into the row padding (see the
//         kernel) so the loader's column-at-a-time stores are free of bank conflicts.
//         The MMA instruction sits behind #ifndef GPUCONV_EMU; the emulator
//         runs a shuffle twin with the same fragment layout (gc_mma_tf32_m16n8k8), so the CPU
//         tests prove the kernel's fragment loads and stores, not the instruction itself.
//   conv2d_backward_data
//     v1  one thread per input cell; gathers every (k, r, s) whose window covers it, the output
//         position (h + pad - r*dil) / stride taken only when the division is exact. No atomics.
//     v2  the same gather as a tiled implicit GEMM (dy gathered through the stride-divisibility
//         predicate, weights read transposed). At stride 2, 3/4 of its multiply-adds are on zeros.
//     v3  phase decomposition: the input cells of one stride phase (h mod stride_h, w mod stride_w)
//         are a dense stride-1 implicit GEMM over only the taps that reach that phase, all phases
//         in one launch (blockIdx.z); the v2 tile and step loop, the table filled without
//         divisions, a 32-bit mask of valid taps per row (TAP_MASK, up to 32 taps per phase),
//         and an epilogue staged in shared memory for coalesced stores. Stride 1 is one phase.
//         DEFAULT: predicted faster than v2 on every suite layer (not yet measured on a GPU).
//     v4  v2's GEMM on TF32 tensor cores with forward v4's block and fragments (float only; lower
//         precision, about 1e-3 relative; not default, not yet measured on a GPU).
//   conv2d_backward_filter
//     v1  one thread per weight element, sequential loop over N*P*Q. Deterministic, slow when
//         N*P*Q is large.
//     v2  implicit GEMM with the N*P*Q reduction split over `splits` blocks (a count the host
//         derives from the sizes only), each writing its partial tile to a workspace, then
//         conv2d_sum_splits adds the partials in split order. Bitwise reproducible.
//     v3  the GEMM with its lanes along the reduction m = (n, p, q) (dy and x loads coalesce), a
//         BM x BN tile sized from K and C*R*S (16..64 each; a small tile is computed by several
//         slices of the block, each over part of every step, added in slice order), the bias
//         gradient as one more column of ones (conv.backward gets dw and db from one launch), and a
//         fixed split of m whose partials conv2d_backward_filter_v3_sum adds in a fixed order,
//         reading each once, coalesced. DEFAULT: predicted faster than v2 on every layer of the
//         small-cnn suite (gpuconv profile), not yet measured on a GPU.
//     v4  v2's split GEMM on TF32 tensor cores with forward v4's block and fragments (float only;
//         lower precision; not default, not yet measured on a GPU). Reproducible as v2.
//   conv2d_backward_bias
//     v1  one thread per output channel, sequential sum.
//     v2  two stages: blocks sum a chunk of one channel (strided loads, warp shuffles, then the
//         per-warp sums in warp order), conv2d_sum_splits adds the chunks in order. DEFAULT.
// No kernel uses float atomics: every result is the same bits on every run.
//
// Fused epilogues (every version; runtime flags, not copies of the kernels):
//   forward        `epilogue` = GC_CONV_EPI_BIAS | GC_CONV_EPI_RESIDUAL | GC_CONV_EPI_RELU (values
//                  from the host's DEFINES): y = relu(acc + bias[k] + residual[y offset]), each term
//                  by its flag and added in that order, as each value is stored (conv_epilogue). The
//                  order is that of the unfused conv2d, add and relu kernels, so the fused output has
//                  their bits. v2 stores (and reads the residual) as gc_vec4 when P*Q % 4 == 0 and
//                  the residual is vector-aligned (a contiguous view may not be), else one value at
//                  a time. v1 adds the bias first (its own order), then the rest.
//   backward-data  `through_relu`: relu_y (of x's shape) is the output of a ReLU that x is, and dx
//                  is stored as the gradient at that ReLU's input, relu_y > 0 ? dx : 0
//                  (gc_relu_backward), instead of a relu_backward pass over dx. Used for the second
//                  conv of conv -> ReLU -> conv, whose input only it reads.
#include "common.cuh"
#include "conv_gemm.cuh"

// The geometry every conv kernel takes, in this order (the host packs it once per geometry).
#define GC_CONV_GEOMETRY_PARAMS                                                                \
    int N, int C, int H, int W, int K, int R, int S, int P, int Q, int stride_h, int stride_w, \
        int pad_h, int pad_w, int dil_h, int dil_w, int groups

// ============================================================================================
// v1 kernels: one thread per output element
// ============================================================================================

template <typename T>
__global__ void __launch_bounds__(GC_CONV_THREADS, GC_CONV_MIN_BLOCKS)
conv2d_forward_v1(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                  const T* __restrict__ residual, T* __restrict__ y, int epilogue,
                  GC_CONV_GEOMETRY_PARAMS) {
    const int Cg = C / groups, Kg = K / groups;
    const int total = N * K * P * Q;
    GC_GRID_STRIDE_LOOP(idx, total) {
        int i = (int)idx;
        const int q = i % Q; i /= Q;
        const int p = i % P; i /= P;
        const int k = i % K;
        const int n = i / K;
        const int c0 = (k / Kg) * Cg;
        const int h0 = p * stride_h - pad_h, w0 = q * stride_w - pad_w;
        const T* xn = x + (n * C + c0) * H * W;
        const T* wk = w + k * Cg * R * S;
        T acc = (epilogue & GC_CONV_EPI_BIAS) ? bias[k] : T(0);  // the bias first: v1's own order
        for (int c = 0; c < Cg; ++c) {
            for (int r = 0; r < R; ++r) {
                const int h = h0 + r * dil_h;
                if (h < 0 || h >= H) continue;
                for (int s = 0; s < S; ++s) {
                    const int ww = w0 + s * dil_w;
                    if (ww < 0 || ww >= W) continue;
                    acc += xn[(c * H + h) * W + ww] * wk[(c * R + r) * S + s];
                }
            }
        }
        y[idx] = conv_epilogue(acc, T(0), (epilogue & GC_CONV_EPI_RESIDUAL) ? residual[idx] : T(0),
                               epilogue & ~GC_CONV_EPI_BIAS);
    }
}

template <typename T>
__global__ void __launch_bounds__(GC_CONV_THREADS, GC_CONV_MIN_BLOCKS)
conv2d_backward_data_v1(const T* __restrict__ dy, const T* __restrict__ w, const T* __restrict__ relu_y,
                        T* __restrict__ dx, int through_relu,
                        GC_CONV_GEOMETRY_PARAMS) {
    const int Cg = C / groups, Kg = K / groups;
    const int total = N * C * H * W;
    GC_GRID_STRIDE_LOOP(idx, total) {
        int i = (int)idx;
        const int ww = i % W; i /= W;
        const int h = i % H; i /= H;
        const int c = i % C;
        const int n = i / C;
        const int g = c / Cg, cl = c - g * Cg;
        T acc = T(0);
        for (int kl = 0; kl < Kg; ++kl) {
            const int k = g * Kg + kl;
            const T* dyk = dy + (n * K + k) * P * Q;
            const T* wk = w + (k * Cg + cl) * R * S;
            for (int r = 0; r < R; ++r) {
                const int hp = h + pad_h - r * dil_h;
                if (hp < 0 || hp % stride_h != 0) continue;
                const int p = hp / stride_h;
                if (p >= P) continue;
                for (int s = 0; s < S; ++s) {
                    const int wq = ww + pad_w - s * dil_w;
                    if (wq < 0 || wq % stride_w != 0) continue;
                    const int q = wq / stride_w;
                    if (q >= Q) continue;
                    acc += dyk[p * Q + q] * wk[r * S + s];
                }
            }
        }
        dx[idx] = through_relu ? gc_relu_backward(acc, relu_y[idx]) : acc;
    }
}

template <typename T>
__global__ void __launch_bounds__(GC_CONV_THREADS, GC_CONV_MIN_BLOCKS)
conv2d_backward_filter_v1(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dw,
                          GC_CONV_GEOMETRY_PARAMS) {
    const int Cg = C / groups, Kg = K / groups;
    const int total = K * Cg * R * S;
    GC_GRID_STRIDE_LOOP(idx, total) {
        int i = (int)idx;
        const int s = i % S; i /= S;
        const int r = i % R; i /= R;
        const int cl = i % Cg;
        const int k = i / Cg;
        const int c = (k / Kg) * Cg + cl;
        T acc = T(0);
        for (int n = 0; n < N; ++n) {
            const T* xc = x + (n * C + c) * H * W;
            const T* dyk = dy + (n * K + k) * P * Q;
            for (int p = 0; p < P; ++p) {
                const int h = p * stride_h - pad_h + r * dil_h;
                if (h < 0 || h >= H) continue;
                for (int q = 0; q < Q; ++q) {
                    const int ww = q * stride_w - pad_w + s * dil_w;
                    if (ww < 0 || ww >= W) continue;
                    acc += dyk[p * Q + q] * xc[h * W + ww];
                }
            }
        }
        dw[idx] = acc;
    }
}

template <typename T>
__global__ void __launch_bounds__(GC_CONV_THREADS, GC_CONV_MIN_BLOCKS)
conv2d_backward_bias_v1(const T* __restrict__ dy, T* __restrict__ db, int N, int K, int PQ) {
    GC_GRID_STRIDE_LOOP(k, K) {
        T acc = T(0);
        for (int n = 0; n < N; ++n) {
            const T* dyk = dy + (n * K + (int)k) * PQ;
            for (int i = 0; i < PQ; ++i) acc += dyk[i];
        }
        db[k] = acc;
    }
}

// ============================================================================================
// conv2d_forward_v2: implicit GEMM, rows m = (n, p, q), columns k of the group, reduction (c, r, s)
// ============================================================================================

// TT: the side of each thread's register tile, 4 (a BM x BN = 4096 tile) or 8 (16384: 256 x 64 for
// the wide layers, float only: 64 accumulators).
template <typename T, int BN, int TT>
__global__ void __launch_bounds__(GC_CONV_THREADS, TT == 4 ? GC_CONV_MIN_BLOCKS : 1)
conv2d_forward_v2(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                  const T* __restrict__ residual, T* __restrict__ y, int epilogue,
                  GC_CONV_GEOMETRY_PARAMS) {
    using Tl = ConvTile<T, BN, TT>;
    constexpr int BM = Tl::BM, BK = Tl::BK;
    alignas(gc_vec4<T>) __shared__ T As[2][BK][BM + Tl::PAD];
    alignas(gc_vec4<T>) __shared__ T Bs[2][BK][BN + Tl::PAD];
    __shared__ ConvIdx tbl[2][BK];

    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S, CRS = Cg * RS;
    const int M = N * PQ;
    const int t = threadIdx.x;
    int tm, tn;
    Tl::thread_tile(t, tm, tn);
    const int m0 = blockIdx.x * BM;
    const int n_ktiles = (Kg + BN - 1) / BN;

    // A: im2col(x) gathered for output row m0 + t % BM; B: the weights, k-major.
    const int am = m0 + t % BM;
    ConvLoader<T, Tl::THREADS, BK, BM, BN> ld(t);
    ld.init(conv_out_window(am < M, am, PQ, Q, C, K, HW, W, stride_h, stride_w, pad_h, pad_w));

    for (int yb = blockIdx.y; yb < groups * n_ktiles; yb += gridDim.y) {
        const int g = yb / n_ktiles;
        const int k0 = (yb - g * n_ktiles) * BN;
        const T* __restrict__ xg = x + g * Cg * HW;
        const T* __restrict__ wg = w + g * Kg * CRS;
        T acc[TT][TT];
        conv_zero(acc);

        // The entries by ConvCrsDigits for float; the double kernels have no registers to spare.
        conv_forward_steps<BK, sizeof(T) == 4>(
            tbl, ld, xg, wg, k0, Kg, CRS, RS, S, H, W, dil_h, dil_w,
            [&](int buf) { ld.store(As[buf], Bs[buf]); },
            [&](int buf) { Tl::multiply(As[buf], Bs[buf], acc, tm, tn); });

        const bool has_residual = epilogue & GC_CONV_EPI_RESIDUAL;
#pragma unroll
        for (int i4 = 0; i4 < TT; i4 += 4) {
            const int mq = m0 + Tl::row(tm, i4);  // the thread's rows mq .. mq + 3 of this block
            if (PQ % 4 == 0 && (!has_residual || conv_vec4_aligned(residual))) {
                // The four rows are consecutive positions of one image and 4-aligned: one vector
                // store (and residual load) per output channel, and the lanes of a warp along the
                // rows write contiguous 16-byte pieces (a scalar store per row would leave
                // 4-element gaps).
                if (mq < M) {
                    const int n = mq / PQ, pq = mq - n * PQ;
#pragma unroll
                    for (int j = 0; j < TT; ++j) {
                        const int k = k0 + Tl::col(tn, j);
                        if (k < Kg) {
                            const int kg = g * Kg + k;
                            const int off = (n * K + kg) * PQ + pq;
                            const T b = (epilogue & GC_CONV_EPI_BIAS) ? bias[kg] : T(0);
                            gc_vec4<T> r{}, v;
                            if (has_residual) r = *gc_vec4_at(&residual[off]);
#pragma unroll
                            for (int i = 0; i < 4; ++i)
                                v.v[i] = conv_epilogue(acc[i4 + i][j], b, r.v[i], epilogue);
                            *gc_vec4_at(&y[off]) = v;
                        }
                    }
                }
            } else {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int m = mq + i;
                    if (m >= M) continue;
                    const int n = m / PQ, pq = m - n * PQ;
#pragma unroll
                    for (int j = 0; j < TT; ++j) {
                        const int k = k0 + Tl::col(tn, j);
                        if (k < Kg)
                            conv_store_y(y, bias, residual, epilogue, acc[i4 + i][j], n, pq, g * Kg + k, K,
                                         PQ);
                    }
                }
            }
        }
    }
}

// ============================================================================================
// conv2d_forward_v3: direct, one output pixel x 8 output channels per thread, weights in smem
// ============================================================================================

// GC_CONV_V3_KB: output channels per thread; GC_CONV_V3_CHUNK: reduction indices (c, r, s)
// staged in shared memory per pass (both from the host's compile options).

template <typename T>
__global__ void __launch_bounds__(GC_CONV_THREADS, GC_CONV_MIN_BLOCKS)
conv2d_forward_v3(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                  const T* __restrict__ residual, T* __restrict__ y, int epilogue,
                  GC_CONV_GEOMETRY_PARAMS) {
    constexpr int KB = GC_CONV_V3_KB, CH = GC_CONV_V3_CHUNK, NT = GC_CONV_THREADS;
    alignas(gc_vec4<T>) __shared__ T Ws[CH][KB];

    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S, CRS = Cg * RS;
    const int M = N * PQ;
    const int t = threadIdx.x;
    const int m = blockIdx.x * NT + t;
    const int n_kb = (Kg + KB - 1) / KB;

    int h0 = 0, w0 = 0, xbase = 0, n = 0, pq = 0;
    if (m < M) {
        n = m / PQ;
        pq = m - n * PQ;
        const int p = pq / Q, q = pq - p * Q;
        h0 = p * stride_h - pad_h;
        w0 = q * stride_w - pad_w;
        xbase = n * C * HW;
    }

    for (int yb = blockIdx.y; yb < groups * n_kb; yb += gridDim.y) {
        const int g = yb / n_kb;
        const int k0 = (yb - g * n_kb) * KB;
        const T* __restrict__ xg = x + xbase + g * Cg * HW;
        const T* __restrict__ wg = w + (g * Kg + k0) * CRS;
        T acc[KB];
#pragma unroll
        for (int j = 0; j < KB; ++j) acc[j] = T(0);

        for (int start = 0; start < CRS; start += CH) {
            __syncthreads();  // the previous pass is done reading Ws
#pragma unroll
            for (int j = 0; j < CH * KB / NT; ++j) {
                const int idx = t + j * NT;
                const int i = idx % CH, kb = idx / CH;
                const int red = start + i;
                Ws[i][kb] = (red < CRS && k0 + kb < Kg) ? wg[kb * CRS + red] : T(0);
            }
            __syncthreads();
            if (m < M) {
                const int len = CRS - start < CH ? CRS - start : CH;
                int c = start / RS, rs = start - c * RS;
                int r = rs / S, s = rs - r * S;
                for (int i = 0; i < len; ++i) {
                    const int h = h0 + r * dil_h, ww = w0 + s * dil_w;
                    const T v = ((unsigned)h < (unsigned)H && (unsigned)ww < (unsigned)W)
                                    ? xg[(c * H + h) * W + ww] : T(0);
                    const gc_vec4<T> w_lo = *gc_vec4_at(&Ws[i][0]);
                    const gc_vec4<T> w_hi = *gc_vec4_at(&Ws[i][4]);
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        acc[j] += v * w_lo.v[j];
                        acc[4 + j] += v * w_hi.v[j];
                    }
                    if (++s == S) {
                        s = 0;
                        if (++r == R) {
                            r = 0;
                            ++c;
                        }
                    }
                }
            }
        }
        if (m < M) {
#pragma unroll
            for (int j = 0; j < KB; ++j) {
                const int k = k0 + j;
                if (k < Kg) conv_store_y(y, bias, residual, epilogue, acc[j], n, pq, g * Kg + k, K, PQ);
            }
        }
    }
}

// ============================================================================================
// TF32 tensor-core helpers (conv2d_forward_v4): operand rounding and one warp-wide m16n8k8 MMA
// ============================================================================================
//
// Fragment layout of mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (PTX ISA, "Matrix
// fragments for mma.m16n8k8", .tf32 variant), with g = lane >> 2 (groupID) and t = lane % 4
// (threadID_in_group); (row, col) of the 16x8x8 product D[16][8] = A[16][8] * B[8][8] + C[16][8]:
//     A (row-major):  a0 = A[g][t]    a1 = A[g+8][t]    a2 = A[g][t+4]    a3 = A[g+8][t+4]
//     B (column):     b0 = B[t][g]    b1 = B[t+4][g]
//     C, D:           c0 = C[g][2t]   c1 = C[g][2t+1]   c2 = C[g+8][2t]   c3 = C[g+8][2t+1]
// All 32 lanes of the warp must call gc_mma_tf32_m16n8k8 together (converged).

// x rounded to TF32 (10 explicit mantissa bits, low 13 bits zero) to nearest, ties away from zero,
// as cvt.rna.tf32.f32; NaN and infinity are returned unchanged, a value that rounds past the
// largest TF32 number becomes infinity. Returned as the bits of a float.
__device__ __forceinline__ unsigned gc_tf32_bits(float x) {
#ifndef GPUCONV_EMU
    unsigned u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
    return u;
#else
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;  // NaN or infinity
    return (u + 0x1000u) & 0xffffe000u;               // add half a TF32 ulp to |x|, truncate
#endif
}

// d = a * b + d for one m16n8k8 tile (TF32 operands as bits, fp32 accumulation), layout above.
__device__ __forceinline__ void gc_mma_tf32_m16n8k8(float (&d)[4], const unsigned (&a)[4],
                                                    const unsigned (&b)[2]) {
#ifndef GPUCONV_EMU
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    // Portable twin with the same fragment semantics: each lane gathers rows g and g+8 of A and
    // columns 2t and 2t+1 of B from the lanes that own them, reads each operand as the tensor core
    // does (its low 13 mantissa bits ignored: an operand not rounded by cvt.rna first is
    // truncated), and adds the eight products to its four accumulators in k order (a product of
    // two TF32 numbers is exact in fp32, so only the additions round).
    const int lane = threadIdx.x % GC_WARP_SIZE;
    const int g = lane >> 2, t = lane & 3;
    float ar[2][8], bc[2][8];  // ar[row g / g+8][k], bc[col 2t / 2t+1][k]
    auto op = [](unsigned v) {
        const bool nan = (v & 0x7f800000u) == 0x7f800000u && (v & 0x007fffffu);
        return __uint_as_float(nan ? v : v & 0xffffe000u);
    };
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        const int a_src = g * 4 + kk;  // owns A[g][kk], A[g+8][kk], A[g][kk+4], A[g+8][kk+4]
        ar[0][kk] = op(__shfl_sync(0xffffffffu, a[0], a_src));
        ar[1][kk] = op(__shfl_sync(0xffffffffu, a[1], a_src));
        ar[0][kk + 4] = op(__shfl_sync(0xffffffffu, a[2], a_src));
        ar[1][kk + 4] = op(__shfl_sync(0xffffffffu, a[3], a_src));
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int b_src = (2 * t + j) * 4 + kk;  // owns B[kk][2t+j], B[kk+4][2t+j]
            bc[j][kk] = op(__shfl_sync(0xffffffffu, b[0], b_src));
            bc[j][kk + 4] = op(__shfl_sync(0xffffffffu, b[1], b_src));
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float acc = d[i];
#pragma unroll
        for (int k = 0; k < 8; ++k) acc += ar[i >> 1][k] * bc[i & 1][k];
        d[i] = acc;
    }
#endif
}

// The B-tile row shift of the TF32 kernels whose B tile the dense loader stores (forward v4,
// backward-data v4). The loader stores B a column at a time: the 16 lanes of one column write rows
// 0..15, at banks 8 * row + col (mod 32) with LD = 8 (mod 32), so rows 4 apart would share a bank
// (4-way conflict). Row kk is shifted right by 2 * (kk / 4) columns (into its padding: 64 + 6 <=
// LD): the two columns a warp writes then fall in 8 distinct banks per row group, 32 in all. The
// fragment loads read rows k8 + ft and k8 + ft + 4 (ft < 4), whose shifts are k8 / 2 and k8 / 2 + 2
// whatever ft is: constants, folded into the addresses, and the 8 columns of each row stay in 8
// distinct banks. (An XOR swizzle cost ~10 instructions per step for its per-element addresses.)
struct ConvTf32BShift {
    __device__ __forceinline__ int operator()(int kk, int col) const { return col + 2 * ((kk >> 2) & 3); }
};

// TF32 rounding of a value stored into a shared tile, as the tile loaders' conversion.
struct ConvTf32Round {
    __device__ __forceinline__ float operator()(float v) const { return __uint_as_float(gc_tf32_bits(v)); }
};

// The warp's 32 x 32 sub-tile of the TF32 kernels' 64 x 64 tile (4 warps): warp w owns rows
// wm = 32 (w % 2), columns wn = 32 (w / 2).
struct ConvTf32Warp {
    int wm, wn;
    __device__ __forceinline__ explicit ConvTf32Warp(int t) {
        const int warp = t / GC_WARP_SIZE;
        wm = 32 * (warp % 2);
        wn = 32 * (warp / 2);
    }
};

// The lane's accumulators of a TF32 tile, in the m16n8 layout above: accumulator e of fragment
// (i, j) is row 16 i + fg + 8 (e >> 1), column 8 j + 2 ft + (e & 1) of the warp's sub-tile. Rows
// and columns are counted from the tile's first (wm, wn included); those at or past rows, cols (the
// matrix's edge) are skipped. For each of the lane's rows, at_row(row) is called once and returns
// put(col, value), then called for the lane's values in that row. The epilogues of the TF32 kernels.
template <typename AtRow>
__device__ __forceinline__ void conv_tf32_each_acc(const float (&acc)[2][4][4], const ConvTf32Warp& wt,
                                                   int rows, int cols, AtRow at_row) {
    const int lane = threadIdx.x % GC_WARP_SIZE;
    const int fg = lane >> 2, ft = lane & 3;  // fragment groupID, threadID_in_group
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = wt.wm + 16 * i + fg + 8 * half;
            if (row >= rows) continue;
            auto put = at_row(row);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int col = wt.wn + 8 * j + 2 * ft + e;
                    if (col < cols) put(col, acc[i][j][2 * half + e]);
                }
            }
        }
    }
}

// One reduction step of a TF32 tile (forward v4, backward-data v4, backward-filter v4): the warp's
// 32 x 32 sub-tile wt of the 64 x 64 tile, 2 x 4 m16n8 fragments, acc[i][j] the fragment at rows
// wt.wm + 16 i, columns wt.wn + 8 j. As[k][row] and Bs[k][column] hold TF32-rounded
// operands, k-major; with B_SHIFT, row kk of Bs stored at columns ConvTf32BShift()(kk, column).
// All lanes of the warp call it together.
template <int BK, int LD, bool B_SHIFT>
__device__ __forceinline__ void conv_tf32_multiply(const float (*__restrict__ As)[LD],
                                                   const float (*__restrict__ Bs)[LD], float (&acc)[2][4][4],
                                                   const ConvTf32Warp& wt) {
    static_assert(!B_SHIFT || (BK == 16 && GC_CONV_V4_TILE + 6 <= LD),
                  "the B loads below spell the shift out for k8 = 0 and 8");
    const int lane = threadIdx.x % GC_WARP_SIZE;
    const int fg = lane >> 2, ft = lane & 3;  // fragment groupID, threadID_in_group
#pragma unroll
    for (int k8 = 0; k8 < BK; k8 += 8) {
        unsigned af[2][4], bf[4][2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = wt.wm + 16 * i + fg;
            af[i][0] = __float_as_uint(As[k8 + ft][r]);
            af[i][1] = __float_as_uint(As[k8 + ft][r + 8]);
            af[i][2] = __float_as_uint(As[k8 + ft + 4][r]);
            af[i][3] = __float_as_uint(As[k8 + ft + 4][r + 8]);
        }
        const int shift0 = B_SHIFT ? k8 / 2 : 0, shift1 = B_SHIFT ? k8 / 2 + 2 : 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = wt.wn + 8 * j + fg;
            bf[j][0] = __float_as_uint(Bs[k8 + ft][c + shift0]);      // ConvTf32BShift()(k8 + ft, c)
            bf[j][1] = __float_as_uint(Bs[k8 + ft + 4][c + shift1]);  // ConvTf32BShift()(k8 + ft + 4, c)
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) gc_mma_tf32_m16n8k8(acc[i][j], af[i], bf[j]);
        }
    }
}

// ============================================================================================
// conv2d_forward_v4: the implicit GEMM of v2 on TF32 tensor cores (float only)
// ============================================================================================
//
// 128 threads (4 warps), a 64 x 64 output tile, reduction step BK = 16 (two k8 MMA steps). Warp w
// owns the 32 x 32 sub-tile at rows 32 * (w % 2), columns 32 * (w / 2): 2 x 4 m16n8 fragments, 32
// fp32 accumulators per lane. The shared tiles hold TF32-rounded values (rounded once, when
// stored), k-major with rows padded to 72: a fragment load reads (k0 + t) * 72 + g + const, which
// falls in 32 different banks for the 32 lanes. Loading (ConvLoader), the index table, double
// buffering (conv_gemm_steps) and the epilogue are those of v2.

// GC_CONV_V4_THREADS, GC_CONV_V4_MIN_BLOCKS and GC_CONV_V4_TILE come from the host's compile options.

template <typename T>
__global__ void __launch_bounds__(GC_CONV_V4_THREADS, GC_CONV_V4_MIN_BLOCKS)
conv2d_forward_v4(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                  const T* __restrict__ residual, T* __restrict__ y, int epilogue,
                  GC_CONV_GEOMETRY_PARAMS) {
    static_assert(sizeof(T) == 4, "conv2d_forward_v4 is float only (TF32 tensor cores)");
    constexpr int BM = GC_CONV_V4_TILE, BN = GC_CONV_V4_TILE, BK = 16, LD = GC_CONV_V4_TILE + 8;
    __shared__ float As[2][BK][LD];
    __shared__ float Bs[2][BK][LD];
    __shared__ ConvIdx tbl[2][BK];

    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S, CRS = Cg * RS;
    const int M = N * PQ;
    const int t = threadIdx.x;
    const ConvTf32Warp wt(t);
    const int m0 = blockIdx.x * BM;
    const int n_ktiles = (Kg + BN - 1) / BN;

    const int am = m0 + t % BM;
    ConvLoader<float, GC_CONV_V4_THREADS, BK, BM, BN> ld(t);
    ld.init(conv_out_window(am < M, am, PQ, Q, C, K, HW, W, stride_h, stride_w, pad_h, pad_w));
    // B row groups shifted into the row padding: conflict-free stores (ConvTf32BShift).

    for (int yb = blockIdx.y; yb < groups * n_ktiles; yb += gridDim.y) {
        const int g = yb / n_ktiles;
        const int k0 = (yb - g * n_ktiles) * BN;
        const T* __restrict__ xg = x + g * Cg * HW;
        const T* __restrict__ wg = w + g * Kg * CRS;
        float acc[2][4][4];
        conv_zero(acc);

        // The entries by division: with ConvCrsDigits ptxas puts the loads after the multiply.
        conv_forward_steps<BK, false>(tbl, ld, xg, wg, k0, Kg, CRS, RS, S, H, W, dil_h, dil_w,
                                      [&](int buf) { ld.store(As[buf], Bs[buf], ConvTf32Round(), ConvTf32BShift()); },
                                      [&](int buf) { conv_tf32_multiply<BK, LD, true>(As[buf], Bs[buf], acc, wt); });

        conv_tf32_each_acc(acc, wt, M - m0, Kg - k0, [&](int row) {
            const int m = m0 + row;
            const int n = m / PQ, pq = m - n * PQ;
            return [&, n, pq](int col, float v) {
                conv_store_y(y, bias, residual, epilogue, v, n, pq, g * Kg + k0 + col, K, PQ);
            };
        });
    }
}

// ============================================================================================
// conv2d_backward_data_v2: implicit GEMM, rows m = (n, h, w), columns c of the group,
// reduction (k, r, s); dy[n][k][p][q] taken where h + pad_h - r*dil_h = p * stride_h (same for w)
// ============================================================================================

// Index-table entry of reduction index (k, r, s) when inside the reduction: a = k*P*Q,
// b = r*dil_h, c = s*dil_w, d = k*Cg*R*S + r*S + s (the weight offset without the c term).
__device__ __forceinline__ ConvIdx conv_krs_idx(bool inside, int k, int r, int s, int S, int PQ, int CgRS,
                                                int dil_h, int dil_w) {
    ConvIdx e;
    if (inside) {
        e.a = k * PQ;
        e.b = r * dil_h;
        e.c = s * dil_w;
        e.d = k * CgRS + r * S + s;
    } else {
        e.a = 0;
        e.b = GC_CONV_OFF_RANGE;
        e.c = 0;
        e.d = -1;
    }
    return e;
}

// conv_krs_idx of reduction index red of a (Kg, R, S) reduction of KRS indices.
__device__ __forceinline__ ConvIdx conv_krs_entry(int red, int KRS, int RS, int S, int PQ, int CgRS,
                                                  int dil_h, int dil_w) {
    const int k = red / RS, rs = red - k * RS;
    const int r = rs / S;
    return conv_krs_idx(red < KRS, k, r, rs - r * S, S, PQ, CgRS, dil_h, dil_w);
}

// Output position o with o * stride == i, when there is one in [0, O).
__device__ __forceinline__ bool conv_exact_div(int i, int stride, int O, int* o) {
    if (i < 0) return false;
    const int v = i / stride;
    *o = v;
    return v * stride == i && v < O;
}

template <typename T, int BN>
__global__ void __launch_bounds__(GC_CONV_THREADS, GC_CONV_MIN_BLOCKS)
conv2d_backward_data_v2(const T* __restrict__ dy, const T* __restrict__ w, const T* __restrict__ relu_y,
                        T* __restrict__ dx, int through_relu,
                        GC_CONV_GEOMETRY_PARAMS) {
    using Tl = ConvTile<T, BN>;
    constexpr int BM = Tl::BM, BK = Tl::BK;
    alignas(gc_vec4<T>) __shared__ T As[2][BK][BM + Tl::PAD];
    alignas(gc_vec4<T>) __shared__ T Bs[2][BK][BN + Tl::PAD];
    __shared__ ConvIdx tbl[2][BK];

    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S, CgRS = Cg * RS, KRS = Kg * RS;
    const int M = N * HW;
    const int t = threadIdx.x;
    int tm, tn;
    Tl::thread_tile(t, tm, tn);
    const int m0 = blockIdx.x * BM;
    const int n_ctiles = (Cg + BN - 1) / BN;
    const int n_steps = (KRS + BK - 1) / BK;

    // A: col(dy) gathered here (below) for input cell m0 + t % BM, as a position in the padded
    // input; B: the weights, k-major.
    using Loader = ConvLoader<T, Tl::THREADS, BK, BM, BN>;
    Loader ld(t);
    const bool unit_stride = stride_h == 1 && stride_w == 1;
    const int am = m0 + t % BM, ak = t / BM;
    int a_hp = -GC_CONV_OFF_RANGE, a_wp = 0, a_base = 0;
    if (am < M) {
        const int n = am / HW, hw = am - n * HW;
        const int h = hw / W;
        a_hp = h + pad_h;
        a_wp = hw - h * W + pad_w;
        a_base = n * K * PQ;
    }

    for (int yb = blockIdx.y; yb < groups * n_ctiles; yb += gridDim.y) {
        const int g = yb / n_ctiles;
        const int c0 = (yb - g * n_ctiles) * BN;
        const T* __restrict__ dyg = dy + g * Kg * PQ;
        const T* __restrict__ wg = w + g * Kg * CgRS;
        T acc[4][4];
        conv_zero(acc);

        auto load = [&](int buf) {
            if (unit_stride) {
#pragma unroll
                for (int j = 0; j < Loader::G_PER; ++j) {
                    const ConvIdx e = tbl[buf][ak + j * Loader::G_STEP];
                    const int p = a_hp - e.b, q = a_wp - e.c;
                    ld.g[j] = ((unsigned)p < (unsigned)P && (unsigned)q < (unsigned)Q)
                                  ? dyg[a_base + e.a + p * Q + q] : T(0);
                }
            } else {
#pragma unroll
                for (int j = 0; j < Loader::G_PER; ++j) {
                    const ConvIdx e = tbl[buf][ak + j * Loader::G_STEP];
                    int p, q;
                    const bool ok = conv_exact_div(a_hp - e.b, stride_h, P, &p) &&
                                    conv_exact_div(a_wp - e.c, stride_w, Q, &q);
                    ld.g[j] = ok ? dyg[a_base + e.a + p * Q + q] : T(0);
                }
            }
            ld.load_dense(tbl[buf], wg, c0, Cg, RS);
        };
        ConvCrsDigits dg(t, BK, RS, S);  // (k, r, s) of the index this thread's next entry is for
        conv_gemm_steps<BK>(
            tbl, n_steps,
            [&](int red) {
                if (sizeof(T) != 4) return conv_krs_entry(red, KRS, RS, S, PQ, CgRS, dil_h, dil_w);
                const ConvIdx e = conv_krs_idx(red < KRS, dg.c, dg.r, dg.s, S, PQ, CgRS, dil_h, dil_w);
                dg.advance(R, S);
                return e;
            },
            load,
            [&](int buf) { ld.store(As[buf], Bs[buf]); },
            [&](int buf) {
                conv_tile_multiply<T, BK, BM + Tl::PAD, BN + Tl::PAD>(As[buf], Bs[buf], acc, tm, tn);
            });

#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + 4 * tm + i;
            if (m >= M) continue;
            const int n = m / HW, hw = m - n * HW;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int c = c0 + 4 * tn + j;
                if (c >= Cg) continue;
                const int off = (n * C + g * Cg + c) * HW + hw;
                dx[off] = through_relu ? gc_relu_backward(acc[i][j], relu_y[off]) : acc[i][j];
            }
        }
    }
}

// ============================================================================================
// conv2d_backward_data_v3: phase decomposition. For strides (sh, sw) the input cells split into
// sh * sw phases (h mod sh, w mod sw) = (ph, pw). Tap (r, s) reaches the cells of phase (ph, pw)
// exactly when ph + pad_h - r*dil_h and pw + pad_w - s*dil_w are multiples of sh and sw, and then
// cell (ph + i*sh, pw + j*sw) reads dy at (i + o_r, j + o_s) with o_r = (ph + pad_h - r*dil_h) / sh,
// o_s likewise: each phase is a dense stride-1 implicit GEMM with rows m = (n, i, j), columns c
// of the group and reduction (k, taps of the phase). No divisibility test and no multiply by a
// structural zero is left. blockIdx.z walks the phases (one launch); a phase no tap reaches
// writes zeros. Stride 1 is one phase, the whole image.
// ============================================================================================

// The taps of one axis that reach phase ph: the r in [0, R) with (ph + pad - r*dil) a multiple
// of stride form r0, r0 + period, ... (count of them); o0 = (ph + pad - r0*dil) / stride is the
// first one's dy displacement, and each next tap moves it by -step.
struct ConvPhaseTaps {
    int r0, count, period, o0, step;
};

__device__ __forceinline__ ConvPhaseTaps conv_phase_taps(int ph, int R, int stride, int pad, int dil) {
    int a = stride, b = dil;  // gcd(stride, dil)
    while (b != 0) {
        const int t = a % b;
        a = b;
        b = t;
    }
    ConvPhaseTaps tp;
    tp.period = stride / a;
    tp.step = dil / a;
    tp.r0 = -1;
    for (int r = 0; r < tp.period && r < R; ++r) {
        if ((ph + pad - r * dil) % stride == 0) {
            tp.r0 = r;
            break;
        }
    }
    if (tp.r0 < 0) {
        tp.r0 = 0;
        tp.count = 0;
        tp.o0 = 0;
    } else {
        tp.count = (R - tp.r0 + tp.period - 1) / tp.period;
        tp.o0 = (ph + pad - tp.r0 * dil) / stride;
    }
    return tp;
}

// Thread t < BK's walk over the reduction indices red = t, t + BK, t + 2 BK, ... of a phase, in
// the order conv_gemm_steps asks for them, red = (k, u, v) with u, v the phase's u-th row and v-th
// column tap: advanced by BK without a division. entry() is red's index-table entry: a = k*P*Q +
// o_r*Q + o_s (added to the row's dy offset n*K*P*Q + i*Q + j), d = k*Cg*R*S + r*S + s (the
// weight offset without the c term), and the tap's validity key: with TAP_MASK, b = the bit
// 1 << (u * count_w + v) of the tap in the row's mask of valid taps; else (b, c) = (o_r, o_s),
// added to the row's (i, j) and tested against [0, P) x [0, Q). Past the end of the reduction,
// an entry that reads zero (b = 0 with TAP_MASK).
struct ConvPhaseWalk {
    int k, u, v;     // the current index
    int dk, du, dv;  // BK as (k, u, v) steps

    __device__ __forceinline__ void start(int t, int BK, int Rc, int Sc) {
        const int T = Rc * Sc;
        dk = BK / T;
        du = (BK - dk * T) / Sc;
        dv = BK - dk * T - du * Sc;
        k = t / T;
        u = (t - k * T) / Sc;
        v = t - k * T - u * Sc;
    }

    template <bool TAP_MASK>
    __device__ __forceinline__ ConvIdx entry(int Kg, const ConvPhaseTaps& th, const ConvPhaseTaps& tw,
                                             int S, int PQ, int Q, int CgRS) {
        ConvIdx e;
        if (k < Kg) {
            e.b = th.o0 - u * th.step;
            e.c = tw.o0 - v * tw.step;
            // Unsigned: a tap outside dy can have |o_r| * Q past 2^31; a tap inside gives an
            // offset within dy, which the wrapped sum is then equal to.
            e.a = (int)((unsigned)k * PQ + (unsigned)e.b * Q + (unsigned)e.c);
            e.d = k * CgRS + (th.r0 + u * th.period) * S + tw.r0 + v * tw.period;
            if (TAP_MASK) e.b = (int)(1u << (u * tw.count + v));
        } else {
            e = conv_idx_outside();
            if (TAP_MASK) e.b = 0;
        }
        v += dv;
        u += du;
        if (v >= tw.count) {
            v -= tw.count;
            ++u;
        }
        if (u >= th.count) {
            u -= th.count;
            ++k;
        }
        k += dk;
        return e;
    }
};

// p, as a value the compiler cannot re-derive from the expression that computed it (asm on the
// GPU; the emulator needs no such hint).
template <typename T>
__device__ __forceinline__ const T* conv_opaque(const T* p) {
#ifndef GPUCONV_EMU
    asm("mov.b64 %0, %0;" : "+l"(p));
#endif
    return p;
}

// TAP_MASK: every phase has at most 32 taps (the host checks), and each thread tests a gathered
// element's tap against a 32-bit mask of the taps valid for its row, computed once per phase,
// instead of two window bounds per element. The double kernels are promised one resident block
// per SM, not GC_CONV_MIN_BLOCKS: within 128 registers ptxas spills some of them.
template <typename T, int BN, bool TAP_MASK>
__global__ void __launch_bounds__(GC_CONV_THREADS, sizeof(T) == 4 ? GC_CONV_MIN_BLOCKS : 1)
conv2d_backward_data_v3(const T* __restrict__ dy, const T* __restrict__ w, const T* __restrict__ relu_y,
                        T* __restrict__ dx, int through_relu,
                        GC_CONV_GEOMETRY_PARAMS) {
    using Tl = ConvTile<T, BN>;
    constexpr int NT = Tl::THREADS, BM = Tl::BM, BK = Tl::BK, LDA = BM + Tl::PAD;
    using Loader = ConvLoader<T, NT, BK, BM, BN>;
    alignas(gc_vec4<T>) __shared__ T As[2][BK][LDA];
    alignas(gc_vec4<T>) __shared__ T Bs[2][BK][BN + Tl::PAD];
    __shared__ ConvIdx tbl[2][BK];
    // The phase's taps and the table filler's walks live in shared memory, not in registers
    // across the step loop (ptxas would spill the double tiles on sm_80).
    __shared__ ConvPhaseTaps taps[2];
    __shared__ ConvPhaseWalk walks[BK];
    // The epilogue stages the output tile in As, CP columns at a time, as Cs[column][row].
    constexpr int CP = BN < 2 * BK ? BN : 2 * BK;
    static_assert(BN % CP == 0 && NT % BM == 0, "epilogue staging");
    T (*Cs)[LDA] = reinterpret_cast<T (*)[LDA]>(&As[0][0][0]);

    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, CgRS = Cg * R * S;
    const int t = threadIdx.x;
    int tm, tn;
    Tl::thread_tile(t, tm, tn);
    const int m0 = blockIdx.x * BM;
    const int n_ctiles = (Cg + BN - 1) / BN;
    // Phases that hold cells: (ph, pw) with ph < H and pw < W (a stride past the image size
    // leaves the others empty), at most H * W of them, so no int overflow.
    const int phases_w = stride_w < W ? stride_w : W;
    const int n_phases = (stride_h < H ? stride_h : H) * phases_w;
    const int ak = t / BM;  // the gathered rows' first reduction slot

    for (int z = blockIdx.z; z < n_phases; z += gridDim.z) {
        const int ph = z / phases_w, pw = z - ph * phases_w;
        const int Hp = (int)(((unsigned)(H - ph) + stride_h - 1) / stride_h);  // ph < H: no overflow
        const int Wp = (int)(((unsigned)(W - pw) + stride_w - 1) / stride_w);
        const int HWp = Hp * Wp, M = N * HWp;
        if (m0 >= M) continue;  // the phase has fewer rows than the largest one (uniform per block)
        const ConvPhaseTaps th = conv_phase_taps(ph, R, stride_h, pad_h, dil_h);
        const ConvPhaseTaps tw = conv_phase_taps(pw, S, stride_w, pad_w, dil_w);
        const int KT = Kg * th.count * tw.count;  // the phase's reduction length (0: no tap)

        // Row am = m0 + t % BM = (n, i, j) of the phase: A gathers dy from its offset
        // n*K*P*Q + i*Q + j, window origin (i, j) tested against P x Q; the epilogue writes
        // dx from its offset out (channel 0 of the group). B: the weights, k-major.
        Loader ld(t);
        const int am = m0 + t % BM;
        int out = 0;
        unsigned valid = 0;  // TAP_MASK: bit u * tw.count + v set when tap (u, v) is in dy for the row
        if (am < M) {
            const int n = am / HWp, ij = am - n * HWp;
            const int i = ij / Wp, j = ij - i * Wp;
            ld.init(ConvIdx{n * K * PQ + i * Q + j, i, j, 0});
            out = n * C * HW + (ph + i * stride_h) * W + pw + j * stride_w;
            if (TAP_MASK) {
                for (int u = 0; u < th.count; ++u) {
                    if ((unsigned)(i + th.o0 - u * th.step) >= (unsigned)P) continue;
                    for (int v = 0; v < tw.count; ++v) {
                        if ((unsigned)(j + tw.o0 - v * tw.step) < (unsigned)Q) valid |= 1u << (u * tw.count + v);
                    }
                }
            }
        }
        if (t == 0) {
            taps[0] = th;
            taps[1] = tw;
        }
        __syncthreads();  // taps is read by the table fillers t < BK

        for (int yb = blockIdx.y; yb < groups * n_ctiles; yb += gridDim.y) {
            const int g = yb / n_ctiles;
            const int c0 = (yb - g * n_ctiles) * BN;
            // TAP_MASK: row am's dy at k = 0, displacement (0, 0), each gathered element is
            // arow[e.a], one IMAD.WIDE. Held opaque, or the compiler re-derives it from dy per
            // element (a 64-bit add, two shifts and a reload of dy: five instructions instead of
            // one). The window variant gathers as the forward GEMM does (ConvLoader::gather): a
            // pointer held beside its two window coordinates would spill the double tiles.
            const T* __restrict__ dyg = dy + g * Kg * PQ;
            const T* __restrict__ arow = conv_opaque(dyg + ld.base);
            const T* __restrict__ wg = w + g * Kg * CgRS;
            T acc[4][4];
            conv_zero(acc);

            if (KT > 0 && t < BK) walks[t].start(t, BK, taps[0].count, taps[1].count);
            conv_gemm_steps<BK>(
                tbl, (KT + BK - 1) / BK,
                [&](int) { return walks[t].template entry<TAP_MASK>(Kg, taps[0], taps[1], S, PQ, Q, CgRS); },
                [&](int buf) {
                    if (TAP_MASK) {
#pragma unroll
                        for (int jj = 0; jj < Loader::G_PER; ++jj) {
                            const ConvIdx e = tbl[buf][ak + jj * Loader::G_STEP];
                            ld.g[jj] = (valid & (unsigned)e.b) != 0 ? __ldg(arow + e.a) : T(0);
                        }
                    } else {
                        ld.gather(tbl[buf], dyg, P, Q);
                    }
                    ld.load_dense(tbl[buf], wg, c0, Cg, R * S);
                },
                [&](int buf) { ld.store(As[buf], Bs[buf]); },
                [&](int buf) {
                    conv_tile_multiply<T, BK, LDA, BN + Tl::PAD>(As[buf], Bs[buf], acc, tm, tn);
                });

            // Epilogue through shared memory: the thread's 4 x 4 tile goes to Cs (conv_gemm_steps
            // ended on a barrier, As is free), then thread t writes row t % BM of CP / (NT / BM)
            // channels, so a warp's stores run along consecutive cells of one phase (stride
            // stride_w in dx) instead of 4 rows apart.
#pragma unroll
            for (int pass = 0; pass < BN / CP; ++pass) {
                if (4 * tn / CP == pass) {
#pragma unroll
                    for (int jc = 0; jc < 4; ++jc) {
                        gc_vec4<T> v;
#pragma unroll
                        for (int ir = 0; ir < 4; ++ir) v.v[ir] = acc[ir][jc];
                        *reinterpret_cast<gc_vec4<T>*>(&Cs[4 * tn + jc - pass * CP][4 * tm]) = v;
                    }
                }
                __syncthreads();
                if (am < M) {
#pragma unroll
                    for (int jc = ak; jc < CP; jc += NT / BM) {
                        const int c = c0 + pass * CP + jc;
                        if (c >= Cg) continue;
                        const int off = out + (g * Cg + c) * HW;
                        const T v = Cs[jc][t % BM];
                        dx[off] = through_relu ? gc_relu_backward(v, relu_y[off]) : v;
                    }
                }
                __syncthreads();  // Cs is read before the next pass or step loop writes As
            }
        }
    }
}

// ============================================================================================
// conv2d_backward_filter_v2: implicit GEMM, rows k of the group, columns red = (c, r, s),
// reduction over m = (n, p, q) in the chunk [split * chunk, (split + 1) * chunk) of blockIdx.z.
// Writes partial[split][k][red] (K x Cg*R*S per split); conv2d_sum_splits adds the splits.
// ============================================================================================

// The reduction rows [m_begin, m_end) of split blockIdx.z (chunks of `chunk` rows of the M = N*P*Q
// reduction, the last one shorter); returns its number of steps of BK rows.
template <int BK>
__device__ __forceinline__ int conv_split_rows(int M, int chunk, int& m_begin, int& m_end) {
    m_begin = blockIdx.z * chunk;
    m_end = M - m_begin < chunk ? M : m_begin + chunk;
    return m_end > m_begin ? (m_end - m_begin + BK - 1) / BK : 0;
}

template <typename T, int BM_ROWS>
__global__ void __launch_bounds__(GC_CONV_THREADS, GC_CONV_MIN_BLOCKS)
conv2d_backward_filter_v2(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ partial,
                          int chunk,
                          GC_CONV_GEOMETRY_PARAMS) {
    // Tile: BM_ROWS output channels x BN reduction columns; ConvTile is indexed by its columns.
    constexpr int BN = GC_CONV_TILE_AREA / BM_ROWS;
    using Tl = ConvTile<T, BN>;
    constexpr int BM = BM_ROWS, BK = Tl::BK;
    static_assert(Tl::BM == BM, "tile rows");
    alignas(gc_vec4<T>) __shared__ T As[2][BK][BM + Tl::PAD];
    alignas(gc_vec4<T>) __shared__ T Bs[2][BK][BN + Tl::PAD];
    __shared__ ConvIdx tbl[2][BK];

    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S, CRS = Cg * RS;
    const int M = N * PQ;
    const int t = threadIdx.x;
    int tm, tn;
    Tl::thread_tile(t, tm, tn);
    const int col0 = blockIdx.x * BN;
    const int n_ktiles = (Kg + BM - 1) / BM;
    int m_begin, m_end;
    const int n_steps = conv_split_rows<BK>(M, chunk, m_begin, m_end);

    // B: x gathered for weight column (c, r, s) = col0 + t % BN, its offset and window
    // displacements added to the window of each reduction row; A: dy, k-major.
    ConvLoader<T, Tl::THREADS, BK, BN, BM> ld(t);
    ld.init(conv_crs_entry(col0 + t % BN, CRS, RS, S, HW, W, dil_h, dil_w));

    for (int yb = blockIdx.y; yb < groups * n_ktiles; yb += gridDim.y) {
        const int g = yb / n_ktiles;
        const int k0 = (yb - g * n_ktiles) * BM;
        const T* __restrict__ dyg = dy + g * Kg * PQ;
        const T* __restrict__ xg = x + g * Cg * HW;
        T acc[4][4];
        conv_zero(acc);

        // Table entry of reduction row m: the window of output row m (x offset and origin) and its
        // dy offset. Compared as an offset into the chunk: m_begin + step * BK + t itself can pass
        // 2^31 - 1 in the last step when N*P*Q is within BK of it.
        // For float the window comes from the digits (n, p, q) of m, advanced without a division.
        ConvCrsDigits dg(m_begin + t, BK, PQ, Q);
        auto entry = [&](int rel) {
            if (sizeof(T) != 4)
                return conv_out_window(rel < m_end - m_begin, m_begin + rel, PQ, Q, C, K, HW, W, stride_h,
                                       stride_w, pad_h, pad_w);
            const ConvIdx e = conv_out_idx(rel < m_end - m_begin, dg.c, dg.r, dg.s, PQ, Q, C, K, HW, W,
                                           stride_h, stride_w, pad_h, pad_w);
            dg.advance(P, Q);
            return e;
        };
        conv_gemm_steps<BK>(
            tbl, n_steps, entry,
            [&](int buf) {
                ld.load_dense(tbl[buf], dyg, k0, Kg, PQ);
                ld.gather(tbl[buf], xg, H, W);
            },
            [&](int buf) { ld.store(Bs[buf], As[buf]); },
            [&](int buf) {
                conv_tile_multiply<T, BK, BM + Tl::PAD, BN + Tl::PAD>(As[buf], Bs[buf], acc, tm, tn);
            });

        T* __restrict__ out = partial + (blockIdx.z * K + g * Kg) * CRS;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int k = k0 + 4 * tm + i;
            if (k >= Kg) continue;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int col = col0 + 4 * tn + j;
                if (col < CRS) out[k * CRS + col] = acc[i][j];
            }
        }
    }
}

// ============================================================================================
// conv2d_backward_bias_v2, stage 1: block (chunk, k) sums dy[:, k] over flat (n, p, q) indices
// [chunk * chunk_len, (chunk + 1) * chunk_len); writes partial[k * chunks + chunk].
// ============================================================================================

template <typename T>
__global__ void __launch_bounds__(GC_CONV_THREADS, GC_CONV_MIN_BLOCKS)
conv2d_backward_bias_v2(const T* __restrict__ dy, T* __restrict__ partial, int N, int K, int PQ,
                        int chunk_len) {
    constexpr int NT = GC_CONV_THREADS, NWARPS = NT / GC_WARP_SIZE;
    __shared__ T warp_sums[NWARPS];
    const int t = threadIdx.x, lane = t % GC_WARP_SIZE, warp = t / GC_WARP_SIZE;
    const int total = N * PQ;
    const int begin = blockIdx.x * chunk_len;
    const int end = total - begin < chunk_len ? total : begin + chunk_len;
    // (n, pq) of index i, advanced by NT without a division per element.
    const int step_n = NT / PQ, step_pq = NT - step_n * PQ;
    for (int k = blockIdx.y; k < K; k += gridDim.y) {
        T s = T(0);
        // Unsigned: i + NT cannot overflow when N*P*Q is within NT of 2^31 - 1 (K == 1).
        unsigned i = begin + t;
        int n = (int)i / PQ, pq = (int)i - n * PQ;
        for (; i < (unsigned)end; i += NT) {
            s += dy[(n * K + k) * PQ + pq];
            n += step_n;
            pq += step_pq;
            if (pq >= PQ) {
                pq -= PQ;
                ++n;
            }
        }
#pragma unroll
        for (int off = GC_WARP_SIZE / 2; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
        if (lane == 0) warp_sums[warp] = s;
        __syncthreads();
        if (t == 0) {
            T total_sum = warp_sums[0];
#pragma unroll
            for (int i2 = 1; i2 < NWARPS; ++i2) total_sum += warp_sums[i2];
            partial[k * gridDim.x + blockIdx.x] = total_sum;
        }
        __syncthreads();  // warp_sums is reused by the next channel
    }
}

// out[i] = sum over s in [0, splits) of partial[s * stride_s + i * stride_i], in order of s.
// Final stage of conv2d_backward_filter_v2 (stride_s = K*Cg*R*S, stride_i = 1) and of
// conv2d_backward_bias_v2 (stride_s = 1, stride_i = chunks).
template <typename T>
__global__ void __launch_bounds__(GC_CONV_THREADS, GC_CONV_MIN_BLOCKS)
conv2d_sum_splits(const T* __restrict__ partial, T* __restrict__ out, int n, int splits,
                  int stride_s, int stride_i) {
    GC_GRID_STRIDE_LOOP(i, n) {
        const T* __restrict__ src = partial + (int)i * stride_i;
        T acc = src[0];
        for (int s = 1; s < splits; ++s) acc += src[s * stride_s];
        out[i] = acc;
    }
}

// ============================================================================================
// conv2d_backward_filter_v3: the filter-gradient GEMM with its lanes along the reduction
// m = (n, p, q), the bias gradient as one more column, a tile sized from C*R*S and K
// ============================================================================================
//
// dw[k][col] = sum over m of dy[m][k] * im2col(x)[m][col], col = (c, r, s) < Cg*R*S, and, when
// has_bias, the column col = Cg*R*S of ones: db[k] = sum over m of dy[m][k]. The block computes a
// BM x BN tile (BM output channels, BN columns; 16, 32 or 64 each, the host's choice from Kg and
// the column count) over the reduction rows [blockIdx.z * chunk, ... + chunk). It writes dw
// (out_w, ld_w = Cg*R*S) and db (out_b) themselves when the host does not split the reduction
// (to_partial 0), else split z's K x ld_w array of partial sums, the bias column included, at
// out_w + z * K * ld_w, which conv2d_backward_filter_v3_sum adds up. A tile smaller than 4096
// outputs is computed KS = 4096 / (BM * BN) times over: the 256 threads form KS slices of BM * BN / 16
// threads, each thread a 4 x 4 register tile, and slice s multiplies rows [s * BKS, (s+1) * BKS)
// of each step; at the end the slices' tiles are added in slice order through shared memory.
//
// A step is BK = 128 / sizeof(T) consecutive reduction rows (32 floats, 16 doubles), staged as
// As[BK][BM] (dy) and Bs[BK][BN] (x, gathered; the ones). The step is loaded as items of one row
// and 4 consecutive columns: item i of the step is row i % BK, so the lanes of a warp take
// consecutive m: consecutive q of one output row, whose dy addresses are consecutive and whose x
// addresses are consecutive at stride 1. Each item's four values are stored with one 16-byte
// store (rows of BN + 4 words: the 8 lanes of a quarter-warp hit 32 different banks). The row
// windows come from the per-step index table (conv_out_window); a thread's x items keep their
// columns in every step, so it decomposes their (c, r, s) once, into registers. The ones column
// reads 1 in every row: in rows past the end of the reduction dy reads 0, so they add nothing.
// Same double-buffered loop as the other GEMMs.

template <typename T, int BM, int BN>
struct ConvFilterTile {
    static constexpr int THREADS = GC_CONV_THREADS;
    static constexpr int KS = GC_CONV_TILE_AREA / (BM * BN);  // slices of the step per block
    static constexpr int BK = 128 / (int)sizeof(T);           // reduction rows per step
    static constexpr int BKS = BK / KS;                       // ... per slice
    static constexpr int TM = BM / 4, TN = BN / 4, TPS = TM * TN;  // threads per slice
    // Items (one row, 4 columns) of dy and of x per step, and per thread; *_FULL: every thread's
    // last item exists.
    static constexpr int A_ITEMS = BK * BM / 4, A_PER = (A_ITEMS + THREADS - 1) / THREADS;
    static constexpr int B_ITEMS = BK * BN / 4, B_PER = (B_ITEMS + THREADS - 1) / THREADS;
    static constexpr bool A_FULL = A_ITEMS % THREADS == 0, B_FULL = B_ITEMS % THREADS == 0;
    static constexpr int PAD = 4;
    // Lanes of a warp (or of the whole slice, when it is 16 threads) along the rows and columns.
    static constexpr int WM = TM < 8 ? TM : 8;
    static constexpr int WN = (TPS < GC_WARP_SIZE ? TPS : GC_WARP_SIZE) / WM;
    static_assert(KS >= 1 && KS * BKS == BK && TPS * KS == THREADS, "slices");
    static_assert(TM % WM == 0 && TN % WN == 0, "warp arrangement");
    static_assert(4 * B_PER <= 32, "a thread's x columns fit the bits of its ones mask");

    // Thread t: slice, and its 4 x 4 register tile at rows 4*tm.., columns 4*tn.. of the BM x BN
    // tile. In a warp the lanes cover WM x WN tiles, skewed so that the first 8 lanes already read
    // every distinct 16-byte word of As and of Bs that the warp reads in a multiply row: the other
    // quarter-warps' reads are then broadcasts.
    __device__ __forceinline__ static void thread_tile(int t, int& slice, int& tm, int& tn) {
        slice = t / TPS;
        const int u = t - slice * TPS;
        const int l = u % (WM * WN), w = u / (WM * WN);
        int i, j;
        if (WM >= WN) {
            i = l % WM;
            j = (i + l / WM) % WN;
        } else {
            j = l % WN;
            i = (j + l / WN) % WM;
        }
        tm = (w % (TM / WM)) * WM + i;
        tn = (w / (TM / WM)) * WN + j;
    }
};

template <typename T, int BM, int BN>
__global__ void __launch_bounds__(GC_CONV_THREADS, GC_CONV_MIN_BLOCKS)
conv2d_backward_filter_v3(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ out_w,
                          T* __restrict__ out_b, int chunk, int ld_w, int to_partial, int has_bias,
                          GC_CONV_GEOMETRY_PARAMS) {
    using Tl = ConvFilterTile<T, BM, BN>;
    constexpr int BK = Tl::BK, KS = Tl::KS, NT = Tl::THREADS;
    constexpr int LDA = BM + Tl::PAD, LDB = BN + Tl::PAD;
    alignas(gc_vec4<T>) __shared__ T As[2][BK][LDA];
    alignas(gc_vec4<T>) __shared__ T Bs[2][BK][LDB];
    alignas(gc_vec4<T>) __shared__ T slice_sums[KS > 1 ? (KS - 1) * BM * BN : 4];
    __shared__ ConvIdx tbl[2][BK];

    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S, CRS = Cg * RS;
    const int M = N * PQ;
    const int t = threadIdx.x;
    int slice, tm, tn;
    Tl::thread_tile(t, slice, tm, tn);
    const int col0 = blockIdx.x * BN;
    const int n_ktiles = (Kg + BM - 1) / BM;
    const int m_begin = blockIdx.z * chunk;
    const int m_end = chunk < M - m_begin ? m_begin + chunk : M;
    const int n_steps = m_end > m_begin ? (m_end - m_begin + BK - 1) / BK : 0;

    // The (c, r, s) offsets of the thread's x columns, the same in every step. Past the end a
    // column reads no x (its window row is out of range) but bit 4 j + e of `ones`: 1 in the ones
    // column, else 0.
    int ca[Tl::B_PER][4], cb[Tl::B_PER][4], cc[Tl::B_PER][4];
    unsigned ones = 0;
#pragma unroll
    for (int j = 0; j < Tl::B_PER; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int col = col0 + 4 * ((t + j * NT) / BK % (BN / 4)) + e;
            const ConvIdx ce = conv_crs_entry(col, CRS, RS, S, HW, W, dil_h, dil_w);
            ca[j][e] = ce.a;
            cb[j][e] = ce.b;
            cc[j][e] = ce.c;
            if (has_bias && col == CRS) ones |= 1u << (4 * j + e);
        }
    }

    T a[Tl::A_PER][4], b[Tl::B_PER][4];  // the items of the step in flight
    for (int yb = blockIdx.y; yb < groups * n_ktiles; yb += gridDim.y) {
        const int g = yb / n_ktiles;
        const int k0 = (yb - g * n_ktiles) * BM;
        const T* __restrict__ dyg = dy + g * Kg * PQ;
        const T* __restrict__ xg = x + g * Cg * HW;
        T acc[4][4];
        conv_zero(acc);

        // Row m's window and dy offset (conv_out_window); rel is the offset into the chunk, as
        // in v2 (m_begin + rel can pass 2^31 - 1 in the last step).
        auto entry = [&](int rel) {
            return conv_out_window(rel < m_end - m_begin, m_begin + rel, PQ, Q, C, K, HW, W, stride_h,
                                   stride_w, pad_h, pad_w);
        };
        auto load = [&](int buf) {
#pragma unroll
            for (int j = 0; j < Tl::A_PER; ++j) {
                const int item = t + j * NT, row = item % BK, k = k0 + 4 * (item / BK);
                const int off = tbl[buf][row].d;  // dy offset of the row, -1 past the end
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    a[j][e] = ((Tl::A_FULL || item < Tl::A_ITEMS) && off >= 0 && k + e < Kg)
                                  ? dyg[off + (k + e) * PQ] : T(0);
            }
#pragma unroll
            for (int j = 0; j < Tl::B_PER; ++j) {
                const int item = t + j * NT;
                const ConvIdx re = tbl[buf][item % BK];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int h = re.b + cb[j][e], ww = re.c + cc[j][e];
                    b[j][e] = ((Tl::B_FULL || item < Tl::B_ITEMS) && (unsigned)h < (unsigned)H &&
                               (unsigned)ww < (unsigned)W) ? xg[re.a + ca[j][e]]
                                                           : T((ones >> (4 * j + e)) & 1u);
                }
            }
        };
        auto store = [&](int buf) {
#pragma unroll
            for (int j = 0; j < Tl::A_PER; ++j) {
                const int item = t + j * NT;
                if (Tl::A_FULL || item < Tl::A_ITEMS)
                    *gc_vec4_at(&As[buf][item % BK][4 * (item / BK)]) =
                        gc_vec4<T>{a[j][0], a[j][1], a[j][2], a[j][3]};
            }
#pragma unroll
            for (int j = 0; j < Tl::B_PER; ++j) {
                const int item = t + j * NT;
                if (Tl::B_FULL || item < Tl::B_ITEMS)
                    *gc_vec4_at(&Bs[buf][item % BK][4 * (item / BK)]) =
                        gc_vec4<T>{b[j][0], b[j][1], b[j][2], b[j][3]};
            }
        };
        // The slice's rows of the step, unrolled by 4 (not for double) only: fully unrolled, ptxas
        // hoists every row's shared loads and runs out of registers.
        constexpr int UNROLL = sizeof(T) == 8 ? 1 : 4;
        conv_gemm_steps<BK>(tbl, n_steps, entry, load, store, [&](int buf) {
#pragma unroll UNROLL
            for (int kk = slice * Tl::BKS; kk < (slice + 1) * Tl::BKS; ++kk) {
                const gc_vec4<T> av = *gc_vec4_at(&As[buf][kk][4 * tm]);
                const gc_vec4<T> bv = *gc_vec4_at(&Bs[buf][kk][4 * tn]);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] += av.v[i] * bv.v[j];
                }
            }
        });

        // Slices 1 .. KS-1 hand their tiles to slice 0, which adds them in slice order.
        if (KS > 1) {
            if (slice > 0) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    gc_vec4<T> q4;
#pragma unroll
                    for (int j = 0; j < 4; ++j) q4.v[j] = acc[i][j];
                    *gc_vec4_at(&slice_sums[((slice - 1) * BM + 4 * tm + i) * BN + 4 * tn]) = q4;
                }
            }
            __syncthreads();
            if (slice == 0) {
                for (int s = 1; s < KS; ++s) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        const gc_vec4<T> q4 =
                            *gc_vec4_at(&slice_sums[((s - 1) * BM + 4 * tm + i) * BN + 4 * tn]);
#pragma unroll
                        for (int j = 0; j < 4; ++j) acc[i][j] += q4.v[j];
                    }
                }
            }
            __syncthreads();  // slice_sums is rewritten by the next tile
        }
        if (slice == 0) {
            T* __restrict__ out = out_w + (to_partial ? blockIdx.z * K * ld_w : 0);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int k = k0 + 4 * tm + i;
                if (k >= Kg) continue;
                const int kg = g * Kg + k;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int col = col0 + 4 * tn + j;
                    if (col < CRS || (to_partial && has_bias && col == CRS))
                        out[kg * ld_w + col] = acc[i][j];
                    else if (has_bias && col == CRS)
                        out_b[kg] = acc[i][j];
                }
            }
        }
    }
}

// Second stage of conv2d_backward_filter_v3 when the reduction is split: partial holds `splits`
// arrays of K x ncol (ncol = Cg*R*S, plus the bias column when has_bias), one after the other.
// dw[k][col] (col < crs) and db[k] (col == crs) = the sum of the splits' values, added in a fixed
// order: the block's 32 lanes take 32 consecutive outputs (coalesced reads), its 8 warps the
// splits w, w + 8, ... in order, and warp 0 adds the 8 warps' sums in warp order.
template <typename T>
__global__ void __launch_bounds__(GC_CONV_THREADS, GC_CONV_MIN_BLOCKS)
conv2d_backward_filter_v3_sum(const T* __restrict__ partial, T* __restrict__ dw, T* __restrict__ db,
                              int K, int ncol, int crs, int splits) {
    constexpr int NW = GC_CONV_THREADS / GC_WARP_SIZE;
    __shared__ T sums[NW][GC_WARP_SIZE];
    const int lane = threadIdx.x % GC_WARP_SIZE, warp = threadIdx.x / GC_WARP_SIZE;
    const int n = K * ncol;
    // Unsigned: i0 + the grid's stride cannot overflow when n is within it of 2^31 - 1.
    for (unsigned i0 = blockIdx.x * GC_WARP_SIZE; i0 < (unsigned)n; i0 += gridDim.x * GC_WARP_SIZE) {
        const bool inside = i0 + lane < (unsigned)n;
        const int i = inside ? (int)(i0 + lane) : 0;
        T acc = T(0);
        if (inside) {
            for (int s = warp; s < splits; s += NW) acc += partial[s * n + i];
        }
        sums[warp][lane] = acc;
        __syncthreads();
        if (warp == 0 && inside) {
            T total = sums[0][lane];
#pragma unroll
            for (int w = 1; w < NW; ++w) total += sums[w][lane];
            const int k = i / ncol, col = i - k * ncol;
            if (col < crs)
                dw[k * crs + col] = total;
            else
                db[k] = total;
        }
        __syncthreads();  // sums is rewritten by the next 32 outputs
    }
}

// ============================================================================================
// TF32 backward kernels: conv2d_backward_data_v4 and conv2d_backward_filter_v4 (float only)
// ============================================================================================
//
// The GEMMs of backward-data v2 and backward-filter v2 on TF32 tensor cores, with forward v4's
// block: 128 threads (4 warps), a 64 x 64 tile, BK = 16, each warp a 32 x 32 sub-tile of m16n8k8
// fragments (conv_tf32_multiply), the shared tiles TF32-rounded when stored and padded to 72
// columns. The loads (dy through the stride-divisibility predicate, the weights transposed; dy
// dense and x gathered), the index tables and the double-buffered step loop are those of v2; the
// filter gradient's split of the N*P*Q reduction is v2's for 64-row tiles (filter_splits on the
// host), and conv2d_sum_splits adds the partials in split order, so results are reproducible.

template <typename T>
__global__ void __launch_bounds__(GC_CONV_V4_THREADS, GC_CONV_V4_MIN_BLOCKS)
conv2d_backward_data_v4(const T* __restrict__ dy, const T* __restrict__ w, const T* __restrict__ relu_y,
                        T* __restrict__ dx, int through_relu,
                        GC_CONV_GEOMETRY_PARAMS) {
    static_assert(sizeof(T) == 4, "conv2d_backward_data_v4 is float only (TF32 tensor cores)");
    constexpr int BM = GC_CONV_V4_TILE, BN = GC_CONV_V4_TILE, BK = 16, LD = GC_CONV_V4_TILE + 8;
    __shared__ float As[2][BK][LD];
    __shared__ float Bs[2][BK][LD];
    __shared__ ConvIdx tbl[2][BK];

    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S, CgRS = Cg * RS, KRS = Kg * RS;
    const int M = N * HW;
    const int t = threadIdx.x;
    const ConvTf32Warp wt(t);
    const int m0 = blockIdx.x * BM;
    const int n_ctiles = (Cg + BN - 1) / BN;
    const int n_steps = (KRS + BK - 1) / BK;

    using Loader = ConvLoader<float, GC_CONV_V4_THREADS, BK, BM, BN>;
    Loader ld(t);
    const bool unit_stride = stride_h == 1 && stride_w == 1;
    const int am = m0 + t % BM, ak = t / BM;
    int a_hp = -GC_CONV_OFF_RANGE, a_wp = 0, a_base = 0;
    if (am < M) {
        const int n = am / HW, hw = am - n * HW;
        const int h = hw / W;
        a_hp = h + pad_h;
        a_wp = hw - h * W + pad_w;
        a_base = n * K * PQ;
    }

    for (int yb = blockIdx.y; yb < groups * n_ctiles; yb += gridDim.y) {
        const int g = yb / n_ctiles;
        const int c0 = (yb - g * n_ctiles) * BN;
        const T* __restrict__ dyg = dy + g * Kg * PQ;
        const T* __restrict__ wg = w + g * Kg * CgRS;
        float acc[2][4][4];
        conv_zero(acc);

        auto load = [&](int buf) {
            if (unit_stride) {
#pragma unroll
                for (int j = 0; j < Loader::G_PER; ++j) {
                    const ConvIdx e = tbl[buf][ak + j * Loader::G_STEP];
                    const int p = a_hp - e.b, q = a_wp - e.c;
                    ld.g[j] = ((unsigned)p < (unsigned)P && (unsigned)q < (unsigned)Q)
                                  ? dyg[a_base + e.a + p * Q + q] : 0.0f;
                }
            } else {
#pragma unroll
                for (int j = 0; j < Loader::G_PER; ++j) {
                    const ConvIdx e = tbl[buf][ak + j * Loader::G_STEP];
                    int p, q;
                    const bool ok = conv_exact_div(a_hp - e.b, stride_h, P, &p) &&
                                    conv_exact_div(a_wp - e.c, stride_w, Q, &q);
                    ld.g[j] = ok ? dyg[a_base + e.a + p * Q + q] : 0.0f;
                }
            }
            ld.load_dense(tbl[buf], wg, c0, Cg, RS);
        };
        conv_gemm_steps<BK>(
            tbl, n_steps,
            [&](int red) { return conv_krs_entry(red, KRS, RS, S, PQ, CgRS, dil_h, dil_w); }, load,
            [&](int buf) { ld.store(As[buf], Bs[buf], ConvTf32Round(), ConvTf32BShift()); },
            [&](int buf) { conv_tf32_multiply<BK, LD, true>(As[buf], Bs[buf], acc, wt); });

        conv_tf32_each_acc(acc, wt, M - m0, Cg - c0, [&](int row) {
            const int m = m0 + row;
            const int n = m / HW, hw = m - n * HW;
            return [&, n, hw](int col, float v) {
                const int off = (n * C + g * Cg + c0 + col) * HW + hw;
                dx[off] = through_relu ? gc_relu_backward(v, relu_y[off]) : v;
            };
        });
    }
}

template <typename T>
__global__ void __launch_bounds__(GC_CONV_V4_THREADS, GC_CONV_V4_MIN_BLOCKS)
conv2d_backward_filter_v4(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ partial,
                          int chunk,
                          GC_CONV_GEOMETRY_PARAMS) {
    static_assert(sizeof(T) == 4, "conv2d_backward_filter_v4 is float only (TF32 tensor cores)");
    constexpr int BM = GC_CONV_V4_TILE, BN = GC_CONV_V4_TILE, BK = 16, LD = GC_CONV_V4_TILE + 8;
    __shared__ float As[2][BK][LD];
    __shared__ float Bs[2][BK][LD];
    __shared__ ConvIdx tbl[2][BK];

    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S, CRS = Cg * RS;
    const int M = N * PQ;
    const int t = threadIdx.x;
    const ConvTf32Warp wt(t);
    const int col0 = blockIdx.x * BN;
    const int n_ktiles = (Kg + BM - 1) / BM;
    int m_begin, m_end;
    const int n_steps = conv_split_rows<BK>(M, chunk, m_begin, m_end);

    // B: x gathered for weight column (c, r, s) = col0 + t % BN; A: dy, k-major (as v2).
    ConvLoader<float, GC_CONV_V4_THREADS, BK, BN, BM> ld(t);
    ld.init(conv_crs_entry(col0 + t % BN, CRS, RS, S, HW, W, dil_h, dil_w));

    for (int yb = blockIdx.y; yb < groups * n_ktiles; yb += gridDim.y) {
        const int g = yb / n_ktiles;
        const int k0 = (yb - g * n_ktiles) * BM;
        const T* __restrict__ dyg = dy + g * Kg * PQ;
        const T* __restrict__ xg = x + g * Cg * HW;
        float acc[2][4][4];
        conv_zero(acc);

        auto entry = [&](int rel) {
            return conv_out_window(rel < m_end - m_begin, m_begin + rel, PQ, Q, C, K, HW, W, stride_h,
                                   stride_w, pad_h, pad_w);
        };
        conv_gemm_steps<BK>(
            tbl, n_steps, entry,
            [&](int buf) {
                ld.load_dense(tbl[buf], dyg, k0, Kg, PQ);
                ld.gather(tbl[buf], xg, H, W);
            },
            [&](int buf) { ld.store(Bs[buf], As[buf], ConvTf32Round()); },  // B gathered: no shift
            [&](int buf) { conv_tf32_multiply<BK, LD, false>(As[buf], Bs[buf], acc, wt); });

        T* __restrict__ out = partial + (blockIdx.z * K + g * Kg) * CRS;
        conv_tf32_each_acc(acc, wt, Kg - k0, CRS - col0, [&](int row) {
            const int k = k0 + row;
            return [&, k](int col, float v) { out[k * CRS + col0 + col] = v; };
        });
    }
}
