// Force-included (g++ -include) into every .cu compiled by gpuconv's CPU emulator.
//
// Maps CUDA's qualifiers, built-in variables, vector types, math intrinsics, atomics and
// synchronisation onto plain C++ and the emulator runtime (emu_runtime.h). Device code that the
// emulator cannot run sits behind `#ifndef GPUCONV_EMU` in the kernels.
#ifndef GPUCONV_CUDA_EMU_H
#define GPUCONV_CUDA_EMU_H

#undef _FORTIFY_SOURCE
#ifndef GPUCONV_EMU
#define GPUCONV_EMU 1
#endif

#include <assert.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmath>
#include <type_traits>
#include <utility>

#include "emu_runtime.h"

// ---- qualifiers --------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __shared__ thread_local
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __cudart_builtin__

// ---- vector types ------------------------------------------------------------------------------
#define GPUCONV_EMU_VEC2(T, N, A)                                   \
  struct __attribute__((aligned(A))) N##2 { T x, y; };              \
  inline N##2 make_##N##2(T x, T y) { N##2 r; r.x = x; r.y = y; return r; }
#define GPUCONV_EMU_VEC3(T, N)                                      \
  struct N##3 { T x, y, z; };                                       \
  inline N##3 make_##N##3(T x, T y, T z) { N##3 r; r.x = x; r.y = y; r.z = z; return r; }
#define GPUCONV_EMU_VEC4(T, N, A)                                   \
  struct __attribute__((aligned(A))) N##4 { T x, y, z, w; };        \
  inline N##4 make_##N##4(T x, T y, T z, T w) { N##4 r; r.x = x; r.y = y; r.z = z; r.w = w; return r; }

GPUCONV_EMU_VEC2(float, float, 8)
GPUCONV_EMU_VEC3(float, float)
GPUCONV_EMU_VEC4(float, float, 16)
GPUCONV_EMU_VEC2(double, double, 16)
GPUCONV_EMU_VEC3(double, double)
GPUCONV_EMU_VEC4(double, double, 16)
GPUCONV_EMU_VEC2(int, int, 8)
GPUCONV_EMU_VEC3(int, int)
GPUCONV_EMU_VEC4(int, int, 16)
GPUCONV_EMU_VEC2(unsigned int, uint, 8)
GPUCONV_EMU_VEC3(unsigned int, uint)
GPUCONV_EMU_VEC4(unsigned int, uint, 16)
GPUCONV_EMU_VEC2(long long, longlong, 16)
GPUCONV_EMU_VEC2(unsigned long long, ulonglong, 16)
GPUCONV_EMU_VEC2(short, short, 4)
GPUCONV_EMU_VEC4(short, short, 8)
GPUCONV_EMU_VEC2(signed char, char, 2)
GPUCONV_EMU_VEC4(signed char, char, 4)
GPUCONV_EMU_VEC2(unsigned char, uchar, 2)
GPUCONV_EMU_VEC4(unsigned char, uchar, 4)

struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  operator uint3() const { return make_uint3(x, y, z); }
};

// ---- built-in variables (those of the fiber that runs now) -------------------------------------
#define threadIdx (reinterpret_cast<const uint3&>(gpuconv_emu_st.thread_idx))
#define blockIdx (reinterpret_cast<const uint3&>(gpuconv_emu_st.block_idx))
#define blockDim (reinterpret_cast<const dim3&>(gpuconv_emu_st.block_dim))
#define gridDim (reinterpret_cast<const dim3&>(gpuconv_emu_st.grid_dim))
#define warpSize 32

// ---- assertions and traps ----------------------------------------------------------------------
// assert is the C library's (from <assert.h>, honouring NDEBUG, whether or not the kernel includes
// <assert.h>/<cassert> itself): kernel modules are linked with __assert_fail, exit and abort
// redirected to the runtime, which ends the launch with an error naming the thread.

inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  gpuconv_emu_fail(GPUCONV_EMU_ERR_TRAP, "__trap() called", file, line);
}
inline void __brkpt(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  gpuconv_emu_fail(GPUCONV_EMU_ERR_TRAP, "__brkpt() called", file, line);
}

// A vector access (LDG/STG/LDS/STS.64 and .128) needs an address aligned to its size: on the GPU a
// misaligned one ends the kernel with cudaErrorMisalignedAddress, which the CPU cannot show by
// itself (x86 loads any address), so the vector helpers of common.cuh ask here first.
inline void gpuconv_emu_check_aligned(const void* p, unsigned long bytes,
                                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  if (reinterpret_cast<unsigned long>(p) % bytes != 0)
    gpuconv_emu_fail(GPUCONV_EMU_ERR_MEMORY_FAULT, "misaligned vector access", file, line);
}

// ---- block and warp synchronisation ------------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  gpuconv_emu_barrier(GPUCONV_EMU_SYNC, 1, file, line);
}
inline int __syncthreads_count(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return gpuconv_emu_barrier(GPUCONV_EMU_SYNC_COUNT, pred != 0, file, line);
}
inline int __syncthreads_and(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return gpuconv_emu_barrier(GPUCONV_EMU_SYNC_AND, pred != 0, file, line);
}
inline int __syncthreads_or(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return gpuconv_emu_barrier(GPUCONV_EMU_SYNC_OR, pred != 0, file, line);
}
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
inline void __nanosleep(unsigned int) {}

namespace gpuconv_emu {
template <class T>
inline unsigned long long to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "warp shuffles take 1- to 8-byte trivially copyable values");
  unsigned long long b = 0;
  memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(unsigned long long b) {
  T v;
  memcpy(&v, &b, sizeof(T));
  return v;
}
}  // namespace gpuconv_emu

inline void __syncwarp(unsigned int mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  gpuconv_emu_warp(GPUCONV_EMU_SYNCWARP, mask, 0, 0, 32, file, line);
}
template <class T>
inline T __shfl_sync(unsigned int mask, T var, int srcLane, int width = warpSize,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return gpuconv_emu::from_bits<T>(
      gpuconv_emu_warp(GPUCONV_EMU_SHFL_IDX, mask, gpuconv_emu::to_bits(var), srcLane, width, file, line));
}
template <class T>
inline T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return gpuconv_emu::from_bits<T>(
      gpuconv_emu_warp(GPUCONV_EMU_SHFL_UP, mask, gpuconv_emu::to_bits(var), (int)delta, width, file, line));
}
template <class T>
inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return gpuconv_emu::from_bits<T>(
      gpuconv_emu_warp(GPUCONV_EMU_SHFL_DOWN, mask, gpuconv_emu::to_bits(var), (int)delta, width, file, line));
}
template <class T>
inline T __shfl_xor_sync(unsigned int mask, T var, int laneMask, int width = warpSize,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return gpuconv_emu::from_bits<T>(
      gpuconv_emu_warp(GPUCONV_EMU_SHFL_XOR, mask, gpuconv_emu::to_bits(var), laneMask, width, file, line));
}
inline unsigned int __ballot_sync(unsigned int mask, int pred, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return (unsigned int)gpuconv_emu_warp(GPUCONV_EMU_BALLOT, mask, pred != 0, 0, 32, file, line);
}
inline int __any_sync(unsigned int mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return (int)gpuconv_emu_warp(GPUCONV_EMU_ANY, mask, pred != 0, 0, 32, file, line);
}
inline int __all_sync(unsigned int mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return (int)gpuconv_emu_warp(GPUCONV_EMU_ALL, mask, pred != 0, 0, 32, file, line);
}
inline unsigned int __activemask() { return gpuconv_emu_activemask(); }

// ---- atomics (threads of a block never run concurrently: plain read-modify-write) ---------------
#define GPUCONV_EMU_ATOMIC(NAME, T, EXPR)          \
  inline T NAME(T* address, T val) {              \
    T old = *address;                             \
    *address = (EXPR);                            \
    return old;                                   \
  }                                               \
  inline T NAME##_block(T* address, T val) { return NAME(address, val); } \
  inline T NAME##_system(T* address, T val) { return NAME(address, val); }

GPUCONV_EMU_ATOMIC(atomicAdd, int, old + val)
GPUCONV_EMU_ATOMIC(atomicAdd, unsigned int, old + val)
GPUCONV_EMU_ATOMIC(atomicAdd, unsigned long long, old + val)
GPUCONV_EMU_ATOMIC(atomicAdd, float, old + val)
GPUCONV_EMU_ATOMIC(atomicAdd, double, old + val)
GPUCONV_EMU_ATOMIC(atomicSub, int, old - val)
GPUCONV_EMU_ATOMIC(atomicSub, unsigned int, old - val)
GPUCONV_EMU_ATOMIC(atomicExch, int, val)
GPUCONV_EMU_ATOMIC(atomicExch, unsigned int, val)
GPUCONV_EMU_ATOMIC(atomicExch, unsigned long long, val)
GPUCONV_EMU_ATOMIC(atomicExch, float, val)
GPUCONV_EMU_ATOMIC(atomicMin, int, val < old ? val : old)
GPUCONV_EMU_ATOMIC(atomicMin, unsigned int, val < old ? val : old)
GPUCONV_EMU_ATOMIC(atomicMin, long long, val < old ? val : old)
GPUCONV_EMU_ATOMIC(atomicMin, unsigned long long, val < old ? val : old)
GPUCONV_EMU_ATOMIC(atomicMax, int, val > old ? val : old)
GPUCONV_EMU_ATOMIC(atomicMax, unsigned int, val > old ? val : old)
GPUCONV_EMU_ATOMIC(atomicMax, long long, val > old ? val : old)
GPUCONV_EMU_ATOMIC(atomicMax, unsigned long long, val > old ? val : old)
GPUCONV_EMU_ATOMIC(atomicAnd, int, old & val)
GPUCONV_EMU_ATOMIC(atomicAnd, unsigned int, old & val)
GPUCONV_EMU_ATOMIC(atomicAnd, unsigned long long, old & val)
GPUCONV_EMU_ATOMIC(atomicOr, int, old | val)
GPUCONV_EMU_ATOMIC(atomicOr, unsigned int, old | val)
GPUCONV_EMU_ATOMIC(atomicOr, unsigned long long, old | val)
GPUCONV_EMU_ATOMIC(atomicXor, int, old ^ val)
GPUCONV_EMU_ATOMIC(atomicXor, unsigned int, old ^ val)
GPUCONV_EMU_ATOMIC(atomicXor, unsigned long long, old ^ val)
GPUCONV_EMU_ATOMIC(atomicInc, unsigned int, old >= val ? 0u : old + 1u)
GPUCONV_EMU_ATOMIC(atomicDec, unsigned int, (old == 0u || old > val) ? val : old - 1u)

#define GPUCONV_EMU_ATOMIC_CAS(T)                                        \
  inline T atomicCAS(T* address, T compare, T val) {                     \
    T old = *address;                                                    \
    if (old == compare) *address = val;                                  \
    return old;                                                          \
  }                                                                      \
  inline T atomicCAS_block(T* a, T c, T v) { return atomicCAS(a, c, v); } \
  inline T atomicCAS_system(T* a, T c, T v) { return atomicCAS(a, c, v); }
GPUCONV_EMU_ATOMIC_CAS(int)
GPUCONV_EMU_ATOMIC_CAS(unsigned int)
GPUCONV_EMU_ATOMIC_CAS(unsigned long long)
GPUCONV_EMU_ATOMIC_CAS(unsigned short)

// ---- loads ---------------------------------------------------------------------------------------
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---- min / max (CUDA's overloads: the usual arithmetic conversions; fmin/fmax for floating) ------
template <class A, class B>
inline typename std::enable_if<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value,
                               typename std::common_type<A, B>::type>::type
min(A a, B b) {
  typedef typename std::common_type<A, B>::type C;
  if constexpr (std::is_floating_point<C>::value) return std::fmin((C)a, (C)b);
  else return (C)a < (C)b ? (C)a : (C)b;
}
template <class A, class B>
inline typename std::enable_if<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value,
                               typename std::common_type<A, B>::type>::type
max(A a, B b) {
  typedef typename std::common_type<A, B>::type C;
  if constexpr (std::is_floating_point<C>::value) return std::fmax((C)a, (C)b);
  else return (C)a > (C)b ? (C)a : (C)b;
}

// ---- type punning and integer intrinsics --------------------------------------------------------
namespace gpuconv_emu {
template <class To, class From>
inline To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between different sizes");
  To r;
  memcpy(&r, &v, sizeof r);
  return r;
}
}  // namespace gpuconv_emu

inline int __float_as_int(float x) { return gpuconv_emu::bit_cast<int>(x); }
inline unsigned int __float_as_uint(float x) { return gpuconv_emu::bit_cast<unsigned int>(x); }
inline float __int_as_float(int x) { return gpuconv_emu::bit_cast<float>(x); }
inline float __uint_as_float(unsigned int x) { return gpuconv_emu::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return gpuconv_emu::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return gpuconv_emu::bit_cast<double>(x); }
inline int __double2hiint(double x) { return (int)(__double_as_longlong(x) >> 32); }
inline int __double2loint(double x) { return (int)(unsigned int)__double_as_longlong(x); }
inline double __hiloint2double(int hi, int lo) {
  return __longlong_as_double((long long)(((unsigned long long)(unsigned int)hi << 32) | (unsigned int)lo));
}

inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
  unsigned int r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned long long __brevll(unsigned long long x) {
  return ((unsigned long long)__brev((unsigned int)x) << 32) | __brev((unsigned int)(x >> 32));
}
inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
  const unsigned long long v = ((unsigned long long)y << 32) | x;
  unsigned int r = 0;
  for (int i = 0; i < 4; ++i) r |= (unsigned int)((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xFFu) << (8 * i);
  return r;
}
inline int __mul24(int x, int y) { return ((x << 8) >> 8) * ((y << 8) >> 8); }
inline unsigned int __umul24(unsigned int x, unsigned int y) { return (x & 0xFFFFFFu) * (y & 0xFFFFFFu); }
inline int __mulhi(int x, int y) { return (int)(((long long)x * y) >> 32); }
inline unsigned int __umulhi(unsigned int x, unsigned int y) {
  return (unsigned int)(((unsigned long long)x * y) >> 32);
}
inline long long __mul64hi(long long x, long long y) { return (long long)(((__int128)x * y) >> 64); }
inline unsigned long long __umul64hi(unsigned long long x, unsigned long long y) {
  return (unsigned long long)(((unsigned __int128)x * y) >> 64);
}
inline int __hadd(int x, int y) { return (int)(((long long)x + y) >> 1); }
inline int __rhadd(int x, int y) { return (int)(((long long)x + y + 1) >> 1); }
inline unsigned int __sad(int x, int y, unsigned int z) { return z + (unsigned int)(x > y ? x - y : y - x); }
inline unsigned int __usad(unsigned int x, unsigned int y, unsigned int z) { return z + (x > y ? x - y : y - x); }

// ---- floating-point intrinsics (host libm: may differ from CUDA by an ulp or two) ---------------
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline double rcbrt(double x) { return 1.0 / cbrt(x); }
inline float sinpif(float x) { return sinf((float)M_PI * x); }
inline float cospif(float x) { return cosf((float)M_PI * x); }
inline double sinpi(double x) { return sin(M_PI * x); }
inline double cospi(double x) { return cos(M_PI * x); }
inline float normcdff(float x) { return 0.5f * erfcf(-x * (float)M_SQRT1_2); }
inline double normcdf(double x) { return 0.5 * erfc(-x * M_SQRT1_2); }
inline float fdividef(float a, float b) { return a / b; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) { sincosf(x, s, c); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __frsqrt_rn(float a) { return 1.0f / sqrtf(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline double __dsqrt_rn(double a) { return sqrt(a); }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)truncf(x); }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline unsigned int __float2uint_rn(float x) { return (unsigned int)nearbyintf(x); }
inline unsigned int __float2uint_rz(float x) { return (unsigned int)truncf(x); }
inline long long __float2ll_rn(float x) { return (long long)nearbyintf(x); }
inline long long __float2ll_rz(float x) { return (long long)truncf(x); }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned int x) { return (float)x; }
inline float __ll2float_rn(long long x) { return (float)x; }
inline double __int2double_rn(int x) { return (double)x; }
inline int __double2int_rn(double x) { return (int)nearbyint(x); }
inline int __double2int_rz(double x) { return (int)trunc(x); }
inline float __double2float_rn(double x) { return (float)x; }
inline long long __double2ll_rn(double x) { return (long long)nearbyint(x); }

// ---- printf, clock -------------------------------------------------------------------------------
inline long long clock64() {
  static long long ticks = 0;
  return ++ticks;
}

// ---- glue used by the generated per-module wrappers ----------------------------------------------
namespace gpuconv_emu {

template <class T> struct code { static const char* get() { return "?"; } };
#define GPUCONV_EMU_CODE(T, S) \
  template <> struct code<T> { static const char* get() { return S; } };
GPUCONV_EMU_CODE(void, "void")
GPUCONV_EMU_CODE(bool, "bool")
GPUCONV_EMU_CODE(char, "char")
GPUCONV_EMU_CODE(signed char, "i8")
GPUCONV_EMU_CODE(unsigned char, "u8")
GPUCONV_EMU_CODE(short, "i16")
GPUCONV_EMU_CODE(unsigned short, "u16")
GPUCONV_EMU_CODE(int, "i32")
GPUCONV_EMU_CODE(unsigned int, "u32")
GPUCONV_EMU_CODE(long, "i64")
GPUCONV_EMU_CODE(unsigned long, "u64")
GPUCONV_EMU_CODE(long long, "i64")
GPUCONV_EMU_CODE(unsigned long long, "u64")
GPUCONV_EMU_CODE(float, "f32")
GPUCONV_EMU_CODE(double, "f64")
GPUCONV_EMU_CODE(float2, "float2")
GPUCONV_EMU_CODE(float4, "float4")
GPUCONV_EMU_CODE(double2, "double2")
GPUCONV_EMU_CODE(double4, "double4")
GPUCONV_EMU_CODE(int2, "int2")
GPUCONV_EMU_CODE(int4, "int4")
GPUCONV_EMU_CODE(uint2, "uint2")
GPUCONV_EMU_CODE(uint4, "uint4")

inline void append(char* buf, size_t n, const char* s) { strncat(buf, s, n - strlen(buf) - 1); }

template <class T>
void param_code(char* buf, size_t n) {
  typedef typename std::remove_cv<T>::type P;
  if constexpr (std::is_pointer<P>::value) {
    typedef typename std::remove_pointer<P>::type E;
    append(buf, n, std::is_const<E>::value ? "*c" : "*");
    append(buf, n, code<typename std::remove_cv<E>::type>::get());
  } else {
    append(buf, n, code<P>::get());
  }
}

template <class... A, size_t... I>
inline void call(void (*f)(A...), void** args, std::index_sequence<I...>) {
  f(*static_cast<typename std::remove_cv<typename std::remove_reference<A>::type>::type*>(args[I])...);
}
template <class... A>
inline void call(void (*f)(A...), void** args) {
  call(f, args, std::index_sequence_for<A...>());
}
template <class... A>
void kernel_signature(void (*)(A...), char* buf, size_t n) {
  int i = 0;
  append(buf, n, "K");
  ((append(buf, n, i++ ? "," : ":"), param_code<A>(buf, n)), ...);
  (void)i;
}
template <class T>
void global_signature(char* buf, size_t n) {
  typedef typename std::remove_all_extents<T>::type E;
  snprintf(buf, n, "G:%s:%zu", code<typename std::remove_cv<E>::type>::get(), sizeof(T));
}

template <class T> struct is_kernel : std::false_type {};
template <class... A> struct is_kernel<void (*)(A...)> : std::true_type {};

template <auto P>
void entry(void** args) {
  call(P, args);
}

// Describes the entity named by a kernel name or name expression.
template <auto P>
void describe(void** entry_out, const char** sig_out, void** addr_out) {
  static char sig[2048];
  sig[0] = 0;
  if constexpr (is_kernel<decltype(P)>::value) {
    *entry_out = (void*)&entry<P>;
    kernel_signature(P, sig, sizeof sig);
  } else {
    *entry_out = nullptr;
    global_signature<typename std::remove_pointer<decltype(P)>::type>(sig, sizeof sig);
  }
  *sig_out = sig;
  *addr_out = (void*)P;
}

}  // namespace gpuconv_emu

#endif
