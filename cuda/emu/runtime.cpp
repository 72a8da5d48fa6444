// Runtime of the CPU emulator: runs every CUDA thread of a block as a fiber on the calling OS
// thread, blocks one after another, and checks barriers, warp collectives and shared memory.
//
// Switching uses _setjmp/_longjmp after one makecontext per fiber (swapcontext with sanitizer
// fiber annotations in the AddressSanitizer build). All state lives in ordinary globals, never in
// TLS: the kernel module's TLS block is the block's shared memory. Launches are serialised by the
// caller (Python holds a lock).
//
// Nothing a kernel does ends the process. During a launch the runtime catches, on the launching
// thread and only while a fiber runs: SIGSEGV/SIGBUS (bad pointers, guard pages), SIGFPE
// (integer division), SIGILL (__builtin_trap) and SIGABRT; kernel calls of exit/abort/
// __assert_fail come here through the linker's --wrap; a C++ exception is caught where the
// fiber starts the kernel. Each becomes an error code, a message naming kernel, block and
// thread, and the kernel-library address of the code that failed (Python turns it into a
// source line). A per-thread timer stops a launch at its time limit and SIGINT stops it on
// request; both jump out of the kernel only when it runs its own code (never inside the C
// library, whose locks it may hold), and otherwise at the next fiber switch.
#undef _FORTIFY_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <assert.h>
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include <unwind.h>

#include <exception>

#include "emu_runtime.h"

#ifdef GPUCONV_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace {

enum { ST_READY, ST_BARRIER, ST_WARP, ST_EXITED };
enum { ORDER_FORWARD = 0, ORDER_REVERSE = 1, ORDER_RANDOM = 2 };
enum { STOP_NONE = 0, STOP_TIMEOUT = 1, STOP_INTERRUPT = 2 };

constexpr int kMaxThreads = 1024;
constexpr int kMaxArgs = 4096;
constexpr size_t kGuard = 64 * 1024;
constexpr size_t kStagger = 32 * 1024;  // stack tops are staggered by up to this, on top of the stack
constexpr unsigned char kPoison = 0xFF;
constexpr unsigned char kCanary = 0xCB;
constexpr size_t kQuickCanary = 64;
constexpr size_t kArgAlign = 16;        // staged arrays keep the caller's address modulo this many bytes
constexpr size_t kEdgeCheck = 64;       // canary bytes next to an argument checked after each block
constexpr size_t kArgGuard = 64 * 1024;    // inaccessible bytes before and after each staged array
constexpr size_t kRetainBytes = 64u << 20;  // staging regions larger than this are unmapped after a launch
constexpr long kRetryNs = 10 * 1000 * 1000;  // a pending stop is retried this often

struct Fiber {
  char* mem = nullptr;  // guard pages, then the stack
  size_t mem_size = 0;
  char* stack_lo = nullptr;
  size_t stack_size = 0;  // the usable stack the launch asked for
  size_t region = 0;      // bytes from stack_lo to the end of the mapping
  bool ready = false;
  jmp_buf jb;
  ucontext_t uc;
#ifdef GPUCONV_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

struct Thread {
  int state;
  unsigned linear;
  gpuconv_emu_dim tid;
  const char* file;
  int line;
  int kind;  // barrier kind or warp op
  int pred;
  unsigned mask;
  unsigned long long value;
  int b;
  int width;
  unsigned long long result;
};

Fiber g_fibers[kMaxThreads];
Thread g_threads[kMaxThreads];
Thread* g_cur = nullptr;
Fiber* g_cur_fiber = nullptr;
sigjmp_buf g_launch_jb;
#ifdef GPUCONV_EMU_ASAN
ucontext_t g_sched_uc;
#else
jmp_buf g_sched_jb;
#endif
gpuconv_emu_entry_fn g_entry = nullptr;
void** g_args = nullptr;
volatile sig_atomic_t g_in_fiber = 0;
volatile sig_atomic_t g_launch_active = 0;
pthread_t g_launch_thread;
int g_err_code = 0;
char g_err[4096];
unsigned long long g_err_pc = 0;
const char* g_kernel = "";
unsigned g_nthreads = 0;
uint64_t g_blocks_done = 0, g_nblocks = 0;
size_t g_page = 4096;

// Settings of the launch (read_settings), and whether SIGINT stops it.
size_t g_stack_size = 0;
double g_timeout_s = 0;  // <= 0: no limit
int g_stop_on_sigint = 0;

#ifdef GPUCONV_EMU_ASAN
int g_fail_from_fiber = 0;
void* g_sched_fake = nullptr;
const void* g_main_bottom = nullptr;
size_t g_main_size = 0;
#endif

// The arguments of the launch (gpuconv_emu_launch).
unsigned long long* g_slots = nullptr;
const unsigned long long* g_arg_bytes = nullptr;
const unsigned int* g_arg_kinds = nullptr;
int g_nargs = 0;

// The kernel library of the launch: its load address and the range of its code.
uintptr_t g_mod_base = 0, g_mod_lo = 0, g_mod_hi = 0;

const char* const kBarrierNames[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and",
                                     "__syncthreads_or"};
const char* const kWarpNames[] = {"__syncwarp",      "__shfl_sync",   "__shfl_up_sync",
                                  "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync",
                                  "__any_sync",       "__all_sync"};

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// memset that never touches memory for n == 0: the C library's vector memset/memcmp use masked
// accesses for short lengths, which are very slow (a microcode assist) when they reach into a
// PROT_NONE guard page, as the end of a staged array or of the requested shared memory does.
inline void fill(void* p, int c, size_t n) {
  if (n) memset(p, c, n);
}

unsigned char g_canary_block[4096];  // filled with kCanary by the first launch

static_assert(kCanary == 0xCB, "damaged() compares words of the canary byte");

long damaged_at(const char* from, const char* to) {
  for (const char* p = from; p < to; p += sizeof g_canary_block) {
    const size_t n = (size_t)(to - p) < sizeof g_canary_block ? (size_t)(to - p) : sizeof g_canary_block;
    if (memcmp(p, g_canary_block, n) == 0) continue;
    for (size_t i = 0; i < n; ++i)
      if ((unsigned char)p[i] != kCanary) return (long)(p + i - from);
  }
  return -1;
}

// Offset of the first byte in [from, to) that is not the canary, or -1. Short ranges (the checks
// after every fiber switch and block, often just before a guard page) are compared word by word,
// not by memcmp (see fill).
inline long damaged(const char* from, const char* to) {
  if (to - from > 64) return damaged_at(from, to);
  const char* p = from;
  for (; p + 8 <= to; p += 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    if (w != 0xCBCBCBCBCBCBCBCBull) return damaged_at(p, to) + (p - from);
  }
  for (; p < to; ++p)
    if ((unsigned char)*p != kCanary) return (long)(p - from);
  return -1;
}

bool on_launch_thread() { return pthread_equal(pthread_self(), g_launch_thread); }
bool in_kernel() { return g_in_fiber && g_cur && on_launch_thread(); }
bool in_module(uintptr_t pc) { return pc >= g_mod_lo && pc < g_mod_hi; }

// ---- settings from the environment --------------------------------------------------------------

// The value of `name` as last parsed (a copy), so that it is parsed again only when it changes.
struct Setting {
  const char* name;
  char last[64];
  bool parsed;
};
Setting g_stack_setting = {"GPUCONV_EMU_STACK_KB", "", false};
Setting g_timeout_setting = {"GPUCONV_EMU_TIMEOUT", "", false};

// The variable's value ("" when unset) when it differs from the last one parsed, else null.
const char* changed(Setting* s) {
  const char* v = getenv(s->name);
  if (!v) v = "";
  if (s->parsed && strlen(v) < sizeof s->last && strcmp(v, s->last) == 0) return nullptr;
  snprintf(s->last, sizeof s->last, "%s", v);
  s->parsed = false;
  return v;
}

// Reads GPUCONV_EMU_STACK_KB and GPUCONV_EMU_TIMEOUT; false (message in g_err) when one is malformed.
bool read_settings() {
  if (const char* v = changed(&g_stack_setting)) {
#ifdef GPUCONV_EMU_ASAN
    long kib = GPUCONV_EMU_STACK_KB_DEFAULT_ASAN;
#else
    long kib = GPUCONV_EMU_STACK_KB_DEFAULT;
#endif
    char* end = nullptr;
    if (*v) kib = strtol(v, &end, 10);
    if (*v && (end == v || *end || kib < (long)GPUCONV_EMU_STACK_KB_MIN || kib > (long)GPUCONV_EMU_STACK_KB_MAX)) {
      snprintf(g_err, sizeof g_err, "GPUCONV_EMU_STACK_KB must be an integer number of KiB in %u..%u, got '%s'",
               GPUCONV_EMU_STACK_KB_MIN, GPUCONV_EMU_STACK_KB_MAX, v);
      return false;
    }
    g_stack_size = (size_t)kib * 1024;
    g_stack_setting.parsed = true;
  }
  if (const char* v = changed(&g_timeout_setting)) {
    double t = GPUCONV_EMU_TIMEOUT_DEFAULT_S;
    char* end = nullptr;
    if (*v) t = strtod(v, &end);
    if (*v && (end == v || *end || !(t > 0))) {  // !(t > 0) also refuses nan
      snprintf(g_err, sizeof g_err, "GPUCONV_EMU_TIMEOUT must be a positive number of seconds (or inf for no "
               "limit), got '%s'", v);
      return false;
    }
    g_timeout_s = t;
    g_timeout_setting.parsed = true;
  }
  return true;
}

// ---- where the kernel was -----------------------------------------------------------------------

uintptr_t context_pc(void* ucv) {
  const ucontext_t* uc = (const ucontext_t*)ucv;
#if defined(__x86_64__)
  return (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
  return (uintptr_t)uc->uc_mcontext.pc;
#else
  (void)uc;
  return 0;
#endif
}

struct FrameSearch {
  uintptr_t pc;
};

_Unwind_Reason_Code frame_cb(struct _Unwind_Context* ctx, void* arg) {
  FrameSearch* s = (FrameSearch*)arg;
  int before = 0;
  uintptr_t ip = (uintptr_t)_Unwind_GetIPInfo(ctx, &before);
  if (!before && ip) --ip;  // a return address: the call is the byte before
  if (in_module(ip)) {
    s->pc = ip;
    return _URC_END_OF_STACK;
  }
  return _URC_NO_REASON;
}

// Records the innermost kernel-library frame (pc of the signal context when it is one, else found
// by unwinding the stack) for the error message.
void record_kernel_pc(uintptr_t pc) {
  FrameSearch s = {0};
  if (in_module(pc)) s.pc = pc;
  else _Unwind_Backtrace(frame_cb, &s);
  g_err_pc = s.pc ? (unsigned long long)(s.pc - g_mod_base) + 1 : 0;
}

// ---- messages ---------------------------------------------------------------------------------

int where(char* buf, size_t n, const Thread* t) {
  const gpuconv_emu_dim& b = gpuconv_emu_st.block_idx;
  if (!t) return snprintf(buf, n, "kernel '%s' block (%u,%u,%u)", g_kernel, b.x, b.y, b.z);
  return snprintf(buf, n, "kernel '%s' block (%u,%u,%u) thread (%u,%u,%u)", g_kernel, b.x, b.y, b.z, t->tid.x,
                  t->tid.y, t->tid.z);
}

void jump_to_launcher() __attribute__((noreturn));
void jump_to_launcher() {
#ifdef GPUCONV_EMU_ASAN
  g_fail_from_fiber = g_in_fiber;
  if (g_in_fiber) __sanitizer_start_switch_fiber(nullptr, g_main_bottom, g_main_size);
#endif
  siglongjmp(g_launch_jb, 1);
}

// Records an error about thread `t` (may be null) without leaving.
void record(int code, const Thread* t, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
void vrecord(int code, const Thread* t, const char* fmt, va_list ap) {
  int n = where(g_err, sizeof g_err, t);
  n += snprintf(g_err + n, sizeof g_err - n, ": ");
  vsnprintf(g_err + n, sizeof g_err - n, fmt, ap);
  g_err_code = code;
}
void record(int code, const Thread* t, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vrecord(code, t, fmt, ap);
  va_end(ap);
}

// Records an error about thread `t` (may be null) and leaves the launch.
void fail(int code, const Thread* t, const char* fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
void fail(int code, const Thread* t, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vrecord(code, t, fmt, ap);
  va_end(ap);
  jump_to_launcher();
}

// ---- stopping a launch (time limit, SIGINT) -------------------------------------------------------

volatile sig_atomic_t g_stop = STOP_NONE;
timer_t g_timer;
bool g_timer_ok = false;
pid_t g_timer_tid = 0;
struct timespec g_deadline;

int tick_signal() { return SIGRTMIN + 3; }

void arm_timer(long long ns) {
  if (!g_timer_ok) return;
  struct itimerspec its;
  memset(&its, 0, sizeof its);
  its.it_value.tv_sec = ns / 1000000000LL;
  its.it_value.tv_nsec = ns % 1000000000LL;
  timer_settime(g_timer, 0, &its, nullptr);  // zero disarms
}

// A timer that signals the launching thread (created again when another thread launches).
void ensure_timer() {
  const pid_t tid = gettid();
  if (g_timer_ok && g_timer_tid == tid) return;
  if (g_timer_ok) timer_delete(g_timer);
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = tick_signal();
  sev.sigev_value.sival_ptr = &g_timer;
  sev._sigev_un._tid = tid;
  g_timer_ok = timer_create(CLOCK_MONOTONIC, &sev, &g_timer) == 0;
  g_timer_tid = tid;
}

void stop_message(const Thread* t) {
  if (g_stop == STOP_TIMEOUT)
    record(GPUCONV_EMU_ERR_TIMEOUT, t, "did not finish within GPUCONV_EMU_TIMEOUT = %g s; stopped after %llu of %llu "
           "blocks", g_timeout_s, (unsigned long long)g_blocks_done, (unsigned long long)g_nblocks);
  else
    record(GPUCONV_EMU_ERR_INTERRUPTED, t, "interrupted (SIGINT) after %llu of %llu blocks",
           (unsigned long long)g_blocks_done, (unsigned long long)g_nblocks);
}

// Leaves the launch when a stop is pending (called by the scheduler between fibers).
void check_stop(const Thread* t) {
  if (g_stop) {
    stop_message(t);
    jump_to_launcher();
  }
}

// Leaves now when the thread runs kernel code, else retries soon (the scheduler stops at its next
// switch; a kernel spinning inside the C library is stopped once a tick lands in its own code).
void try_stop(void* ucv) {
  if (!g_launch_active) return;
  if (in_kernel() && in_module(context_pc(ucv))) {
    g_err_pc = (unsigned long long)(context_pc(ucv) - g_mod_base) + 1;
    stop_message(g_cur);
    jump_to_launcher();
  }
  arm_timer(kRetryNs);
}

struct sigaction g_old_tick, g_old_int;

// Hands a signal that is not the emulator's to the handler installed before.
void forward(const struct sigaction& old, int sig, siginfo_t* si, void* ucv) {
  if (old.sa_flags & SA_SIGINFO) {
    if (old.sa_sigaction) old.sa_sigaction(sig, si, ucv);
  } else if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
    old.sa_handler(sig);
  }
}

void on_tick(int sig, siginfo_t* si, void* ucv) {
  if (si->si_code != SI_TIMER || si->si_value.sival_ptr != &g_timer) {
    forward(g_old_tick, sig, si, ucv);
    return;
  }
  if (!g_launch_active) return;  // a late tick of a finished launch
  if (!g_stop) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    const long long left =
        (long long)(g_deadline.tv_sec - now.tv_sec) * 1000000000LL + (g_deadline.tv_nsec - now.tv_nsec);
    if (left > 0) {
      arm_timer(left);
      return;
    }
    g_stop = STOP_TIMEOUT;
  }
  try_stop(ucv);
}

void on_sigint(int sig, siginfo_t* si, void* ucv) {
  if (!g_launch_active) {
    forward(g_old_int, sig, si, ucv);
    return;
  }
  if (!g_stop) g_stop = STOP_INTERRUPT;
  if (on_launch_thread()) try_stop(ucv);
  else arm_timer(1);  // let the launching thread act on it
}

// ---- fibers -----------------------------------------------------------------------------------

void to_scheduler(Fiber* f) {
#ifdef GPUCONV_EMU_ASAN
  __sanitizer_start_switch_fiber(&f->fake_stack, g_main_bottom, g_main_size);
  swapcontext(&f->uc, &g_sched_uc);
  __sanitizer_finish_switch_fiber(f->fake_stack, &g_main_bottom, &g_main_size);
#else
  if (!_setjmp(f->jb)) _longjmp(g_sched_jb, 1);
#endif
}

char g_exception[512];

// Runs the kernel; true when a C++ exception escaped it (its what() in g_exception).
bool run_kernel() {
  try {
    g_entry(g_args);
    return false;
  } catch (const std::exception& e) {
    snprintf(g_exception, sizeof g_exception, ": %s", e.what());
  } catch (...) {
    g_exception[0] = 0;
  }
  return true;
}

void fiber_main() {
  Fiber* f = g_cur_fiber;
#ifdef GPUCONV_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_main_bottom, &g_main_size);
#endif
  for (;;) {
    to_scheduler(f);
    if (run_kernel())
      fail(GPUCONV_EMU_ERR_TRAP, g_cur, "a C++ exception escaped the kernel%s (device code cannot throw)",
           g_exception);
    g_cur->state = ST_EXITED;
  }
}

void switch_to(Fiber* f) {
  g_cur_fiber = f;
  g_in_fiber = 1;
#ifdef GPUCONV_EMU_ASAN
  __sanitizer_start_switch_fiber(&g_sched_fake, f->stack_lo, f->region);
  swapcontext(&g_sched_uc, &f->uc);
  __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#else
  if (!_setjmp(g_sched_jb)) _longjmp(f->jb, 1);
#endif
  g_in_fiber = 0;
}

bool fiber_prepare(Fiber* f) {
  if (f->ready && f->stack_size == g_stack_size) return true;
  const size_t ss = g_stack_size;
  if (!f->mem || f->stack_size != ss) {
    if (f->mem) munmap(f->mem, f->mem_size);
    const size_t region = (ss + kStagger + g_page - 1) / g_page * g_page;
    f->mem_size = kGuard + region;
    void* m = mmap(nullptr, f->mem_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m == MAP_FAILED) {
      f->mem = nullptr;
      return false;
    }
    f->mem = (char*)m;
    mprotect(f->mem, kGuard, PROT_NONE);
    f->stack_lo = f->mem + kGuard;
    f->stack_size = ss;
    f->region = region;
  }
  getcontext(&f->uc);
  // Stagger the stack tops so that the fibers' hot frames do not all map to the same cache sets;
  // the stagger comes out of the extra kStagger bytes, so every thread has at least ss bytes.
  const size_t color = ((size_t)(f - g_fibers) * 17u * 64u) % kStagger;
  f->uc.uc_stack.ss_sp = f->stack_lo;
  f->uc.uc_stack.ss_size = f->region - color;
  f->uc.uc_link = nullptr;
  makecontext(&f->uc, fiber_main, 0);
  g_cur_fiber = f;
  g_in_fiber = 1;
#ifdef GPUCONV_EMU_ASAN
  __sanitizer_start_switch_fiber(&g_sched_fake, f->stack_lo, f->region);
  swapcontext(&g_sched_uc, &f->uc);
  __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#else
  if (!_setjmp(g_sched_jb)) setcontext(&f->uc);
#endif
  g_in_fiber = 0;
  f->ready = true;
  return true;
}

// ---- staged array arguments -------------------------------------------------------------------
//
// Each array argument (arguments whose bytes overlap form one group) is copied into its own
// mapping: guard | slack | data | gap | guard, the guards kArgGuard bytes of PROT_NONE pages, the
// data placed so that the first byte past it lies on the back guard (the gap, < kArgAlign
// bytes, keeps the caller's address modulo kArgAlign). A read or write past the end or before the
// slack faults at its instruction. Slack and gap hold a canary, checked near the data after every block and whole at
// the end of the launch. Groups of const pointers only are compared with the caller's memory at
// the end (a write through a const pointer is an error); the others are copied back to the
// caller's memory, whatever the outcome.

#ifndef GPUCONV_EMU_ASAN

struct Region {
  char* base = nullptr;
  size_t size = 0;      // the whole mapping, guards included
  char* open = nullptr; // first accessible byte (the accessible part ends arg_guard() before base+size)
};

struct Group {
  uintptr_t lo, hi;  // the caller's bytes
  char* data;        // their copy
  char* open;        // first accessible byte (slack starts here)
  char* end;         // the back guard page
  bool writable;
  int first, last;   // the argument that starts first and the one that ends last
};

Region g_regions[kMaxArgs];
Group g_groups[kMaxArgs];
int g_ngroups = 0;
int g_order[kMaxArgs];
int g_group_of[kMaxArgs];

size_t arg_guard() { return round_up(kArgGuard, g_page); }

bool region_fit(Region* r, size_t pages) {
  const size_t need = pages * g_page + 2 * arg_guard();
  if (r->base && (r->size < need || (r->size > 4 * need && r->size - need > (1u << 20)))) {
    munmap(r->base, r->size);
    r->base = nullptr;
  }
  if (!r->base) {
    void* m = mmap(nullptr, need, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return false;
    r->base = (char*)m;
    r->size = need;
    r->open = r->base + need - arg_guard();  // nothing accessible yet
  }
  char* end = r->base + r->size - arg_guard();
  char* open = end - pages * g_page;
  if (open != r->open) {
    if (open > r->open) mprotect(r->open, open - r->open, PROT_NONE);
    if (mprotect(open, end - open, PROT_READ | PROT_WRITE) != 0) return false;
    r->open = open;
  }
  return true;
}

// Copies the array arguments into guarded regions and points their slots there. False when
// memory for them cannot be mapped.
bool stage_args(int nargs) {
  g_ngroups = 0;
  int n = 0;
  for (int i = 0; i < nargs; ++i)
    if ((g_arg_kinds[i] & 0xFF) != GPUCONV_EMU_ARG_VALUE && g_slots[i]) g_order[n++] = i;
  for (int k = 1; k < n; ++k)  // by address (few arguments: insertion sort)
    for (int j = k; j > 0 && g_slots[g_order[j]] < g_slots[g_order[j - 1]]; --j) {
      const int tmp = g_order[j];
      g_order[j] = g_order[j - 1];
      g_order[j - 1] = tmp;
    }
  for (int k = 0; k < n; ++k) {
    const int i = g_order[k];
    const uintptr_t lo = (uintptr_t)g_slots[i], hi = lo + g_arg_bytes[i];
    const bool writable = (g_arg_kinds[i] & 0xFF) == GPUCONV_EMU_ARG_ARRAY;
    Group* g = g_ngroups ? &g_groups[g_ngroups - 1] : nullptr;
    if (g && lo < g->hi) {  // overlaps the previous group
      if (hi > g->hi || (hi == g->hi && i < g->last)) g->last = i;
      if (hi > g->hi) g->hi = hi;
      g->writable |= writable;
      g_group_of[i] = g_ngroups - 1;
      continue;
    }
    g_group_of[i] = g_ngroups;
    g = &g_groups[g_ngroups++];
    g->lo = lo;
    g->hi = hi;
    g->writable = writable;
    g->first = g->last = i;
  }
  for (int k = 0; k < g_ngroups; ++k) {
    Group* g = &g_groups[k];
    const size_t span = g->hi - g->lo;
    // The copy keeps the caller's address modulo kArgAlign: a misaligned view stays misaligned,
    // so a vector access through it faults as on the GPU. The gap after it is < kArgAlign bytes.
    const size_t placed = span + (kArgAlign - (span + g->lo % kArgAlign) % kArgAlign) % kArgAlign;
    const size_t pages = (placed + g_page - 1) / g_page;
    if (!region_fit(&g_regions[k], pages)) {
      g_ngroups = k;
      return false;
    }
    Region* r = &g_regions[k];
    g->end = r->base + r->size - arg_guard();
    g->open = r->open;
    g->data = g->end - placed;
    fill(g->open, kCanary, g->data - g->open);
    if (span) memcpy(g->data, (const void*)g->lo, span);
    fill(g->data + span, kCanary, g->end - (g->data + span));
  }
  for (int j = 0; j < n; ++j) {
    const int i = g_order[j];
    const Group* g = &g_groups[g_group_of[i]];
    g_slots[i] = (unsigned long long)(uintptr_t)(g->data + ((uintptr_t)g_slots[i] - g->lo));
  }
  return true;
}

// Checks the canaries next to each group's data (all of them when `whole`, at the end of the
// launch; else after a block, which the message names) and, at the end, that groups of const
// pointers are unchanged.
void check_arg_canaries(bool whole) {
  for (int k = 0; k < g_ngroups; ++k) {
    const Group* g = &g_groups[k];
    const char* end = g->data + (g->hi - g->lo);
    const char* front = whole || (size_t)(g->data - g->open) <= kEdgeCheck ? g->open : g->data - kEdgeCheck;
    const char* unknown = "(the write did not reach a guard page, so its thread and line are unknown; "
                          "GPUCONV_EMU_ASAN=1 finds them)";
    int n = whole ? snprintf(g_err, sizeof g_err, "kernel '%s'", g_kernel) : where(g_err, sizeof g_err, nullptr);
    n += snprintf(g_err + n, sizeof g_err - n, ": a thread");
    long bad = damaged(end, g->end);
    if (bad >= 0) {
      const char* arg = (const char*)(uintptr_t)g_slots[g->last];
      snprintf(g_err + n, sizeof g_err - n, " wrote past the end of argument %d (%llu bytes), at byte offset %lld %s",
               g->last, g_arg_bytes[g->last], (long long)(end + bad - arg), unknown);
    } else if ((bad = damaged(front, g->data)) >= 0) {
      const char* arg = (const char*)(uintptr_t)g_slots[g->first];
      snprintf(g_err + n, sizeof g_err - n, " wrote before the start of argument %d (%llu bytes), at byte offset "
               "%lld %s", g->first, g_arg_bytes[g->first], (long long)(front + bad - arg), unknown);
    } else if (whole && !g->writable && memcmp(g->data, (const void*)g->lo, g->hi - g->lo) != 0) {
      size_t at = 0;
      while (g->data[at] == ((const char*)g->lo)[at]) ++at;
      int i = g->first;  // the argument holding the byte
      for (int j = 0; j < g_nargs; ++j)
        if ((g_arg_kinds[j] & 0xFF) != GPUCONV_EMU_ARG_VALUE && g_slots[j] && g_group_of[j] == k &&
            g->data + at >= (const char*)(uintptr_t)g_slots[j] &&
            g->data + at < (const char*)(uintptr_t)g_slots[j] + g_arg_bytes[j])
          i = j;
      const unsigned long long item = (g_arg_kinds[i] >> 8) ? (g_arg_kinds[i] >> 8) : 1;
      snprintf(g_err + n, sizeof g_err - n, " wrote into argument %d, a pointer to const, at element %llu (the "
               "caller's array is left unchanged; which thread wrote is not recorded)", i,
               (unsigned long long)((g->data + at) - (const char*)(uintptr_t)g_slots[i]) / item);
    } else {
      continue;
    }
    g_err_code = GPUCONV_EMU_ERR_OUT_OF_BOUNDS;
    jump_to_launcher();
  }
}

// Copies writable groups back to the caller.
void unstage_args() {
  for (int k = 0; k < g_ngroups; ++k) {
    Group* g = &g_groups[k];
    if (g->writable) memcpy((void*)g->lo, g->data, g->hi - g->lo);
    Region* r = &g_regions[k];
    if (r->size > kRetainBytes) {
      munmap(r->base, r->size);
      r->base = nullptr;
    }
  }
  g_ngroups = 0;
}

// Describes a faulting address inside a staged group; false when it is in none.
bool describe_arg_fault(const char* a, const char* access, const Thread* t) {
  for (int k = 0; k < g_ngroups; ++k) {
    const Group* g = &g_groups[k];
    const Region* r = &g_regions[k];
    if (a < r->base || a >= r->base + r->size) continue;
    if (a >= g->end) {
      const int i = g->last;
      const long long off = (long long)(a - g->data) - (long long)(g_slots[i] - (uintptr_t)g->data);
      const unsigned item = g_arg_kinds[i] >> 8;
      record(GPUCONV_EMU_ERR_OUT_OF_BOUNDS, t, "%s past the end of argument %d (%llu bytes, %llu elements), at "
             "byte offset %lld (element %lld)", access, i, g_arg_bytes[i], g_arg_bytes[i] / (item ? item : 1), off,
             off / (long long)(item ? item : 1));
    } else if (a < g->open) {
      const int i = g->first;
      const long long off = (long long)(a - g->data);
      const long long item = (long long)(g_arg_kinds[i] >> 8) ? (long long)(g_arg_kinds[i] >> 8) : 1;
      record(GPUCONV_EMU_ERR_OUT_OF_BOUNDS, t, "%s before the start of argument %d (%llu bytes), at byte offset "
             "%lld (element %lld)", access, i, g_arg_bytes[i], off, -((-off + item - 1) / item));
    } else {
      continue;
    }
    return true;
  }
  return false;
}

#else  // AddressSanitizer's red zones around the caller's arrays do this job

bool stage_args(int) { return true; }
void check_arg_canaries(bool) {}
void unstage_args() {}

#endif

// ---- dynamic shared memory ---------------------------------------------------------------------
//
// All `extern __shared__` arrays alias one buffer in the kernel module's TLS block. Its first
// shared_mem bytes are the launch's request; from there to the next page boundary a canary
// (checked after every fiber switch near the request, whole after every block); the pages after
// that are PROT_NONE during the launch.

struct TlsQuery {
  const char* addr;
  char* base;
  size_t size;
  uintptr_t mod_base, code_lo, code_hi;
};

int module_callback(struct dl_phdr_info* info, size_t, void* data) {
  TlsQuery* q = (TlsQuery*)data;
  bool mine = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& p = info->dlpi_phdr[i];
    if (p.p_type != PT_LOAD) continue;
    const char* lo = (const char*)(info->dlpi_addr + p.p_vaddr);
    if (q->addr >= lo && q->addr < lo + p.p_memsz) mine = true;
  }
  if (!mine) return 0;
  q->mod_base = info->dlpi_addr;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& p = info->dlpi_phdr[i];
    if (p.p_type == PT_TLS) {
      q->base = (char*)info->dlpi_tls_data;
      q->size = p.p_memsz;
    } else if (p.p_type == PT_LOAD && (p.p_flags & PF_X)) {
      q->code_lo = info->dlpi_addr + p.p_vaddr;
      q->code_hi = q->code_lo + p.p_memsz;
    }
  }
  return 1;
}

char* g_tls_base = nullptr;
size_t g_tls_size = 0;
unsigned char* g_dyn = nullptr;
size_t g_dyn_bytes = 0;
char* g_smem_guard_lo = nullptr;  // [lo, hi): PROT_NONE during the launch
char* g_smem_guard_hi = nullptr;
size_t g_canary_len = 0;          // canary bytes after the request

// Protected ranges kept between launches: those of the main thread's buffers (the main thread's
// TLS blocks are never freed, so a protected page there can never reach malloc). Launches of other
// threads unprotect theirs at the end.
struct KeptGuard {
  char* lo;
  char* hi;
};
constexpr int kMaxKept = 256;
KeptGuard g_kept[kMaxKept];
int g_nkept = 0;
bool g_guard_kept = false;

void protect_shared(size_t dyn_bytes) {
  char* dyn = (char*)g_dyn;
  char* lo = (char*)round_up((uintptr_t)dyn + dyn_bytes, g_page);
  char* hi = (char*)((uintptr_t)(dyn + GPUCONV_EMU_DYN_SMEM_TOTAL) / g_page * g_page);
  g_smem_guard_lo = g_smem_guard_hi = nullptr;
  g_guard_kept = false;
  if (hi > lo) {
    KeptGuard* kept = nullptr;
    const bool main_thread = getpid() == gettid();
    for (int i = 0; main_thread && i < g_nkept && !kept; ++i)
      if (g_kept[i].hi == hi) kept = &g_kept[i];
    bool ok;
    if (kept && kept->lo == lo) ok = true;
    else if (kept && lo < kept->lo) ok = mprotect(lo, kept->lo - lo, PROT_NONE) == 0;
    else if (kept) ok = mprotect(kept->lo, lo - kept->lo, PROT_READ | PROT_WRITE) == 0;
    else ok = mprotect(lo, hi - lo, PROT_NONE) == 0;
    if (ok) {
      g_smem_guard_lo = lo;
      g_smem_guard_hi = hi;
      if (kept) kept->lo = lo;
      else if (main_thread && g_nkept < kMaxKept) g_kept[g_nkept++] = {lo, hi};
      g_guard_kept = main_thread && (kept || g_kept[g_nkept - 1].hi == hi);
    } else if (kept) {  // unknown state: make it all accessible and forget it
      mprotect(kept->lo < lo ? kept->lo : lo, hi - (kept->lo < lo ? kept->lo : lo), PROT_READ | PROT_WRITE);
      *kept = g_kept[--g_nkept];
    }
  }
  g_canary_len = (g_smem_guard_lo ? g_smem_guard_lo : dyn + GPUCONV_EMU_DYN_SMEM_TOTAL) - (dyn + dyn_bytes);
}

void unprotect_shared() {
  if (g_smem_guard_lo && !g_guard_kept)
    mprotect(g_smem_guard_lo, g_smem_guard_hi - g_smem_guard_lo, PROT_READ | PROT_WRITE);
  g_smem_guard_lo = g_smem_guard_hi = nullptr;
}

// Fills the static shared memory of the module and the requested dynamic shared memory with
// 0xFF (NaN for float, -1 for int) and the bytes after it with the canary.
void poison_shared() {
  char* dyn = (char*)g_dyn;
  const size_t dyn_total = GPUCONV_EMU_DYN_SMEM_TOTAL;
  if (g_tls_base && dyn >= g_tls_base && dyn + dyn_total <= g_tls_base + g_tls_size) {
    memset(g_tls_base, kPoison, dyn - g_tls_base);
    memset(dyn + dyn_total, kPoison, (g_tls_base + g_tls_size) - (dyn + dyn_total));
  }
  fill(dyn, kPoison, g_dyn_bytes);
  fill(dyn + g_dyn_bytes, kCanary, g_canary_len);
}

long canary_damage(size_t limit) {
  const char* c = (const char*)g_dyn + g_dyn_bytes;
  return damaged(c, c + (limit < g_canary_len ? limit : g_canary_len));
}

// ---- signals ----------------------------------------------------------------------------------

const int kFaultSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
constexpr int kNumFault = sizeof kFaultSignals / sizeof kFaultSignals[0];
bool g_int_installed = false;
bool g_tick_installed = false;
#ifndef GPUCONV_EMU_ASAN  // AddressSanitizer reports faults itself
struct sigaction g_old_fault[kNumFault];
stack_t g_old_altstack;
bool g_own_altstack = false;
char* g_altstack_mem = nullptr;

// A signal that is not the kernel's: give it back to whoever handled it before the launch.
void pass_on(int sig, siginfo_t* si) {
  for (int i = 0; i < kNumFault; ++i)
    if (kFaultSignals[i] == sig) sigaction(sig, &g_old_fault[i], nullptr);
  if (si->si_code <= 0) raise(sig);  // sent by kill/raise/abort: send again (a fault repeats by itself)
}

const char* access_of(void* ucv, bool* write) {
#if defined(__x86_64__)
  *write = (((const ucontext_t*)ucv)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
  return *write ? "write" : "read";
#else
  (void)ucv;
  *write = false;
  return "read or write";
#endif
}

void on_fault(int sig, siginfo_t* si, void* ucv) {
  if (!in_kernel()) {
    pass_on(sig, si);
    return;
  }
  record_kernel_pc(context_pc(ucv));
  Thread* t = g_cur;
  char* a = (char*)si->si_addr;
  Fiber* f = g_cur_fiber;
  bool write = false;
  if (sig == SIGFPE) {
    record(GPUCONV_EMU_ERR_INT_DIVISION, t, "integer division by zero or overflow (x / 0, x %% 0, or INT_MIN / -1)");
  } else if (sig == SIGILL) {
    record(GPUCONV_EMU_ERR_TRAP, t, "illegal instruction (__builtin_trap() or __builtin_unreachable() reached)");
  } else if (sig == SIGABRT) {
    record(GPUCONV_EMU_ERR_TRAP, t, "abort() called (by std::terminate or a failed check in the C/C++ library)");
  } else if (f && a >= f->mem && a < f->stack_lo + 4096) {
    record(GPUCONV_EMU_ERR_STACK_OVERFLOW, t, "stack overflow (the thread's %zu KiB fiber stack is exhausted: large "
           "local arrays or deep recursion; GPUCONV_EMU_STACK_KB raises it)", f->stack_size / 1024);
  } else if (g_smem_guard_lo && a >= g_smem_guard_lo && a < g_smem_guard_hi) {
    const char* access = access_of(ucv, &write);
    record(GPUCONV_EMU_ERR_SMEM_OVERRUN, t, "%s past the end of the %zu bytes of dynamic shared memory requested "
           "(shared_mem=%zu), at byte offset %zu", access, g_dyn_bytes, g_dyn_bytes, (size_t)(a - (char*)g_dyn));
  } else {
    const char* access = access_of(ucv, &write);
    if (!describe_arg_fault(a, access, t))
      record(GPUCONV_EMU_ERR_MEMORY_FAULT, t, "%s at address %p (invalid memory access; GPUCONV_EMU_ASAN=1 tells "
             "more)", sig == SIGBUS ? "bus error" : "segmentation fault", (void*)a);
  }
  jump_to_launcher();
}

#endif

void install_handlers() {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGINT);
  sigaddset(&sa.sa_mask, tick_signal());
#ifndef GPUCONV_EMU_ASAN
  stack_t cur;
  sigaltstack(nullptr, &cur);
  g_own_altstack = false;
  if ((cur.ss_flags & SS_DISABLE) || cur.ss_size < 32 * 1024) {
    const size_t sz = 64 * 1024;
    if (!g_altstack_mem) g_altstack_mem = (char*)malloc(sz);
    stack_t ss;
    ss.ss_sp = g_altstack_mem;
    ss.ss_size = sz;
    ss.ss_flags = 0;
    g_old_altstack = cur;
    if (sigaltstack(&ss, nullptr) == 0) g_own_altstack = true;
  }
  sa.sa_sigaction = on_fault;
  for (int i = 0; i < kNumFault; ++i) sigaction(kFaultSignals[i], &sa, &g_old_fault[i]);
#endif
  if (!g_tick_installed) {  // for good: a late tick must never meet the default action (exit)
    sa.sa_sigaction = on_tick;
    sigaction(tick_signal(), &sa, &g_old_tick);
    g_tick_installed = true;
  }
  g_int_installed = g_stop_on_sigint != 0;
  if (g_int_installed) {
    sa.sa_sigaction = on_sigint;
    sigaction(SIGINT, &sa, &g_old_int);
  }
}

void remove_handlers() {
  if (g_int_installed) sigaction(SIGINT, &g_old_int, nullptr);
  g_int_installed = false;
#ifndef GPUCONV_EMU_ASAN
  for (int i = 0; i < kNumFault; ++i) sigaction(kFaultSignals[i], &g_old_fault[i], nullptr);
  if (g_own_altstack) {
    if (g_old_altstack.ss_flags & SS_DISABLE) {
      stack_t off;
      memset(&off, 0, sizeof off);
      off.ss_flags = SS_DISABLE;
      sigaltstack(&off, nullptr);
    } else {
      sigaltstack(&g_old_altstack, nullptr);
    }
    g_own_altstack = false;
  }
#endif
}

// ---- scheduling -------------------------------------------------------------------------------

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

const char* state_text(const Thread* u, char* buf, size_t n) {
  switch (u->state) {
    case ST_EXITED: snprintf(buf, n, "has exited"); break;
    case ST_READY: snprintf(buf, n, "is running"); break;
    case ST_BARRIER: snprintf(buf, n, "waits at %s at %s:%d", kBarrierNames[u->kind], u->file, u->line); break;
    default:
      snprintf(buf, n, "waits at %s (mask 0x%08x) at %s:%d", kWarpNames[u->kind], u->mask, u->file, u->line);
  }
  return buf;
}

// Book-keeping of the block being run, updated as threads arrive at barriers and collectives.
unsigned g_n_bar = 0, g_n_warp = 0, g_n_exited = 0, g_n_pred = 0;
Thread* g_bar_first = nullptr;
Thread* g_bar_other = nullptr;  // a thread at a different barrier than g_bar_first
bool g_released = false;

bool same_site(const Thread* a, const Thread* b) {
  return a->line == b->line && a->kind == b->kind && (a->file == b->file || strcmp(a->file, b->file) == 0);
}

// Called when thread t arrives at a warp collective: completes it when every lane named by the
// mask waits at the same call site with the same mask and operation.
void try_complete_warp(Thread* t) {
  const unsigned lane = t->linear & 31u;
  const unsigned base = t->linear - lane;
  const unsigned lanes = (g_nthreads - base) < 32u ? (g_nthreads - base) : 32u;
  const unsigned mask = t->mask;
  char buf[512];
  if (!((mask >> lane) & 1u))
    fail(GPUCONV_EMU_ERR_WARP, t, "%s at %s:%d with mask 0x%08x that does not name the calling lane %u",
         kWarpNames[t->kind], t->file, t->line, mask, lane);
  if (t->kind >= GPUCONV_EMU_SHFL_IDX && t->kind <= GPUCONV_EMU_SHFL_XOR) {
    const int w = t->width;
    if (w < 1 || w > 32 || (w & (w - 1)))
      fail(GPUCONV_EMU_ERR_WARP, t, "%s at %s:%d with width %d (must be a power of 2 in 1..32)",
           kWarpNames[t->kind], t->file, t->line, w);
  }
  for (unsigned l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    if (l >= lanes)
      fail(GPUCONV_EMU_ERR_WARP, t, "%s at %s:%d: mask 0x%08x names lane %u, but this warp has only %u threads",
           kWarpNames[t->kind], t->file, t->line, mask, l, lanes);
    Thread* u = &g_threads[base + l];
    if (u->state == ST_EXITED)
      fail(GPUCONV_EMU_ERR_WARP, t, "%s at %s:%d: mask 0x%08x names lane %u (thread (%u,%u,%u)), which has exited",
           kWarpNames[t->kind], t->file, t->line, mask, l, u->tid.x, u->tid.y, u->tid.z);
    if (u->state == ST_WARP && (u->file != t->file || u->line != t->line || u->mask != mask || u->kind != t->kind) &&
        !(u->line == t->line && u->mask == mask && u->kind == t->kind && strcmp(u->file, t->file) == 0))
      fail(GPUCONV_EMU_ERR_WARP, t, "%s (mask 0x%08x) at %s:%d while lane %u (thread (%u,%u,%u)) %s",
           kWarpNames[t->kind], mask, t->file, t->line, l, u->tid.x, u->tid.y, u->tid.z,
           state_text(u, buf, sizeof buf));
    if (u->state != ST_WARP) return;  // not arrived yet
  }
  // Everyone is here: compute CUDA's results.
  unsigned ballot = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (((mask >> l) & 1u) && g_threads[base + l].pred) ballot |= 1u << l;
  for (unsigned l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    Thread* u = &g_threads[base + l];
    switch (u->kind) {
      case GPUCONV_EMU_SYNCWARP: u->result = 0; break;
      case GPUCONV_EMU_BALLOT: u->result = ballot; break;
      case GPUCONV_EMU_ANY: u->result = ballot != 0; break;
      case GPUCONV_EMU_ALL: u->result = ballot == mask; break;
      default: {
        // PTX shfl.sync semantics with c = ((32 - width) << 8) | clamp.
        const unsigned segmask = (32u - (unsigned)u->width) & 31u;
        const unsigned bval = (unsigned)u->b & 31u;
        const unsigned minl = l & segmask;
        const unsigned maxl_full = minl | (31u & ~segmask);
        int j;
        bool ok;
        switch (u->kind) {
          case GPUCONV_EMU_SHFL_IDX: j = (int)(minl | (bval & ~segmask)); ok = (unsigned)j <= maxl_full; break;
          case GPUCONV_EMU_SHFL_UP: j = (int)l - (int)bval; ok = j >= (int)minl; break;
          case GPUCONV_EMU_SHFL_DOWN: j = (int)(l + bval); ok = (unsigned)j <= maxl_full; break;
          default: j = (int)(l ^ bval); ok = (unsigned)j <= maxl_full; break;
        }
        if (!ok) j = (int)l;
        if (!((mask >> j) & 1u))
          fail(GPUCONV_EMU_ERR_WARP, u, "%s at %s:%d reads lane %d, which is not in the mask 0x%08x (undefined on the GPU)",
               kWarpNames[u->kind], u->file, u->line, j, mask);
        u->result = g_threads[base + (unsigned)j].value;
      }
    }
  }
  for (unsigned l = 0; l < 32; ++l)
    if ((mask >> l) & 1u) {
      g_threads[base + l].state = ST_READY;
      --g_n_warp;
    }
  g_released = true;
}

// Nobody can run: release the barrier or report why the block is stuck.
void resolve_stall() {
  char buf[512];
  if (g_bar_other) {
    const Thread* t = g_bar_other;
    const Thread* u = g_bar_first;
    fail(GPUCONV_EMU_ERR_BARRIER_DIVERGED, t,
         "threads wait at different barriers: this thread at %s at %s:%d, thread (%u,%u,%u) at %s at %s:%d",
         kBarrierNames[t->kind], t->file, t->line, u->tid.x, u->tid.y, u->tid.z, kBarrierNames[u->kind], u->file,
         u->line);
  }
  if (g_n_warp) {
    Thread* warp = nullptr;
    for (unsigned i = 0; i < g_nthreads && !warp; ++i)
      if (g_threads[i].state == ST_WARP) warp = &g_threads[i];
    const unsigned base = warp->linear - (warp->linear & 31u);
    for (unsigned l = 0; l < 32; ++l) {
      if (!((warp->mask >> l) & 1u) || base + l >= g_nthreads) continue;
      Thread* u = &g_threads[base + l];
      if (u->state != ST_WARP)
        fail(GPUCONV_EMU_ERR_DEADLOCK, warp,
             "deadlock: waits at %s (mask 0x%08x) at %s:%d for lane %u (thread (%u,%u,%u)), which %s",
             kWarpNames[warp->kind], warp->mask, warp->file, warp->line, l, u->tid.x, u->tid.y, u->tid.z,
             state_text(u, buf, sizeof buf));
    }
    fail(GPUCONV_EMU_ERR_DEADLOCK, warp, "deadlock at %s at %s:%d", kWarpNames[warp->kind], warp->file, warp->line);
  }
  Thread* bar = g_bar_first;
  if (!bar) fail(GPUCONV_EMU_ERR_DEADLOCK, nullptr, "deadlock: no thread can run");
  if (g_n_exited) {
    Thread* exited = nullptr;
    for (unsigned i = 0; i < g_nthreads && !exited; ++i)
      if (g_threads[i].state == ST_EXITED) exited = &g_threads[i];
    fail(GPUCONV_EMU_ERR_BARRIER_EXITED, exited,
         "this thread exited while thread (%u,%u,%u) waits at %s at %s:%d (on the GPU a barrier must be "
         "reached by every thread of the block)",
         bar->tid.x, bar->tid.y, bar->tid.z, kBarrierNames[bar->kind], bar->file, bar->line);
  }
  unsigned long long result = 0;
  switch (bar->kind) {
    case GPUCONV_EMU_SYNC_COUNT: result = g_n_pred; break;
    case GPUCONV_EMU_SYNC_AND: result = g_n_pred == g_n_bar; break;
    case GPUCONV_EMU_SYNC_OR: result = g_n_pred != 0; break;
    default: break;
  }
  for (unsigned i = 0; i < g_nthreads; ++i) {
    g_threads[i].result = result;
    g_threads[i].state = ST_READY;
  }
  g_n_bar = g_n_pred = 0;
  g_bar_first = nullptr;
  g_released = true;
}

unsigned g_order_buf[kMaxThreads];

void run_block(int order, uint64_t rng) {
  const gpuconv_emu_dim bd = gpuconv_emu_st.block_dim;
  const unsigned n = g_nthreads;
  for (unsigned i = 0; i < n; ++i) {
    Thread* t = &g_threads[i];
    t->state = ST_READY;
    t->linear = i;
    t->tid.x = i % bd.x;
    t->tid.y = (i / bd.x) % bd.y;
    t->tid.z = i / (bd.x * bd.y);
    t->pred = 0;
  }
  g_n_bar = g_n_warp = g_n_exited = g_n_pred = 0;
  g_bar_first = g_bar_other = nullptr;
  for (;;) {
    g_released = false;
    if (order == ORDER_RANDOM) {
      for (unsigned i = 0; i < n; ++i) g_order_buf[i] = i;
      for (unsigned i = n; i > 1; --i) {
        unsigned j = (unsigned)(splitmix(rng) % i);
        unsigned tmp = g_order_buf[i - 1];
        g_order_buf[i - 1] = g_order_buf[j];
        g_order_buf[j] = tmp;
      }
    }
    for (unsigned k = 0; k < n; ++k) {
      const unsigned i = order == ORDER_FORWARD ? k : order == ORDER_REVERSE ? n - 1 - k : g_order_buf[k];
      Thread* t = &g_threads[i];
      if (t->state != ST_READY) continue;
      g_cur = t;
      gpuconv_emu_st.thread_idx = t->tid;
      switch_to(&g_fibers[i]);
      if (g_stop) check_stop(t);
      if (canary_damage(kQuickCanary) >= 0)
        fail(GPUCONV_EMU_ERR_SMEM_OVERRUN, t,
             "wrote past the end of the %zu bytes of dynamic shared memory requested (shared_mem=%zu), at byte "
             "offset %zu",
             g_dyn_bytes, g_dyn_bytes, g_dyn_bytes + (size_t)canary_damage(kQuickCanary));
      if (t->state == ST_EXITED) {
        ++g_n_exited;
      } else if (t->state == ST_WARP) {
        ++g_n_warp;
        try_complete_warp(t);
      }
    }
    if (g_n_exited == n) return;
    if (!g_released) resolve_stall();
  }
}

// Leaves the launch from code the kernel called (exit, abort): names the calling kernel line.
void fail_at_caller(int code, const char* fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
void fail_at_caller(int code, const char* fmt, ...) {
  record_kernel_pc(0);
  va_list ap;
  va_start(ap, fmt);
  vrecord(code, g_cur, fmt, ap);
  va_end(ap);
  jump_to_launcher();
}

}  // namespace

// ---- device-side entry points -------------------------------------------------------------------

extern "C" {

struct gpuconv_emu_state gpuconv_emu_st;

int gpuconv_emu_barrier(int kind, int pred, const char* file, int line) {
  Thread* t = g_cur;
  t->state = ST_BARRIER;
  t->kind = kind;
  t->pred = pred;
  t->file = file;
  t->line = line;
  ++g_n_bar;
  g_n_pred += pred != 0;
  if (!g_bar_first) g_bar_first = t;
  else if (!g_bar_other && !same_site(t, g_bar_first)) g_bar_other = t;
  to_scheduler(g_cur_fiber);
  return (int)t->result;
}

unsigned long long gpuconv_emu_warp(int op, unsigned int mask, unsigned long long value, int b, int width,
                                    const char* file, int line) {
  Thread* t = g_cur;
  t->state = ST_WARP;
  t->kind = op;
  t->mask = mask;
  t->value = value;
  t->pred = (op == GPUCONV_EMU_BALLOT || op == GPUCONV_EMU_ANY || op == GPUCONV_EMU_ALL) ? (value != 0) : 0;
  t->b = b;
  t->width = width;
  t->file = file;
  t->line = line;
  to_scheduler(g_cur_fiber);
  return t->result;
}

unsigned int gpuconv_emu_activemask(void) {
  const unsigned lane = g_cur->linear & 31u;
  const unsigned base = g_cur->linear - lane;
  unsigned m = 0;
  for (unsigned l = 0; l < 32 && base + l < g_nthreads; ++l)
    if (g_threads[base + l].state != ST_EXITED) m |= 1u << l;
  return m;
}

void gpuconv_emu_fail(int code, const char* what, const char* file, int line) {
  if (!in_kernel()) {
    fprintf(stderr, "gpuconv emulator: %s at %s:%d outside a kernel launch\n", what, file, line);
    abort();
  }
  fail(code, g_cur, "%s at %s:%d", what, file, line);
}

// Process-ending calls of kernel code (the module is linked with --wrap=<name>): inside a launch
// they end the launch with an error; anywhere else they do what they always do.
void __wrap_exit(int status) {
  if (in_kernel()) fail_at_caller(GPUCONV_EMU_ERR_TRAP, "exit(%d) called: a kernel cannot end the process", status);
  exit(status);
}
void __wrap__exit(int status) {
  if (in_kernel()) fail_at_caller(GPUCONV_EMU_ERR_TRAP, "_exit(%d) called: a kernel cannot end the process", status);
  _exit(status);
}
void __wrap__Exit(int status) {
  if (in_kernel()) fail_at_caller(GPUCONV_EMU_ERR_TRAP, "_Exit(%d) called: a kernel cannot end the process", status);
  _Exit(status);
}
void __wrap_quick_exit(int status) {
  if (in_kernel())
    fail_at_caller(GPUCONV_EMU_ERR_TRAP, "quick_exit(%d) called: a kernel cannot end the process", status);
  quick_exit(status);
}
void __wrap_abort(void) {
  if (in_kernel()) fail_at_caller(GPUCONV_EMU_ERR_TRAP, "abort() called");
  abort();
}
void __wrap_pthread_exit(void* value) {
  if (in_kernel()) fail_at_caller(GPUCONV_EMU_ERR_TRAP, "pthread_exit() called: a kernel cannot end its OS thread");
  pthread_exit(value);
}
void __wrap___assert_fail(const char* expr, const char* file, unsigned int line, const char* function) {
  if (in_kernel()) fail(GPUCONV_EMU_ERR_ASSERT, g_cur, "assertion '%s' failed at %s:%u", expr, file, line);
  __assert_fail(expr, file, line, function);
}

// Out-of-bounds hooks of -fsanitize=bounds (the ABI GCC and Clang share): an index outside a
// fixed-size array (a static __shared__ or a local array) ends the launch before the access.
struct gpuconv_emu_ubsan_loc {
  const char* file;
  unsigned int line, column;
};
struct gpuconv_emu_ubsan_type {
  unsigned short kind, info;  // kind 0: integer; info: log2(bit width) << 1 | signed
  char name[1];
};
struct gpuconv_emu_ubsan_oob {
  gpuconv_emu_ubsan_loc loc;
  const gpuconv_emu_ubsan_type* array_type;
  const gpuconv_emu_ubsan_type* index_type;
};

static void bounds_failed(const gpuconv_emu_ubsan_oob* d, uintptr_t index) __attribute__((noreturn));
static void bounds_failed(const gpuconv_emu_ubsan_oob* d, uintptr_t index) {
  char value[32];
  const gpuconv_emu_ubsan_type* it = d->index_type;
  const unsigned bits = it->kind == 0 ? 1u << (it->info >> 1) : 64u;
  if (it->kind == 0 && (it->info & 1) && bits <= 64) {
    long long v = (long long)(bits == 64 ? index : (index & ((1ull << bits) - 1)));
    if (bits < 64 && (v >> (bits - 1)) & 1) v -= (long long)(1ull << bits);
    snprintf(value, sizeof value, "%lld", v);
  } else {
    snprintf(value, sizeof value, "%llu", (unsigned long long)index);
  }
  if (!in_kernel()) {
    fprintf(stderr, "gpuconv emulator: index %s out of bounds for type %s at %s:%u outside a kernel launch\n", value,
            d->array_type->name, d->loc.file, d->loc.line);
    abort();
  }
  fail(GPUCONV_EMU_ERR_OUT_OF_BOUNDS, g_cur, "index %s out of bounds for type %s at %s:%u", value,
       d->array_type->name, d->loc.file, d->loc.line);
}

void __ubsan_handle_out_of_bounds(const gpuconv_emu_ubsan_oob* d, uintptr_t index) { bounds_failed(d, index); }
void __ubsan_handle_out_of_bounds_abort(const gpuconv_emu_ubsan_oob* d, uintptr_t index) { bounds_failed(d, index); }

// ---- host-side entry points ---------------------------------------------------------------------

int gpuconv_emu_abi_version(void) { return GPUCONV_EMU_ABI; }

const char* gpuconv_emu_error_message(void) { return g_err; }

unsigned long long gpuconv_emu_error_pc(void) { return g_err_pc; }

size_t gpuconv_emu_symbol_size(void* address) {
  Dl_info info;
  const ElfW(Sym)* sym = nullptr;
  if (!dladdr1(address, &info, (void**)&sym, RTLD_DL_SYMENT) || !sym) return 0;
  return sym->st_size;
}

int gpuconv_emu_launch(gpuconv_emu_entry_fn entry, unsigned long long* slots, const unsigned long long* arg_bytes,
                       const unsigned int* arg_kinds, int nargs, const unsigned int* grid, const unsigned int* block,
                       size_t shared_mem, int order, unsigned long long seed, const char* kernel_name,
                       gpuconv_emu_smem_fn smem, int stop_on_sigint) {
  g_err[0] = 0;
  g_err_code = 0;
  g_err_pc = 0;
  g_kernel = kernel_name;
  if (!read_settings()) return GPUCONV_EMU_ERR_SETTING;
  g_stop_on_sigint = stop_on_sigint;
  if (g_canary_block[0] != kCanary) memset(g_canary_block, kCanary, sizeof g_canary_block);
  g_page = (size_t)sysconf(_SC_PAGESIZE);
  const uint64_t nthreads = (uint64_t)block[0] * block[1] * block[2];
  if (nthreads == 0 || nthreads > kMaxThreads || shared_mem > GPUCONV_EMU_MAX_DYN_SMEM || nargs < 0 ||
      nargs > kMaxArgs) {
    snprintf(g_err, sizeof g_err, "kernel '%s': invalid launch configuration", kernel_name);
    return GPUCONV_EMU_ERR_LAUNCH;
  }
  void* argv[kMaxArgs];
  for (int i = 0; i < nargs; ++i) argv[i] = &slots[i];
  g_entry = entry;
  g_args = argv;
  g_nthreads = (unsigned)nthreads;
  g_cur = nullptr;
  g_launch_thread = pthread_self();
  for (unsigned i = 0; i < g_nthreads; ++i) {
    if (!fiber_prepare(&g_fibers[i])) {
      snprintf(g_err, sizeof g_err, "kernel '%s': cannot allocate fiber stacks", kernel_name);
      return GPUCONV_EMU_ERR_LAUNCH;
    }
  }
  g_dyn = (unsigned char*)smem();  // also makes sure this thread's TLS block exists
  g_dyn_bytes = shared_mem;
  {
    TlsQuery q = {(const char*)(void*)smem, nullptr, 0, 0, 0, 0};
    dl_iterate_phdr(module_callback, &q);
    g_tls_base = q.base;
    g_tls_size = q.size;
    g_mod_base = q.mod_base;
    g_mod_lo = q.code_lo;
    g_mod_hi = q.code_hi;
  }
  gpuconv_emu_st.block_dim = {block[0], block[1], block[2]};
  gpuconv_emu_st.grid_dim = {grid[0], grid[1], grid[2]};
  gpuconv_emu_st.block_idx = {0, 0, 0};
  const uint64_t nblocks = (uint64_t)grid[0] * grid[1] * grid[2];
  g_nblocks = nblocks;
  g_blocks_done = 0;
  uint64_t mult = 1, add = 0;
  uint64_t rng = seed ^ 0xD1B54A32D192ED03ull;
  if (order == ORDER_RANDOM && nblocks > 1) {
    // A random affine permutation of the block indices.
    for (;;) {
      mult = splitmix(rng) % nblocks;
      uint64_t a = mult, b = nblocks;
      while (b) {
        uint64_t r = a % b;
        a = b;
        b = r;
      }
      if (mult && a == 1) break;
    }
    add = splitmix(rng) % nblocks;
  }
  g_slots = slots;
  g_arg_bytes = arg_bytes;
  g_arg_kinds = arg_kinds;
  g_nargs = nargs;
  if (!stage_args(nargs)) {
    unstage_args();
    snprintf(g_err, sizeof g_err, "kernel '%s': cannot map memory for the staged copies of its array arguments",
             kernel_name);
    return GPUCONV_EMU_ERR_LAUNCH;
  }
  protect_shared(shared_mem);
  g_stop = STOP_NONE;
  ensure_timer();
  install_handlers();
  g_launch_active = 1;
  if (g_timeout_s > 0 && g_timeout_s < 1e9) {
    clock_gettime(CLOCK_MONOTONIC, &g_deadline);
    const long long ns = (long long)(g_timeout_s * 1e9);
    g_deadline.tv_sec += ns / 1000000000LL;
    g_deadline.tv_nsec += ns % 1000000000LL;
    if (g_deadline.tv_nsec >= 1000000000L) {
      g_deadline.tv_sec += 1;
      g_deadline.tv_nsec -= 1000000000L;
    }
    arm_timer(ns > 0 ? ns : 1);
  }
  int rc = 0;
  if (sigsetjmp(g_launch_jb, 1)) {
#ifdef GPUCONV_EMU_ASAN
    if (g_fail_from_fiber) __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    g_in_fiber = 0;
    for (int i = 0; i < kMaxThreads; ++i) g_fibers[i].ready = false;  // abandoned mid-kernel
    rc = g_err_code ? g_err_code : GPUCONV_EMU_ERR_LAUNCH;
  } else {
    for (uint64_t k = 0; k < nblocks; ++k) {
      uint64_t b = k;
      if (order == ORDER_REVERSE) b = nblocks - 1 - k;
      else if (order == ORDER_RANDOM && nblocks > 1) b = (unsigned __int128)(mult * (unsigned __int128)k + add) % nblocks;
      gpuconv_emu_st.block_idx.x = (unsigned)(b % grid[0]);
      gpuconv_emu_st.block_idx.y = (unsigned)((b / grid[0]) % grid[1]);
      gpuconv_emu_st.block_idx.z = (unsigned)(b / ((uint64_t)grid[0] * grid[1]));
      if (g_stop) check_stop(nullptr);
      poison_shared();
      run_block(order, splitmix(rng));
      long bad = canary_damage(g_canary_len);
      if (bad >= 0)
        fail(GPUCONV_EMU_ERR_SMEM_OVERRUN, nullptr,
             "a thread wrote past the end of the %zu bytes of dynamic shared memory requested (shared_mem), "
             "at byte offset %zu",
             shared_mem, shared_mem + (size_t)bad);
      check_arg_canaries(false);
      g_blocks_done = k + 1;
    }
    check_arg_canaries(true);
  }
  g_launch_active = 0;
  arm_timer(0);
  const int stopped = g_stop;
  remove_handlers();
  unprotect_shared();
  unstage_args();
  fflush(stdout);
  if (rc == 0 && stopped == STOP_INTERRUPT) {  // finished, but the user asked to stop: do not lose it
    snprintf(g_err, sizeof g_err, "kernel '%s' interrupted (SIGINT) as it finished", kernel_name);
    rc = GPUCONV_EMU_ERR_INTERRUPTED;
  }
  return rc;
}

}  // extern "C"
