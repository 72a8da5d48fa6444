// Kernels whose memory-access figures are textbook answers, for gpuconv.emulator.profile.
// Lines the tests look up are marked // @tag.

// y[t] = x[t * stride + offset], one request per warp.
extern "C" __global__ void strided_load(const float* x, float* y, int stride, int offset) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = x[t * stride + offset];  // @strided
    y[t] = v;                                // @store
}

// 16 bytes per lane.
extern "C" __global__ void vec4_copy(const float4* x, float4* y) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    y[t] = x[t];  // @vec4
}

// Only the even lanes load: 16 active lanes per warp.
extern "C" __global__ void divergent_load(const float* x, float* y) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t % 2 == 0) y[t] = x[t];  // @divergent
}

// Every lane reads the same global and shared word.
extern "C" __global__ void broadcast(const float* x, float* y) {
    __shared__ float s[32];
    const int t = threadIdx.x;
    s[t] = x[t];
    __syncthreads();
    y[t] = s[0] + x[0];  // @broadcast
}

// A 32 x 32 float tile written by rows, then read by columns: with LD = 32 every lane of a column
// read hits the same bank; LD = 33 spreads them over all 32 banks.
template <int LD>
__global__ void column_read(const float* x, float* y) {
    __shared__ float tile[32][LD];
    const int t = threadIdx.x;
    for (int r = 0; r < 32; ++r) tile[r][t] = x[r * 32 + t];  // @row_write
    __syncthreads();
    float acc = 0.0f;
    for (int c = 0; c < 32; ++c) acc += tile[t][c];  // @column_read
    y[t] = acc;
}

// 8- and 16-byte shared accesses by consecutive lanes: 2 and 4 wavefronts, the ideal.
extern "C" __global__ void wide_shared(const double* x, double* y) {
    __shared__ double2 s[64];
    const int t = threadIdx.x;
    double* d = reinterpret_cast<double*>(s);
    d[t] = x[t];         // @wide8
    __syncthreads();
    const double2 v = s[t];  // @wide16
    y[t] = v.x + v.y;
}

// y[t] = s[idx[t]] for 8-byte words of shared memory (32 threads), and a 16-byte broadcast.
extern "C" __global__ void shared_gather8(const int* idx, const double* x, double* y) {
    __shared__ double s[64];
    const int t = threadIdx.x;
    s[t] = x[t];
    s[t + 32] = x[t + 32];
    __syncthreads();
    const double v = s[idx[t]];  // @gather8
    const double2 b = reinterpret_cast<const double2*>(s)[0];  // @broadcast16
    y[t] = v + b.x + b.y;
}
