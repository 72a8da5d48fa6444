// A vector copy through common.cuh's gc_vec4_at at an element offset the caller picks
// (tests/test_emulator_faults.py): aligned offsets copy, misaligned ones fault as on the GPU.
#include "../../cuda/common.cuh"

extern "C" __global__ void copy_vec4_float(const float* x, float* y, int offset) {
  *gc_vec4_at(&y[offset]) = *gc_vec4_at(&x[offset]);  // @vec4_float
}

extern "C" __global__ void copy_vec4_double(const double* x, double* y, int offset) {
  *gc_vec4_at(&y[offset]) = *gc_vec4_at(&x[offset]);  // @vec4_double
}
