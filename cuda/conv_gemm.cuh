// gpuconv implicit-GEMM machinery shared by the tiled conv kernels of conv2d.cu (forward v2 and
// v4, backward-data v2 and v3, backward-filter v2): the tile shape, the per-step index table and its
// entries, the global -> register -> shared loaders, the double-buffered step loop and the
// forward epilogue. See the header of conv2d.cu for the design.
//
// Sizes that the host's launch code also uses are not defined here: they come as -D options from
// DEFINES in gpuconv/backends/launch/conv.py (KernelBackend's compile options), so each number is
// written once.
#pragma once

#include "common.cuh"

#if !defined(GC_CONV_THREADS) || !defined(GC_CONV_MIN_BLOCKS) || !defined(GC_CONV_TILE_AREA) ||    \
    !defined(GC_CONV_V3_KB) || !defined(GC_CONV_V3_CHUNK) || !defined(GC_CONV_V4_THREADS) ||      \
    !defined(GC_CONV_V4_MIN_BLOCKS) || !defined(GC_CONV_V4_TILE) || !defined(GC_CONV_EPI_BIAS) ||   \
    !defined(GC_CONV_EPI_RESIDUAL) || !defined(GC_CONV_EPI_RELU)
#error "compile with gpuconv's options: the GC_CONV_* sizes come from gpuconv/backends/launch/conv.py"
#endif

// GC_CONV_THREADS: threads of the tiled kernels. GC_CONV_MIN_BLOCKS: minimum resident blocks per
// SM promised to ptxas (caps registers at 128 per thread). Naming it also matters: with a bare
// __launch_bounds__(256) ptxas 13 picks a 32-register budget and spills. GC_CONV_TILE_AREA: BM * BN.

// Marks an index-table entry or a loader row that must read zero: added to a window coordinate it
// drives it far out of [0, H) without overflowing int32.
#define GC_CONV_OFF_RANGE 0x20000000

// ============================================================================================
// Shared pieces of the tiled implicit-GEMM kernels
// ============================================================================================

template <typename T, int BN, int TT = 4>
struct ConvTile {
    static constexpr int THREADS = GC_CONV_THREADS;
    static constexpr int BM = GC_CONV_TILE_AREA * (TT / 4) * (TT / 4) / BN;  // rows of the output tile
    // Reduction step: 16 floats, 8 doubles; half of that for the 8 x 8 thread tile: at 16, ptxas
    // for sm_80 put most of the next step's 20 loads per thread after the multiply.
    static constexpr int BK = 64 / (int)sizeof(T) / (TT / 4);
    static constexpr int PAD = 4;                    // rows stay gc_vec4-aligned; spreads banks
    static constexpr int TM = BM / TT;               // threads along the rows
    static constexpr int TN = BN / TT;               // threads along the columns
    static constexpr int WM = TM < 8 ? TM : 8;       // lanes of a warp along the rows
    static constexpr int WN = GC_WARP_SIZE / WM;     // ... and along the columns
    static_assert(TT % 4 == 0 && TM * TN == THREADS, "thread tile");
    static_assert(TM % WM == 0 && TN % WN == 0, "warp arrangement");

    // Thread t's TT x TT register tile is made of (TT/4)^2 blocks of 4 x 4: rows
    // row(tm, i) = 4*tm + i % 4 + (i / 4) * BM * 4 / TT, columns col(tn, j) likewise (for TT = 8,
    // rows 4*tm.. and BM/2 + 4*tm..), so every fragment load of multiply() is one gc_vec4
    // and the lanes of a warp read adjacent vectors. The lanes of a warp form a WM x WN block of
    // (tm, tn) (8 x 4, or 4 x 8 for 16-row tiles). For 8 x 4, each quarter warp (the 8 lanes that
    // share a 16-byte shared-memory phase) holds 4 rows x 2 columns: per reduction row the warp
    // reads 8 distinct gc_vec4 of A and 4 of B, in two new phases each (the other phases repeat
    // words already delivered), 4 wavefronts in all; quarter warps of 8 rows x 1 column would
    // take 1 for A and 4 for B.
    __device__ __forceinline__ static void thread_tile(int t, int& tm, int& tn) {
        const int lane = t % GC_WARP_SIZE, warp = t / GC_WARP_SIZE;
        int lm = lane % WM, ln = lane / WM;
        if (WM == 8 && WN == 4) {
            lm = (lane & 3) | ((lane >> 4) << 2);
            ln = (lane >> 2) & 3;
        }
        tm = (warp % (TM / WM)) * WM + lm;
        tn = (warp / (TM / WM)) * WN + ln;
    }
    __device__ __forceinline__ static int row(int tm, int i) { return 4 * tm + i % 4 + (i / 4) * (BM * 4 / TT); }
    __device__ __forceinline__ static int col(int tn, int j) { return 4 * tn + j % 4 + (j / 4) * (BN * 4 / TT); }

    // acc[i][j] += sum over kk of As[kk][row(tm, i)] * Bs[kk][col(tn, j)]
    template <int LDA, int LDB>
    __device__ __forceinline__ static void multiply(const T (*__restrict__ As)[LDA], const T (*__restrict__ Bs)[LDB],
                                                    T (&acc)[TT][TT], int tm, int tn) {
        constexpr int V = TT / 4;
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            gc_vec4<T> a[V], b[V];
#pragma unroll
            for (int u = 0; u < V; ++u) {
                a[u] = *gc_vec4_at(&As[kk][row(tm, 4 * u)]);
                b[u] = *gc_vec4_at(&Bs[kk][col(tn, 4 * u)]);
            }
#pragma unroll
            for (int i = 0; i < TT; ++i) {
#pragma unroll
                for (int j = 0; j < TT; ++j) acc[i][j] += a[i / 4].v[i % 4] * b[j / 4].v[j % 4];
            }
        }
    }
};

// Entry of the per-step index table. a, b, c are read by ConvLoader::gather (offset, window
// displacements), d by ConvLoader::load_dense (offset, negative: none); each kernel fills them.
struct alignas(16) ConvIdx {
    int a, b, c, d;
};

template <typename T>
__device__ __forceinline__ void conv_zero(T& v) {
    v = T(0);
}

template <typename T, int N>
__device__ __forceinline__ void conv_zero(T (&a)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) conv_zero(a[i]);
}

// acc[i][j] += sum over kk of As[kk][4*tm + i] * Bs[kk][4*tn + j]
template <typename T, int BK, int LDA, int LDB>
__device__ __forceinline__ void conv_tile_multiply(const T (*__restrict__ As)[LDA],
                                                   const T (*__restrict__ Bs)[LDB],
                                                   T (&acc)[4][4], int tm, int tn) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
        const gc_vec4<T> a = *gc_vec4_at(&As[kk][4 * tm]);
        const gc_vec4<T> b = *gc_vec4_at(&Bs[kk][4 * tn]);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] += a.v[i] * b.v[j];
        }
    }
}

// An index-table entry that reads zero: its window row -GC_CONV_OFF_RANGE is outside every image,
// its dense offset -1 is none.
__device__ __forceinline__ ConvIdx conv_idx_outside() {
    ConvIdx e;
    e.a = 0;
    e.b = -GC_CONV_OFF_RANGE;
    e.c = 0;
    e.d = -1;
    return e;
}

// The entry of reduction index red = (c, r, s) of a (Cg, R, S) reduction: a = the x offset
// c*H*W + r*dil_h*W + s*dil_w, b = r*dil_h, c = s*dil_w (window displacements), d = red (the
// weight column).
__device__ __forceinline__ ConvIdx conv_crs_idx(int red, int c, int r, int s, int HW, int W, int dil_h,
                                                int dil_w) {
    ConvIdx e;
    e.b = r * dil_h;
    e.c = s * dil_w;
    e.a = c * HW + e.b * W + e.c;
    e.d = red;
    return e;
}

// conv_crs_idx of reduction index red, or conv_idx_outside() when red is past the end.
__device__ __forceinline__ ConvIdx conv_crs_entry(int red, int CRS, int RS, int S, int HW, int W,
                                                  int dil_h, int dil_w) {
    if (red >= CRS) return conv_idx_outside();
    const int c = red / RS, rs = red - c * RS;
    const int r = rs / S;
    return conv_crs_idx(red, c, r, rs - r * S, HW, W, dil_h, dil_w);
}

// The digits (c, r, s) of an index of a (Cg, R, S) reduction, advanced by a fixed step (below
// R * S * 2^31) with carries instead of divisions: two divisions when made, none per step.
struct ConvCrsDigits {
    int c, r, s, dc, dr, ds;
    __device__ __forceinline__ ConvCrsDigits(int i, int step, int RS, int S) {
        c = i / RS;
        r = (i - c * RS) / S;
        s = i - c * RS - r * S;
        dc = step / RS;
        dr = (step - dc * RS) / S;
        ds = step - dc * RS - dr * S;
    }
    __device__ __forceinline__ void advance(int R, int S) {
        s += ds;
        r += dr;
        c += dc;
        if (s >= S) {
            s -= S;
            ++r;
        }
        if (r >= R) {
            r -= R;
            ++c;
        }
    }
};

// The window of output row m = (n, p, q) of the forward GEMM when inside, else conv_idx_outside():
// a = x offset n*C*H*W + h0*W + w0 of its origin, (b, c) = (h0, w0), d = the y offset n*K*P*Q + p*Q + q.
// conv_out_idx: the same from the digits (n, p, q) of m.
__device__ __forceinline__ ConvIdx conv_out_idx(bool inside, int n, int p, int q, int PQ, int Q, int C, int K,
                                                int HW, int W, int stride_h, int stride_w, int pad_h, int pad_w) {
    ConvIdx e;
    if (inside) {
        e.b = p * stride_h - pad_h;
        e.c = q * stride_w - pad_w;
        e.a = n * C * HW + e.b * W + e.c;
        e.d = n * K * PQ + p * Q + q;
    } else {
        e = conv_idx_outside();
    }
    return e;
}

// (conv_out_window reuses the pq it divided instead of forming p * Q + q as conv_out_idx does:
// with the latter, ptxas spilled 8 bytes in two double instantiations of backward-filter v3.)
__device__ __forceinline__ ConvIdx conv_out_window(bool inside, int m, int PQ, int Q, int C, int K, int HW,
                                                   int W, int stride_h, int stride_w, int pad_h, int pad_w) {
    ConvIdx e;
    if (inside) {
        const int n = m / PQ, pq = m - n * PQ;
        const int p = pq / Q, q = pq - p * Q;
        e.b = p * stride_h - pad_h;
        e.c = q * stride_w - pad_w;
        e.a = n * C * HW + e.b * W + e.c;
        e.d = n * K * PQ + pq;
    } else {
        e = conv_idx_outside();
    }
    return e;
}

// The identity conversion of ConvLoader::store.
struct ConvCopy {
    template <typename T>
    __device__ __forceinline__ T operator()(T v) const { return v; }
};

// The identity column map of ConvLoader::store's dense tile.
struct ConvSameCol {
    __device__ __forceinline__ int operator()(int, int col) const { return col; }
};

// Global -> register -> shared loaders of one reduction step of BK rows, for NT threads, driven by
// the step's index table tbl[BK]. The two operand tiles are stored k-major (tile[kk][column]):
//   gathered (GCOLS columns): thread t owns column t % GCOLS and reduction rows kk = t / GCOLS +
//       j * G_STEP; element kk is src[base + e.a] (e = tbl[kk]), zero unless the window cell
//       (h0 + e.b, w0 + e.c) lies in [0, H) x [0, W); init sets base, h0, w0. (Backward-data fills
//       g with its own gather: dy through the stride-divisibility predicate.)
//   dense (DCOLS columns): element idx = t + j * NT is reduction row idx % BK of column
//       idx / BK, src[e.d + (col0 + idx / BK) * ld], zero when e.d < 0 or the column >= ncols.
template <typename T, int NT, int BK, int GCOLS, int DCOLS>
struct ConvLoader {
    static constexpr int G_STEP = NT / GCOLS;                 // rows one pass of the gather covers
    static constexpr int G_PER = BK / G_STEP;                 // gathered elements per thread
    static constexpr int D_PER = (DCOLS * BK + NT - 1) / NT;  // dense elements per thread
    static constexpr bool D_FULL = DCOLS * BK % NT == 0;      // every thread's last one is in the tile
    static_assert(NT % GCOLS == 0 && BK % G_STEP == 0, "gather layout");
    static_assert(NT % BK == 0, "dense layout: each thread keeps one reduction row");

    int t, base, h0, w0;
    T g[G_PER], d[D_PER];

    __device__ __forceinline__ explicit ConvLoader(int thread)
        : t(thread), base(0), h0(-GC_CONV_OFF_RANGE), w0(0) {}  // gathers zeros until init

    // Gathered column = the window of an index-table-like entry e (conv_out_window of the forward
    // GEMM's output row, conv_crs_entry of backward-filter's weight column).
    __device__ __forceinline__ void init(const ConvIdx& e) {
        base = e.a;
        h0 = e.b;
        w0 = e.c;
    }

    __device__ __forceinline__ void gather(const ConvIdx* tbl, const T* __restrict__ src, int H, int W) {
#pragma unroll
        for (int j = 0; j < G_PER; ++j) {
            const ConvIdx e = tbl[t / GCOLS + j * G_STEP];
            const int h = h0 + e.b, ww = w0 + e.c;
            g[j] = ((unsigned)h < (unsigned)H && (unsigned)ww < (unsigned)W) ? src[base + e.a] : T(0);
        }
    }

    __device__ __forceinline__ void load_dense(const ConvIdx* tbl, const T* __restrict__ src, int col0,
                                               int ncols, int ld) {
#pragma unroll
        for (int j = 0; j < D_PER; ++j) {
            const int idx = t + j * NT;
            const int off = tbl[idx % BK].d, col = col0 + idx / BK;
            d[j] = ((D_FULL || idx < DCOLS * BK) && off >= 0 && col < ncols) ? src[off + col * ld] : T(0);
        }
    }

    // The registers to shared tiles gs[BK][>= GCOLS] and ds[BK][>= DCOLS], each value through cvt;
    // column col of dense row kk goes to ds[kk][dcol(kk, col)] (a swizzle; the identity by default).
    template <int LDG, int LDD, typename Cvt = ConvCopy, typename DCol = ConvSameCol>
    __device__ __forceinline__ void store(T (*gs)[LDG], T (*ds)[LDD], Cvt cvt = Cvt(), DCol dcol = DCol()) const {
#pragma unroll
        for (int j = 0; j < G_PER; ++j) gs[t / GCOLS + j * G_STEP][t % GCOLS] = cvt(g[j]);
        const int kk = t % BK;  // = idx % BK for every j: NT is a multiple of BK
#pragma unroll
        for (int j = 0; j < D_PER; ++j) {
            const int idx = t + j * NT;
            if (D_FULL || idx < DCOLS * BK) ds[kk][dcol(kk, t / BK + j * (NT / BK))] = cvt(d[j]);
        }
    }
};

// The double-buffered main loop of the implicit GEMMs, one barrier per step: the global loads of
// step s + 1 are issued, step s is multiplied while they are in flight, then they are stored to
// the other buffer, and the index table of step s + 2 is filled into the table buffer step s is
// done with. Callbacks:
//   entry(i)     the table entry of index i = step * BK + slot of the reduction; an index past the
//                end of the reduction must give an entry that reads zero (conv_idx_outside).
//                Thread t < BK asks for i = t, t + BK, t + 2 BK, ... in this order, once each, so
//                an entry may be computed incrementally (ConvCrsDigits)
//   load(buf)    global loads into registers for the step whose table is tbl[buf]
//   store(buf)   registers to shared buffer buf;   multiply(buf): accumulate shared buffer buf
// Nothing in the loop is conditional on the step: past the last step the tables hold entries that
// read zero, so the extra load, store and fill of the last iteration touch no global memory. A
// conditional load would be sunk by ptxas below the multiply (into the conditional store), and
// nothing would be in flight while the multiply runs.
template <int BK, typename Entry, typename Load, typename Store, typename Multiply>
__device__ __forceinline__ void conv_gemm_steps(ConvIdx (*tbl)[BK], int n_steps, Entry entry, Load load,
                                                Store store, Multiply multiply) {
    const int t = threadIdx.x;
    auto fill_table = [&](int buf, int step) {
        if (t < BK) tbl[buf][t] = entry(step * BK + t);
    };
    if (n_steps <= 0) return;
    fill_table(0, 0);
    __syncthreads();
    load(0);
    store(0);
    fill_table(1, 1);
    __syncthreads();
    for (int step = 0; step < n_steps; ++step) {
        const int cur = step & 1, nxt = cur ^ 1;
        load(nxt);
        multiply(cur);
        store(nxt);
        fill_table(cur, step + 2);
        __syncthreads();
    }
}

// The step loop of the forward GEMMs (v2, v4) over the (c, r, s) reduction of group x xg and
// weights wg: A = im2col(x) gathered by ld for its output row, B = the weights of output channels
// [k0, Kg), k-major; store and multiply as for conv_gemm_steps. DIGITS: the table entries from
// ConvCrsDigits (no division per step, three more registers per thread) instead of conv_crs_entry.
template <int BK, bool DIGITS, typename Loader, typename T, typename Store, typename Multiply>
__device__ __forceinline__ void conv_forward_steps(ConvIdx (*tbl)[BK], Loader& ld, const T* __restrict__ xg,
                                                   const T* __restrict__ wg, int k0, int Kg, int CRS, int RS,
                                                   int S, int H, int W, int dil_h, int dil_w, Store store,
                                                   Multiply multiply) {
    const int HW = H * W, R = RS / S;
    ConvCrsDigits dg(threadIdx.x, BK, RS, S);  // of the index this thread's next entry is for
    conv_gemm_steps<BK>(
        tbl, (CRS + BK - 1) / BK,
        [&](int red) {
            if (!DIGITS) return conv_crs_entry(red, CRS, RS, S, HW, W, dil_h, dil_w);
            const ConvIdx e = red < CRS ? conv_crs_idx(red, dg.c, dg.r, dg.s, HW, W, dil_h, dil_w)
                                        : conv_idx_outside();
            dg.advance(R, S);
            return e;
        },
        [&](int buf) {
            ld.gather(tbl[buf], xg, H, W);
            ld.load_dense(tbl[buf], wg, k0, Kg, CRS);
        },
        store, multiply);
}

// Forward epilogue of one output value v, by the flags `epi` (GC_CONV_EPI_*, from the host's
// options): relu(v + b + r), each term only when its flag is set, added in that order: the order
// of the unfused conv2d (bias), add (residual), relu, so fused and unfused give the same bits.
template <typename T>
__device__ __forceinline__ T conv_epilogue(T v, T b, T r, int epi) {
    if (epi & GC_CONV_EPI_BIAS) v += b;
    if (epi & GC_CONV_EPI_RESIDUAL) v += r;
    return (epi & GC_CONV_EPI_RELU) ? gc_relu(v) : v;
}

// Forward epilogue, one value: y[n][kg][pq] = conv_epilogue(v, bias[kg], residual[same offset]).
template <typename T>
__device__ __forceinline__ void conv_store_y(T* __restrict__ y, const T* __restrict__ bias,
                                             const T* __restrict__ residual, int epi, T v, int n, int pq,
                                             int kg, int K, int PQ) {
    const int off = (n * K + kg) * PQ + pq;
    y[off] = conv_epilogue(v, (epi & GC_CONV_EPI_BIAS) ? bias[kg] : T(0),
                           (epi & GC_CONV_EPI_RESIDUAL) ? residual[off] : T(0), epi);
}

// Whether p may be read as gc_vec4<T> (aligned to 16 bytes for float, 32 for double): y is
// allocated by the launch code, but a residual may be any contiguous view.
template <typename T>
__device__ __forceinline__ bool conv_vec4_aligned(const T* p) {
    return reinterpret_cast<unsigned long long>(p) % sizeof(gc_vec4<T>) == 0;
}
