/* C interface between kernels compiled for the CPU emulator and its runtime library.
 *
 * Included by cuda_emu.h (force-included into every emulated .cu) and by runtime.cpp. The
 * runtime runs each CUDA thread of a block as a fiber on the calling OS thread; the functions
 * below are what device code calls to synchronise, and what the Python launcher calls.
 */
#ifndef GPUCONV_EMU_RUNTIME_H
#define GPUCONV_EMU_RUNTIME_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GPUCONV_EMU_ABI 2

/* Sizes written once, in gpuconv/emulator/constants.py, which passes them to every build. */
#ifndef GPUCONV_EMU_MAX_DYN_SMEM
#error "GPUCONV_EMU_MAX_DYN_SMEM must come from -D (gpuconv/emulator/constants.py defines())"
#endif
#ifndef GPUCONV_EMU_SMEM_GUARD_BYTES
#error "GPUCONV_EMU_SMEM_GUARD_BYTES must come from -D (gpuconv/emulator/constants.py defines())"
#endif
#if !defined(GPUCONV_EMU_STACK_KB_MIN) || !defined(GPUCONV_EMU_STACK_KB_MAX) || \
    !defined(GPUCONV_EMU_STACK_KB_DEFAULT) || !defined(GPUCONV_EMU_STACK_KB_DEFAULT_ASAN) || \
    !defined(GPUCONV_EMU_TIMEOUT_DEFAULT_S)
#error "GPUCONV_EMU_STACK_KB_* and GPUCONV_EMU_TIMEOUT_DEFAULT_S must come from -D (constants.py defines())"
#endif
/* Bytes of the buffer all `extern __shared__` arrays alias. */
#define GPUCONV_EMU_DYN_SMEM_TOTAL (GPUCONV_EMU_MAX_DYN_SMEM + GPUCONV_EMU_SMEM_GUARD_BYTES)

struct gpuconv_emu_dim { unsigned int x, y, z; };

/* Built-in variables of the thread that runs now (updated at every fiber switch). */
struct gpuconv_emu_state {
  struct gpuconv_emu_dim thread_idx, block_idx, block_dim, grid_dim;
};
extern struct gpuconv_emu_state gpuconv_emu_st;

enum gpuconv_emu_barrier_kind { GPUCONV_EMU_SYNC = 0, GPUCONV_EMU_SYNC_COUNT, GPUCONV_EMU_SYNC_AND,
                                GPUCONV_EMU_SYNC_OR };
enum gpuconv_emu_warp_op { GPUCONV_EMU_SYNCWARP = 0, GPUCONV_EMU_SHFL_IDX, GPUCONV_EMU_SHFL_UP,
                           GPUCONV_EMU_SHFL_DOWN, GPUCONV_EMU_SHFL_XOR, GPUCONV_EMU_BALLOT,
                           GPUCONV_EMU_ANY, GPUCONV_EMU_ALL };

/* Error codes returned by gpuconv_emu_launch (0 = success). */
enum gpuconv_emu_error {
  GPUCONV_EMU_OK = 0,
  GPUCONV_EMU_ERR_LAUNCH = 1,          /* invalid launch configuration */
  GPUCONV_EMU_ERR_BARRIER_DIVERGED = 2, /* threads wait at different __syncthreads */
  GPUCONV_EMU_ERR_BARRIER_EXITED = 3,   /* a thread exited while others wait at a barrier */
  GPUCONV_EMU_ERR_DEADLOCK = 4,
  GPUCONV_EMU_ERR_WARP = 5,             /* shuffle/vote mask, site or lane mismatch */
  GPUCONV_EMU_ERR_SMEM_OVERRUN = 6,     /* write past the requested dynamic shared memory */
  GPUCONV_EMU_ERR_ASSERT = 7,
  GPUCONV_EMU_ERR_TRAP = 8,
  GPUCONV_EMU_ERR_STACK_OVERFLOW = 9,
  GPUCONV_EMU_ERR_MEMORY_FAULT = 10,
  GPUCONV_EMU_ERR_OUT_OF_BOUNDS = 11,   /* past an argument's data or a fixed-size array */
  GPUCONV_EMU_ERR_INT_DIVISION = 12,    /* integer division by zero, or INT_MIN / -1 (SIGFPE) */
  GPUCONV_EMU_ERR_TIMEOUT = 13,         /* the launch ran longer than GPUCONV_EMU_TIMEOUT */
  GPUCONV_EMU_ERR_INTERRUPTED = 14,     /* SIGINT arrived during the launch */
  GPUCONV_EMU_ERR_SETTING = 15          /* GPUCONV_EMU_STACK_KB or GPUCONV_EMU_TIMEOUT is malformed */
};

/* How an argument slot is passed (gpuconv_emu_launch's arg_kinds). Arrays are staged: copied
 * end-aligned against an inaccessible page; writable ones are copied back after the launch. */
enum gpuconv_emu_arg_kind { GPUCONV_EMU_ARG_VALUE = 0, GPUCONV_EMU_ARG_CONST_ARRAY = 1,
                            GPUCONV_EMU_ARG_ARRAY = 2 };

/* Device side. */
int gpuconv_emu_barrier(int kind, int pred, const char* file, int line);
unsigned long long gpuconv_emu_warp(int op, unsigned int mask, unsigned long long value, int b,
                                    int width, const char* file, int line);
unsigned int gpuconv_emu_activemask(void);
void gpuconv_emu_fail(int code, const char* what, const char* file, int line)
    __attribute__((noreturn));

/* Host side (called from Python through ctypes). */
typedef void (*gpuconv_emu_entry_fn)(void** args);
typedef void* (*gpuconv_emu_smem_fn)(void);
int gpuconv_emu_abi_version(void);
/* slots[i]: the argument's value or its array's address; arg_bytes[i]: the array's size;
 * arg_kinds[i]: gpuconv_emu_arg_kind | element size << 8. stop_on_sigint: SIGINT stops the
 * launch (GPUCONV_EMU_ERR_INTERRUPTED; the caller raises KeyboardInterrupt). */
int gpuconv_emu_launch(gpuconv_emu_entry_fn entry, unsigned long long* slots,
                       const unsigned long long* arg_bytes, const unsigned int* arg_kinds, int nargs,
                       const unsigned int* grid, const unsigned int* block, size_t shared_mem,
                       int order, unsigned long long seed, const char* kernel_name,
                       gpuconv_emu_smem_fn smem, int stop_on_sigint);
const char* gpuconv_emu_error_message(void);
/* 1 + the address, relative to the kernel library, of the code where the failed launch
 * stopped (0 when unknown): Python resolves it to a source line. */
unsigned long long gpuconv_emu_error_pc(void);
size_t gpuconv_emu_symbol_size(void* address);

#ifdef __cplusplus
}
#endif

#endif
