// Kernels that would end, hang or corrupt the process without the emulator's guards
// (tests/test_emulator_faults.py). Marked lines are found by their "// @name" comments.
#include <assert.h>
#include <cassert>
#include <stdio.h>
#include <stdlib.h>

#include <stdexcept>

extern "C" __global__ void divide(int* p, int d) {
  p[threadIdx.x] = p[threadIdx.x] / d;  // @divide
}

extern "C" __global__ void remainder_of(int* p, int d) {
  p[threadIdx.x] = p[threadIdx.x] % d;  // @remainder
}

extern "C" __global__ void checked(const int* p) {
  assert(p[threadIdx.x] >= 0);  // @assert_h
}

// what: 0 exit, 1 abort, 2 std::exit, 3 _Exit, 4 quick_exit, 5 throw, 6 __builtin_trap
extern "C" __global__ void ends_process(int what) {
  if (threadIdx.x != 1) return;
  if (what == 0) exit(3);  // @exit
  if (what == 1) abort();  // @abort
  if (what == 2) std::exit(4);  // @std_exit
  if (what == 3) _Exit(5);  // @_Exit
  if (what == 4) quick_exit(6);  // @quick_exit
  if (what == 5) throw std::runtime_error("device code threw");
  if (what == 6) __builtin_trap();  // @builtin_trap
}

// Loops while p[0] == 0 (volatile: a loop without side effects may be assumed to end).
extern "C" __global__ void spin(int* p, int how) {
  volatile int* flag = p;
  if (how == 0) {
    while (flag[0] == 0) {  // @spin
    }
  } else if (how == 1) {
    while (flag[0] == 0) printf("%s", "");  // inside the C library most of the time
  } else {
    while (flag[0] == 0) __syncthreads();
  }
}

extern "C" __global__ void touch(int* p) { p[threadIdx.x] += 1; }

// Puts kib KiB of locals on the thread's stack, then calls printf.
extern "C" __global__ void uses_stack(double* out, int kib) {
  volatile char* local = (volatile char*)__builtin_alloca(kib * 1024);
  for (int i = 0; i < kib * 1024; i += 512) local[i] = (char)(i >> 9);
  out[threadIdx.x] = local[kib * 1024 - 512] + threadIdx.x;
  if (threadIdx.x == 0) printf("stack ok %g %e\n", out[0], 1.0 / 3.0);
}

extern "C" __global__ void static_shared_overrun(float* out, int offset) {
  __shared__ float tile[64];
  tile[threadIdx.x + offset] = 1.0f;  // @static_smem
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x];
}

extern "C" __global__ void local_array_overrun(float* out, int index) {
  float acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = (float)i;
  out[threadIdx.x] = acc[index];  // @local_array
}

extern "C" __global__ void dynamic_shared_access(float* out, int index, int write) {
  extern __shared__ float dyn[];
  if (write) dyn[index] = 1.0f;  // @dyn_write
  else out[0] = dyn[index];      // @dyn_read
}

extern "C" __global__ void copy_offset(const float* x, float* y, int n, int offset) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i + offset];  // @copy_read
}

extern "C" __global__ void store_offset(float* y, int n, int offset) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i + offset] = (float)i;  // @store
}

// out[i] = in[i] + 1, thread by thread: with out one element after in in the same buffer, each
// thread reads what the one before it wrote.
extern "C" __global__ void chain(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i] + 1.0f;
}

extern "C" __global__ void writes_through_const(const float* x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) const_cast<float*>(x)[i] = -1.0f;
}

extern "C" __global__ void fill(float* y, float v, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = v;
}

// The kernel names an emulator could generate for its own glue.
extern "C" __global__ void s(int* p) { p[0] = 1; }
extern "C" __global__ void e(int* p) { p[1] = 2; }
extern "C" __global__ void a(int* p) { p[2] = 3; }
extern "C" __global__ void entry(int* p) { p[3] = 4; }
extern "C" __global__ void describe(int* p) { p[4] = 5; }
extern "C" __global__ void manifest(int* p) { p[5] = 6; }
