// 2-D pooling over NCHW planes: max (with int32 argmax indices), average (PyTorch divisor rule)
// and L2 (sqrt of the sum of squares). Templates on T (float, double).
//
// Geometry arguments, in this order everywhere: NC = N*C planes, H, W (input), P, Q (output),
// R, S (window), stride_h, stride_w (stride), pad_h, pad_w (top/left padding), dil_h, dil_w
// (dilation), as in the conv kernels. Windows may reach past the bottom/right edge (ceil_mode);
// cells outside the input are padding.
//
// Rules (shared with the NumPy reference, gpuconv/backends/numpy_backend.py):
//   max  y = max over the real cells of the window; index = h*W + w inside the input plane of the
//        first maximum in raster order; the first NaN wins and propagates; padding never wins; a
//        window without any real cell gives -inf and index -1. Backward routes dy only to a cell
//        of the output's own window that its index names; any other index routes nothing.
//   avg  y = (sum of real cells) / divisor, divisor = divisor_override if > 0, else the window
//        clipped to the padded input (count_include_pad) or to the input (dilation must be 1).
//   l2   y = sqrt(sum of x^2 over real cells); dx = x * sum over covering windows of dy/y,
//        where a window with y == 0 contributes 0 (never NaN).
//
// Backward kernels are GATHERS: each thread owns input cells and sums the contributions of every
// output window covering them in raster order of the outputs, so results are deterministic and
// correct for overlapping windows.
//
// Versions:
//   *_forward_v1   one thread per output cell. Only version, default.
//   *_backward_v1  one thread per input cell; scans the rows/columns of outputs whose window can
//                  cover it (gc_covering_range). Simplest correct gather.
//   *_backward_v2  one thread per run of 4 consecutive cells of an input row: the output range is
//                  computed once per run and each covering output's dy (and index / divisor / y)
//                  is loaded once for the 4 cells instead of once per cell. Each cell sums the
//                  same terms in the same order as v1, so v1 and v2 agree bit for bit.
// Default backward: v2 (fewer loads and index computations per cell; expected fastest, not yet
// measured on a GPU).
#include "common.cuh"

#define GC_POOL_GEOMETRY_PARAMS                                                                \
    int NC, int H, int W, int P, int Q, int R, int S, int stride_h, int stride_w, int pad_h,     \
        int pad_w, int dil_h, int dil_w

#ifndef GC_POOL_RUN  // input cells per thread in the v2 backward kernels
#error "compile with gpuconv's options: GC_POOL_RUN comes from gpuconv/backends/launch/pool.py"
#endif

// ---- forward --------------------------------------------------------------------------------------

template <typename T>
__global__ void max_pool2d_forward_v1(const T* __restrict__ x, T* __restrict__ y,
                                      int* __restrict__ indices, GC_POOL_GEOMETRY_PARAMS) {
    GC_GRID_STRIDE_LOOP(o, NC * P * Q) {
        const int q = (int)o % Q;
        const int p = ((int)o / Q) % P;
        const int nc = (int)o / (P * Q);
        const T* plane = x + (long long)nc * H * W;
        T best = -gc_inf<T>();
        int best_idx = -1;
        for (int i = 0; i < R; ++i) {
            const int h = p * stride_h - pad_h + i * dil_h;
            if (h < 0 || h >= H) continue;
            for (int j = 0; j < S; ++j) {
                const int w = q * stride_w - pad_w + j * dil_w;
                if (w < 0 || w >= W) continue;
                const T v = plane[h * W + w];
                // First real cell always taken; later ones only if strictly larger or a first NaN.
                if (best_idx < 0 || v > best || (gc_isnan(v) && !gc_isnan(best))) {
                    best = v;
                    best_idx = h * W + w;
                }
            }
        }
        y[o] = best;
        indices[o] = best_idx;
    }
}

// PyTorch's average-pooling divisor of output cell (p, q) (dilation 1).
__device__ inline int gc_avg_divisor(int p, int q, int H, int W, int R, int S, int stride_h, int stride_w,
                                     int pad_h, int pad_w, int count_include_pad, int divisor_override) {
    if (divisor_override > 0) return divisor_override;
    int h0 = p * stride_h - pad_h, w0 = q * stride_w - pad_w;
    int h1 = gc_min(h0 + R, H + pad_h), w1 = gc_min(w0 + S, W + pad_w);
    if (count_include_pad) return (h1 - h0) * (w1 - w0);
    return (gc_min(h1, H) - gc_max(h0, 0)) * (gc_min(w1, W) - gc_max(w0, 0));
}

template <typename T>
__global__ void avg_pool2d_forward_v1(const T* __restrict__ x, T* __restrict__ y,
                                      GC_POOL_GEOMETRY_PARAMS, int count_include_pad,
                                      int divisor_override) {
    (void)dil_h;
    (void)dil_w;
    GC_GRID_STRIDE_LOOP(o, NC * P * Q) {
        const int q = (int)o % Q;
        const int p = ((int)o / Q) % P;
        const int nc = (int)o / (P * Q);
        const T* plane = x + (long long)nc * H * W;
        const int h0 = gc_max(p * stride_h - pad_h, 0), h1 = gc_min(p * stride_h - pad_h + R, H);
        const int w0 = gc_max(q * stride_w - pad_w, 0), w1 = gc_min(q * stride_w - pad_w + S, W);
        T s = T(0);
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w) s += plane[h * W + w];
        y[o] = s / T(gc_avg_divisor(p, q, H, W, R, S, stride_h, stride_w, pad_h, pad_w, count_include_pad,
                                    divisor_override));
    }
}

template <typename T>
__global__ void l2_pool2d_forward_v1(const T* __restrict__ x, T* __restrict__ y,
                                     GC_POOL_GEOMETRY_PARAMS) {
    GC_GRID_STRIDE_LOOP(o, NC * P * Q) {
        const int q = (int)o % Q;
        const int p = ((int)o / Q) % P;
        const int nc = (int)o / (P * Q);
        const T* plane = x + (long long)nc * H * W;
        T s = T(0);
        for (int i = 0; i < R; ++i) {
            const int h = p * stride_h - pad_h + i * dil_h;
            if (h < 0 || h >= H) continue;
            for (int j = 0; j < S; ++j) {
                const int w = q * stride_w - pad_w + j * dil_w;
                if (w < 0 || w >= W) continue;
                const T v = plane[h * W + w];
                s += v * v;
            }
        }
        y[o] = gc_sqrt(s);
    }
}

// ---- backward v1: one thread per input cell ----------------------------------------------------

template <typename T>
__global__ void max_pool2d_backward_v1(const T* __restrict__ dy, const int* __restrict__ indices,
                                       T* __restrict__ dx, GC_POOL_GEOMETRY_PARAMS) {
    GC_GRID_STRIDE_LOOP(e, NC * H * W) {
        const int w = (int)e % W;
        const int h = ((int)e / W) % H;
        const int nc = (int)e / (H * W);
        int p_lo, p_hi, q_lo, q_hi;
        gc_covering_range(h, R, stride_h, pad_h, dil_h, P, &p_lo, &p_hi);
        gc_covering_range(w, S, stride_w, pad_w, dil_w, Q, &q_lo, &q_hi);
        const int target = h * W + w;
        const long long base = (long long)nc * P * Q;
        T s = T(0);
        for (int p = p_lo; p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q) {
                const long long o = base + p * Q + q;
                // Only an index naming a cell of o's own window counts (dilation: on its grid).
                if (indices[o] == target && (h + pad_h - p * stride_h) % dil_h == 0 &&
                    (w + pad_w - q * stride_w) % dil_w == 0)
                    s += dy[o];
            }
        dx[e] = s;
    }
}

template <typename T>
__global__ void avg_pool2d_backward_v1(const T* __restrict__ dy, T* __restrict__ dx,
                                       GC_POOL_GEOMETRY_PARAMS, int count_include_pad,
                                       int divisor_override) {
    GC_GRID_STRIDE_LOOP(e, NC * H * W) {
        const int w = (int)e % W;
        const int h = ((int)e / W) % H;
        const int nc = (int)e / (H * W);
        int p_lo, p_hi, q_lo, q_hi;
        gc_covering_range(h, R, stride_h, pad_h, dil_h, P, &p_lo, &p_hi);
        gc_covering_range(w, S, stride_w, pad_w, dil_w, Q, &q_lo, &q_hi);
        const T* g = dy + (long long)nc * P * Q;
        T s = T(0);
        for (int p = p_lo; p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q)
                s += g[p * Q + q] / T(gc_avg_divisor(p, q, H, W, R, S, stride_h, stride_w, pad_h, pad_w,
                                                     count_include_pad, divisor_override));
        dx[e] = s;
    }
}

template <typename T>
__global__ void l2_pool2d_backward_v1(const T* __restrict__ dy, const T* __restrict__ x,
                                      const T* __restrict__ y, T* __restrict__ dx,
                                      GC_POOL_GEOMETRY_PARAMS) {
    GC_GRID_STRIDE_LOOP(e, NC * H * W) {
        const int w = (int)e % W;
        const int h = ((int)e / W) % H;
        const int nc = (int)e / (H * W);
        int p_lo, p_hi, q_lo, q_hi;
        gc_covering_range(h, R, stride_h, pad_h, dil_h, P, &p_lo, &p_hi);
        gc_covering_range(w, S, stride_w, pad_w, dil_w, Q, &q_lo, &q_hi);
        const long long base = (long long)nc * P * Q;
        T s = T(0);
        for (int p = p_lo; p <= p_hi; ++p) {
            if ((h + pad_h - p * stride_h) % dil_h) continue;
            for (int q = q_lo; q <= q_hi; ++q) {
                if ((w + pad_w - q * stride_w) % dil_w) continue;
                const T yo = y[base + p * Q + q];
                if (yo > T(0)) s += dy[base + p * Q + q] / yo;
            }
        }
        dx[e] = x[e] * s;
    }
}

// ---- backward v2: one thread per run of GC_POOL_RUN cells of an input row ------------------------
//
// Work item r covers cells w0 .. w0 + n - 1 of row h of plane nc, w0 = (r % runs) * GC_POOL_RUN,
// runs = ceil(W / GC_POOL_RUN), n = min(GC_POOL_RUN, W - w0). Accumulators are indexed with
// compile-time constants only (unrolled k loops) so they stay in registers.

#define GC_POOL_RUN_PROLOGUE                                                                     \
    const int runs = (W + GC_POOL_RUN - 1) / GC_POOL_RUN;                                        \
    const int w0 = ((int)r % runs) * GC_POOL_RUN;                                                \
    const int h = ((int)r / runs) % H;                                                           \
    const int nc = (int)r / (runs * H);                                                          \
    const int n = gc_min(GC_POOL_RUN, W - w0);                                                   \
    int p_lo, p_hi, q_lo, q_hi, q_lo_last, q_hi_first;                                           \
    gc_covering_range(h, R, stride_h, pad_h, dil_h, P, &p_lo, &p_hi);                                       \
    gc_covering_range(w0, S, stride_w, pad_w, dil_w, Q, &q_lo, &q_hi_first);                                \
    gc_covering_range(w0 + n - 1, S, stride_w, pad_w, dil_w, Q, &q_lo_last, &q_hi);                         \
    (void)q_hi_first;                                                                            \
    (void)q_lo_last;                                                                             \
    const long long base = (long long)nc * P * Q;                                                \
    const long long xrow = ((long long)nc * H + h) * W + w0;                                     \
    T acc[GC_POOL_RUN];                                                                          \
    for (int k = 0; k < GC_POOL_RUN; ++k) acc[k] = T(0);

template <typename T>
__global__ void max_pool2d_backward_v2(const T* __restrict__ dy, const int* __restrict__ indices,
                                       T* __restrict__ dx, GC_POOL_GEOMETRY_PARAMS) {
    GC_GRID_STRIDE_LOOP(r, NC * H * ((W + GC_POOL_RUN - 1) / GC_POOL_RUN)) {
        GC_POOL_RUN_PROLOGUE
        const int first = h * W + w0;
        for (int p = p_lo; p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q) {
                const long long o = base + p * Q + q;
                // Only an index naming a cell of o's own window counts (any other routes nothing).
                const int k_hit = indices[o] - first;
                if (k_hit < 0 || k_hit >= n) continue;
                const int col = w0 + k_hit + pad_w - q * stride_w;  // the cell's offset in window q
                if (col < 0 || col > (S - 1) * dil_w || col % dil_w ||
                    (h + pad_h - p * stride_h) % dil_h)
                    continue;
                const T g = dy[o];
#pragma unroll
                for (int k = 0; k < GC_POOL_RUN; ++k)
                    if (k == k_hit) acc[k] += g;
            }
#pragma unroll
        for (int k = 0; k < GC_POOL_RUN; ++k)
            if (k < n) dx[xrow + k] = acc[k];
    }
}

template <typename T>
__global__ void avg_pool2d_backward_v2(const T* __restrict__ dy, T* __restrict__ dx,
                                       GC_POOL_GEOMETRY_PARAMS, int count_include_pad,
                                       int divisor_override) {
    GC_GRID_STRIDE_LOOP(r, NC * H * ((W + GC_POOL_RUN - 1) / GC_POOL_RUN)) {
        GC_POOL_RUN_PROLOGUE
        for (int p = p_lo; p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q) {
                const T g = dy[base + p * Q + q] /
                            T(gc_avg_divisor(p, q, H, W, R, S, stride_h, stride_w, pad_h, pad_w,
                                             count_include_pad, divisor_override));
                // window columns [start, start + S) (dil_w == 1)
                const int start = q * stride_w - pad_w - w0;
#pragma unroll
                for (int k = 0; k < GC_POOL_RUN; ++k)
                    if (k < n && k >= start && k < start + S) acc[k] += g;
            }
#pragma unroll
        for (int k = 0; k < GC_POOL_RUN; ++k)
            if (k < n) dx[xrow + k] = acc[k];
    }
}

template <typename T>
__global__ void l2_pool2d_backward_v2(const T* __restrict__ dy, const T* __restrict__ x,
                                      const T* __restrict__ y, T* __restrict__ dx,
                                      GC_POOL_GEOMETRY_PARAMS) {
    GC_GRID_STRIDE_LOOP(r, NC * H * ((W + GC_POOL_RUN - 1) / GC_POOL_RUN)) {
        GC_POOL_RUN_PROLOGUE
        for (int p = p_lo; p <= p_hi; ++p) {
            if ((h + pad_h - p * stride_h) % dil_h) continue;
            for (int q = q_lo; q <= q_hi; ++q) {
                const T yo = y[base + p * Q + q];
                if (!(yo > T(0))) continue;
                const T g = dy[base + p * Q + q] / yo;
                const int start = q * stride_w - pad_w - w0;  // taps at start + j*dil_w, j in [0, S)
#pragma unroll
                for (int k = 0; k < GC_POOL_RUN; ++k) {
                    const int off = k - start;
                    if (k < n && off >= 0 && off <= (S - 1) * dil_w && off % dil_w == 0) acc[k] += g;
                }
            }
        }
#pragma unroll
        for (int k = 0; k < GC_POOL_RUN; ++k)
            if (k < n) dx[xrow + k] = x[xrow + k] * acc[k];
    }
}
