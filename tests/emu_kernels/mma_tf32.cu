// One 16x8x8 TF32 product through gc_mma_tf32_m16n8k8 (tests/test_kernels_conv.py): a single
// warp loads its A, B and C fragments from row-major a[16][8], b[8][8] (b[k][n]), c[16][8] by the
// documented layout and writes D back to d[16][8]. mma_tf32_tile rounds the operands to TF32 first
// (cvt.rna, as conv2d_forward_v4 does); mma_tf32_tile_raw passes the fp32 bits unconverted, which
// the tensor core reads with their low 13 mantissa bits ignored. tf32_round: out[i] = the TF32
// rounding of x[i].
#include "../../cuda/conv2d.cu"

template <bool ROUND>
__device__ void mma_tile(const float* __restrict__ a, const float* __restrict__ b,
                         const float* __restrict__ c, float* __restrict__ d) {
    const int lane = threadIdx.x % GC_WARP_SIZE;
    const int g = lane >> 2, t = lane & 3;
    auto bits = [](float v) { return ROUND ? gc_tf32_bits(v) : __float_as_uint(v); };
    const unsigned af[4] = {bits(a[g * 8 + t]), bits(a[(g + 8) * 8 + t]), bits(a[g * 8 + t + 4]),
                            bits(a[(g + 8) * 8 + t + 4])};
    const unsigned bf[2] = {bits(b[t * 8 + g]), bits(b[(t + 4) * 8 + g])};
    float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
    gc_mma_tf32_m16n8k8(acc, af, bf);
    d[g * 8 + 2 * t] = acc[0];
    d[g * 8 + 2 * t + 1] = acc[1];
    d[(g + 8) * 8 + 2 * t] = acc[2];
    d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

extern "C" __global__ void mma_tf32_tile(const float* __restrict__ a, const float* __restrict__ b,
                                         const float* __restrict__ c, float* __restrict__ d) {
    mma_tile<true>(a, b, c, d);
}

extern "C" __global__ void mma_tf32_tile_raw(const float* __restrict__ a, const float* __restrict__ b,
                                             const float* __restrict__ c, float* __restrict__ d) {
    mma_tile<false>(a, b, c, d);
}

extern "C" __global__ void tf32_round(const float* __restrict__ x, float* __restrict__ out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __uint_as_float(gc_tf32_bits(x[i]));
}
