// Runtime of the CPU emulator: runs every CUDA thread of a block as a fiber on the calling OS
// thread, blocks one after another, and checks barriers, warp collectives and shared memory.
//
// Switching uses _setjmp/_longjmp after one makecontext per fiber (swapcontext with sanitizer
// fiber annotations in the AddressSanitizer build). All state lives in ordinary globals, never in
// TLS: the kernel module's TLS block is the block's shared memory. Launches are serialised by the
// caller (Python holds a lock).
#undef _FORTIFY_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <link.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "emu_runtime.h"

#ifdef GPUCONV_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace {

enum { ST_READY, ST_BARRIER, ST_WARP, ST_EXITED };
enum { ORDER_FORWARD = 0, ORDER_REVERSE = 1, ORDER_RANDOM = 2 };

constexpr int kMaxThreads = 1024;
constexpr size_t kGuard = 64 * 1024;
constexpr unsigned char kPoison = 0xFF;
constexpr unsigned char kCanary = 0xCB;
constexpr size_t kQuickCanary = 64;

struct Fiber {
  char* mem = nullptr;  // guard pages, then the stack
  size_t mem_size = 0;
  char* stack_lo = nullptr;
  size_t stack_size = 0;
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
jmp_buf g_sched_jb;
sigjmp_buf g_launch_jb;
ucontext_t g_sched_uc;
gpuconv_emu_entry_fn g_entry = nullptr;
void** g_args = nullptr;
volatile sig_atomic_t g_in_fiber = 0;
int g_err_code = 0;
char g_err[4096];
const char* g_kernel = "";
unsigned g_nthreads = 0;
unsigned char* g_dyn = nullptr;
size_t g_dyn_bytes = 0;
size_t g_stack_size = 0;
struct sigaction g_old_segv, g_old_bus;
stack_t g_old_altstack;
bool g_own_altstack = false;
char* g_altstack_mem = nullptr;
#ifdef GPUCONV_EMU_ASAN
int g_fail_from_fiber = 0;
void* g_sched_fake = nullptr;
const void* g_main_bottom = nullptr;
size_t g_main_size = 0;
#endif

const char* const kBarrierNames[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and",
                                     "__syncthreads_or"};
const char* const kWarpNames[] = {"__syncwarp",      "__shfl_sync",   "__shfl_up_sync",
                                  "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync",
                                  "__any_sync",       "__all_sync"};

size_t stack_size() {
  if (!g_stack_size) {
    size_t kib = 256;
#ifdef GPUCONV_EMU_ASAN
    kib = 1024;
#endif
    const char* env = getenv("GPUCONV_EMU_STACK_KB");
    if (env && atol(env) > 0) kib = (size_t)atol(env);
    g_stack_size = kib * 1024;
  }
  return g_stack_size;
}

// ---- messages ---------------------------------------------------------------------------------

int where(char* buf, size_t n, const Thread* t) {
  const gpuconv_emu_dim& b = gpuconv_emu_st.block_idx;
  return snprintf(buf, n, "kernel '%s' block (%u,%u,%u) thread (%u,%u,%u)", g_kernel, b.x, b.y, b.z,
                  t->tid.x, t->tid.y, t->tid.z);
}

void jump_to_launcher() __attribute__((noreturn));
void jump_to_launcher() {
#ifdef GPUCONV_EMU_ASAN
  g_fail_from_fiber = g_in_fiber;
  if (g_in_fiber) __sanitizer_start_switch_fiber(nullptr, g_main_bottom, g_main_size);
#endif
  siglongjmp(g_launch_jb, 1);
}

// Records an error about thread `t` (may be null) and leaves the launch.
void fail(int code, const Thread* t, const char* fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
void fail(int code, const Thread* t, const char* fmt, ...) {
  int n = 0;
  if (t) {
    n = where(g_err, sizeof g_err, t);
    n += snprintf(g_err + n, sizeof g_err - n, ": ");
  } else {
    const gpuconv_emu_dim& b = gpuconv_emu_st.block_idx;
    n = snprintf(g_err, sizeof g_err, "kernel '%s' block (%u,%u,%u): ", g_kernel, b.x, b.y, b.z);
  }
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err + n, sizeof g_err - n, fmt, ap);
  va_end(ap);
  g_err_code = code;
  jump_to_launcher();
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

void fiber_main() {
  Fiber* f = g_cur_fiber;
#ifdef GPUCONV_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_main_bottom, &g_main_size);
#endif
  for (;;) {
    to_scheduler(f);
    g_entry(g_args);
    g_cur->state = ST_EXITED;
  }
}

void switch_to(Fiber* f) {
  g_cur_fiber = f;
  g_in_fiber = 1;
#ifdef GPUCONV_EMU_ASAN
  __sanitizer_start_switch_fiber(&g_sched_fake, f->stack_lo, f->stack_size);
  swapcontext(&g_sched_uc, &f->uc);
  __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#else
  if (!_setjmp(g_sched_jb)) _longjmp(f->jb, 1);
#endif
  g_in_fiber = 0;
}

bool fiber_prepare(Fiber* f) {
  if (f->ready) return true;
  size_t ss = stack_size();
  if (!f->mem || f->stack_size != ss) {
    if (f->mem) munmap(f->mem, f->mem_size);
    f->mem_size = kGuard + ss;
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
  }
  getcontext(&f->uc);
  // Stagger the stack tops so that the fibers' hot frames do not all map to the same cache sets.
  const size_t color = ((size_t)(f - g_fibers) * 17u * 64u) % (32u * 1024u);
  f->uc.uc_stack.ss_sp = f->stack_lo;
  f->uc.uc_stack.ss_size = f->stack_size - color;
  f->uc.uc_link = nullptr;
  makecontext(&f->uc, fiber_main, 0);
  g_cur_fiber = f;
  g_in_fiber = 1;
#ifdef GPUCONV_EMU_ASAN
  __sanitizer_start_switch_fiber(&g_sched_fake, f->stack_lo, f->stack_size);
  swapcontext(&g_sched_uc, &f->uc);
  __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#else
  if (!_setjmp(g_sched_jb)) setcontext(&f->uc);
#endif
  g_in_fiber = 0;
  f->ready = true;
  return true;
}

// ---- signals ----------------------------------------------------------------------------------

void on_fault(int sig, siginfo_t* si, void*) {
  if (!g_in_fiber) {  // not a kernel fault: let the previous handler see it again
    sigaction(SIGSEGV, &g_old_segv, nullptr);
    sigaction(SIGBUS, &g_old_bus, nullptr);
    return;
  }
  g_in_fiber = 0;
  char* a = (char*)si->si_addr;
  Fiber* f = g_cur_fiber;
  if (f && a >= f->mem && a < f->stack_lo + 4096) {
    int n = where(g_err, sizeof g_err, g_cur);
    snprintf(g_err + n, sizeof g_err - n,
             ": stack overflow (the thread's %zu KiB fiber stack is exhausted: large local arrays "
             "or deep recursion; GPUCONV_EMU_STACK_KB raises it)",
             f->stack_size / 1024);
    g_err_code = GPUCONV_EMU_ERR_STACK_OVERFLOW;
  } else {
    int n = where(g_err, sizeof g_err, g_cur);
    snprintf(g_err + n, sizeof g_err - n,
             ": %s at address %p (invalid memory access; run with GPUCONV_EMU_ASAN=1 to find the line)",
             sig == SIGBUS ? "bus error" : "segmentation fault", (void*)a);
    g_err_code = GPUCONV_EMU_ERR_MEMORY_FAULT;
  }
  siglongjmp(g_launch_jb, 1);
}

void install_fault_handlers() {
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
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_old_segv);
  sigaction(SIGBUS, &sa, &g_old_bus);
#endif
}

void remove_fault_handlers() {
#ifndef GPUCONV_EMU_ASAN
  sigaction(SIGSEGV, &g_old_segv, nullptr);
  sigaction(SIGBUS, &g_old_bus, nullptr);
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

// ---- shared memory ----------------------------------------------------------------------------

struct TlsQuery {
  const char* addr;
  char* base;
  size_t size;
};

int tls_callback(struct dl_phdr_info* info, size_t, void* data) {
  TlsQuery* q = (TlsQuery*)data;
  bool mine = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& p = info->dlpi_phdr[i];
    if (p.p_type != PT_LOAD) continue;
    const char* lo = (const char*)(info->dlpi_addr + p.p_vaddr);
    if (q->addr >= lo && q->addr < lo + p.p_memsz) mine = true;
  }
  if (!mine) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    if (info->dlpi_phdr[i].p_type == PT_TLS) {
      q->base = (char*)info->dlpi_tls_data;
      q->size = info->dlpi_phdr[i].p_memsz;
    }
  }
  return 1;
}

char* g_tls_base = nullptr;
size_t g_tls_size = 0;

// Fills the static shared memory of the module and the requested dynamic shared memory with
// 0xFF (NaN for float, -1 for int) and the bytes after it with the canary.
void poison_shared(size_t dyn_bytes) {
  char* dyn = (char*)g_dyn;
  const size_t dyn_total = GPUCONV_EMU_MAX_DYN_SMEM + GPUCONV_EMU_CANARY_BYTES;
  if (g_tls_base && dyn >= g_tls_base && dyn + dyn_total <= g_tls_base + g_tls_size) {
    memset(g_tls_base, kPoison, dyn - g_tls_base);
    memset(dyn + dyn_total, kPoison, (g_tls_base + g_tls_size) - (dyn + dyn_total));
  }
  memset(dyn, kPoison, dyn_bytes);
  memset(dyn + dyn_bytes, kCanary, GPUCONV_EMU_CANARY_BYTES);
}

unsigned char g_canary_ref[GPUCONV_EMU_CANARY_BYTES];

long canary_damage(size_t limit) {
  const unsigned char* c = g_dyn + g_dyn_bytes;
  if (memcmp(c, g_canary_ref, limit) == 0) return -1;
  for (size_t i = 0; i < limit; ++i)
    if (c[i] != kCanary) return (long)i;
  return -1;
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
  if (!g_in_fiber || !g_cur) {
    fprintf(stderr, "gpuconv emulator: %s at %s:%d outside a kernel launch\n", what, file, line);
    abort();
  }
  fail(code, g_cur, "%s at %s:%d", what, file, line);
}

// ---- host-side entry points ---------------------------------------------------------------------

int gpuconv_emu_abi_version(void) { return GPUCONV_EMU_ABI; }

const char* gpuconv_emu_error_message(void) { return g_err; }

size_t gpuconv_emu_symbol_size(void* address) {
  Dl_info info;
  const ElfW(Sym)* sym = nullptr;
  if (!dladdr1(address, &info, (void**)&sym, RTLD_DL_SYMENT) || !sym) return 0;
  return sym->st_size;
}

int gpuconv_emu_launch(gpuconv_emu_entry_fn entry, unsigned long long* slots, int nargs,
                       const unsigned int* grid, const unsigned int* block, size_t shared_mem, int order,
                       unsigned long long seed, const char* kernel_name, gpuconv_emu_smem_fn smem) {
  g_err[0] = 0;
  g_err_code = 0;
  g_kernel = kernel_name;
  const uint64_t nthreads = (uint64_t)block[0] * block[1] * block[2];
  if (nthreads == 0 || nthreads > kMaxThreads || shared_mem > GPUCONV_EMU_MAX_DYN_SMEM || nargs < 0 || nargs > 4096) {
    snprintf(g_err, sizeof g_err, "kernel '%s': invalid launch configuration", kernel_name);
    return GPUCONV_EMU_ERR_LAUNCH;
  }
  void* argv[4096];
  for (int i = 0; i < nargs; ++i) argv[i] = &slots[i];
  g_entry = entry;
  g_args = argv;
  g_nthreads = (unsigned)nthreads;
  for (unsigned i = 0; i < g_nthreads; ++i) {
    if (!fiber_prepare(&g_fibers[i])) {
      snprintf(g_err, sizeof g_err, "kernel '%s': cannot allocate fiber stacks", kernel_name);
      return GPUCONV_EMU_ERR_LAUNCH;
    }
  }
  if (g_canary_ref[0] != kCanary) memset(g_canary_ref, kCanary, sizeof g_canary_ref);
  g_dyn = (unsigned char*)smem();  // also makes sure this thread's TLS block exists
  g_dyn_bytes = shared_mem;
  {
    TlsQuery q = {(const char*)(void*)smem, nullptr, 0};
    dl_iterate_phdr(tls_callback, &q);
    g_tls_base = q.base;
    g_tls_size = q.size;
  }
  gpuconv_emu_st.block_dim = {block[0], block[1], block[2]};
  gpuconv_emu_st.grid_dim = {grid[0], grid[1], grid[2]};
  const uint64_t nblocks = (uint64_t)grid[0] * grid[1] * grid[2];
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
  install_fault_handlers();
  if (sigsetjmp(g_launch_jb, 1)) {
#ifdef GPUCONV_EMU_ASAN
    if (g_fail_from_fiber) __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    g_in_fiber = 0;
    remove_fault_handlers();
    for (int i = 0; i < kMaxThreads; ++i) g_fibers[i].ready = false;  // abandoned mid-kernel
    fflush(stdout);
    return g_err_code ? g_err_code : GPUCONV_EMU_ERR_LAUNCH;
  }
  for (uint64_t k = 0; k < nblocks; ++k) {
    uint64_t b = k;
    if (order == ORDER_REVERSE) b = nblocks - 1 - k;
    else if (order == ORDER_RANDOM && nblocks > 1) b = (unsigned __int128)(mult * (unsigned __int128)k + add) % nblocks;
    gpuconv_emu_st.block_idx.x = (unsigned)(b % grid[0]);
    gpuconv_emu_st.block_idx.y = (unsigned)((b / grid[0]) % grid[1]);
    gpuconv_emu_st.block_idx.z = (unsigned)(b / ((uint64_t)grid[0] * grid[1]));
    poison_shared(shared_mem);
    run_block(order, splitmix(rng));
    long bad = canary_damage(GPUCONV_EMU_CANARY_BYTES);
    if (bad >= 0)
      fail(GPUCONV_EMU_ERR_SMEM_OVERRUN, nullptr,
           "a thread wrote past the end of the %zu bytes of dynamic shared memory requested (shared_mem), "
           "at byte offset %zu",
           shared_mem, shared_mem + (size_t)bad);
  }
  remove_fault_handlers();
  fflush(stdout);
  return 0;
}

}  // extern "C"
