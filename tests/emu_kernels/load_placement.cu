// Two double-buffered loops for the SASS load-placement check (gpuconv.profiler.sass): in late_loads
// the next value's address depends on the multiply's result, so ptxas must issue the global load
// after the FFMAs; in early_loads nothing stops it from issuing the load first.
#define STEPS_BODY(NEXT)                                                       \
    __shared__ float s[2][256];                                                \
    const int t = threadIdx.x;                                                 \
    float acc = 0.0f, v = x[t];                                                \
    for (int step = 0; step < n; ++step) {                                     \
        s[step & 1][t] = v;                                                    \
        __syncthreads();                                                       \
        NEXT                                                                   \
        for (int k = 0; k < 16; ++k) acc = fmaf(s[step & 1][(t + k) & 255], acc, 1.0f); \
        LATE                                                                   \
    }                                                                          \
    y[t] = acc + v;

extern "C" __global__ void late_loads(const float* __restrict__ x, float* __restrict__ y, int n) {
#define LATE v = x[(step + 1) * 256 + t + (acc > 1e30f)];
    STEPS_BODY()
#undef LATE
}

extern "C" __global__ void early_loads(const float* __restrict__ x, float* __restrict__ y, int n) {
#define LATE
    STEPS_BODY(v = x[(step + 1) * 256 + t];)
#undef LATE
}
