// Batch augmentation on the device: random crop of the padded image (zeros or reflection),
// horizontal flip (random or alternating) and cutout, for a whole (N, C, H, W) batch.
// Templates on T (float, double) for the data; the per-image draws are integers.
//
//   augment_params_v1  one thread per image: params[n] = (flip, oy, ox, cy, cx) from the counter
//                      hash of (seed, epoch, indices[n]); the rule and its NumPy twin are in
//                      gpuconv/augment_rng.py.
//   augment_apply_v1   one thread per output element (grid-stride): with p = crop padding,
//                      w' = flip ? W - 1 - w : w, the source is (oy + h - p, ox + w' - p) in x;
//                      outside x it is 0 (zeros) or reflected (reflect: -r, or 2(H - 1) - r);
//                      inside the cutout square [cy - cutout/2, + cutout) x [cx - cutout/2,
//                      + cutout) the output is 0.
// A pure gather: every backend produces the same bits. Versions: v1 only (op "augment").
#include "common.cuh"
#include "counter_hash.cuh"

__device__ inline unsigned gc_augment_draw(unsigned key, unsigned epoch, unsigned index, unsigned stream) {
    const unsigned ekey = gc_mix32(key ^ gc_mix32(epoch ^ 0x85ebca6bu));
    return gc_mix32(gc_mix32(index ^ ekey) + stream * 0x9e3779b9u);
}

// floor(h * n / 2^32): a draw mapped to [0, n).
__device__ inline int gc_below(unsigned h, int n) {
    return (int)(((unsigned long long)h * (unsigned long long)(unsigned)n) >> 32);
}

// flip_mode: 0 none, 1 random, 2 alternate (the order of gpuconv.geometry.FLIP_MODES).
__global__ void augment_params_v1(const int* __restrict__ indices, int* __restrict__ params, int N, int H,
                                  int W, int seed_lo, int seed_hi, int epoch, int pad, int flip_mode) {
    const unsigned key = gc_seed_key(seed_lo, seed_hi);
    const unsigned e = (unsigned)epoch;
    GC_GRID_STRIDE_LOOP(n, N) {
        const unsigned i = (unsigned)indices[n];
        int flip = 0;
        if (flip_mode == 1) flip = (int)(gc_augment_draw(key, e, i, 0) >> 31);
        if (flip_mode == 2) flip = (int)((gc_augment_draw(key, 0, i, 0) >> 31) ^ (e & 1u));
        int* p = params + 5 * (int)n;
        p[0] = flip;
        p[1] = gc_below(gc_augment_draw(key, e, i, 1), 2 * pad + 1);
        p[2] = gc_below(gc_augment_draw(key, e, i, 2), 2 * pad + 1);
        p[3] = gc_below(gc_augment_draw(key, e, i, 3), H);
        p[4] = gc_below(gc_augment_draw(key, e, i, 4), W);
    }
}

// Source coordinate of r in [-pad, size + pad) for reflection padding (pad < size).
__device__ inline int gc_reflect(int r, int size) {
    r = r < 0 ? -r : r;
    return r >= size ? 2 * (size - 1) - r : r;
}

template <typename T>
__global__ void augment_apply_v1(const T* __restrict__ x, const int* __restrict__ params, T* __restrict__ y,
                                 int N, int C, int H, int W, int pad, int reflect, int cutout) {
    GC_GRID_STRIDE_LOOP(i, N * C * H * W) {
        const int w = (int)i % W;
        const int h = ((int)i / W) % H;
        const int nc = (int)i / (H * W);
        const int n = nc / C;
        const int* p = params + 5 * n;
        T v = T(0);
        const int top = p[3] - cutout / 2, left = p[4] - cutout / 2;
        const bool cut = h >= top && h < top + cutout && w >= left && w < left + cutout;
        if (!cut) {
            int r = p[1] + h - pad;
            int c = p[2] + (p[0] ? W - 1 - w : w) - pad;
            if (reflect) {
                r = gc_reflect(r, H);
                c = gc_reflect(c, W);
            }
            if (r >= 0 && r < H && c >= 0 && c < W) v = x[((long long)nc * H + r) * W + c];
        }
        y[i] = v;
    }
}
