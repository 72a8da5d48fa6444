// Memory-access profile of an emulated launch: the hooks GCC's -fsanitize=thread instrumentation
// calls before every load and store of the kernel code (__tsan_read4, __tsan_write16, ...), served
// here instead of by libtsan, and the aggregation of those accesses into warp-level requests.
//
// Used only by kernel modules built in the profile mode (gpuconv.emulator.build, profile=True);
// the normal and AddressSanitizer builds never reference these symbols. The library is loaded
// RTLD_GLOBAL after the emulator runtime, whose gpuconv_emu_st it reads to know which thread runs.
//
// What is recorded: accesses whose address lies in one of the launch's array arguments (global
// memory) or in the module's TLS block, which is the block's shared memory (static __shared__
// arrays and the extern __shared__ buffer). Everything else (the fiber stacks: local variables;
// the runtime's own data) is ignored. A site is the instrumented call's return address (plus the
// address space, and the 16-byte piece for accesses wider than 16 bytes, which the GPU issues as
// several 128-bit instructions); the k-th execution of a site by the lanes of a warp is one
// request. Requests are evaluated when the block finishes:
//   global: sectors = distinct 32-byte segments, each argument's base taken as 256-byte aligned;
//           bytes = the bytes the active lanes asked for; ideal sectors = distinct bytes / 32, up.
//   shared: wavefronts by the 32-bank, 4-byte rule, 8-byte accesses in half-warp phases and
//           16-byte accesses in quarter-warp phases; a word read by several lanes of a phase is
//           read once, and a phase that only reads words of earlier phases costs nothing
//           (broadcasts are free); ideal = ceil(active lanes * width / 128), the minimum for that
//           width and number of lanes (a broadcast can cost less).
// Blocks run one after another (the launcher uses the forward order), so a new block index at a
// thread's entry means the previous block has finished.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "emu_runtime.h"

namespace {

enum { SPACE_GLOBAL = 0, SPACE_SHARED = 1 };
enum { KIND_LOAD = 0, KIND_STORE = 1 };

constexpr int kMaxRegions = 64;
constexpr int kMaxSites = 4096;
constexpr int kSiteTable = 16384;  // power of two, > 2 * kMaxSites
constexpr uint32_t kRequestCap = 512;  // requests per (site, warp, block) analysed in full
constexpr uint64_t kRegionSpacing = 1ull << 40;

struct Region {
  uintptr_t lo, hi;
  uint64_t vbase;               // 256-byte aligned virtual base
  std::vector<uint64_t> touched;  // bitmap of the sectors any request touched (whole launch)
};

struct Request {
  uint32_t mask;
  uint8_t size[32];
  uint64_t addr[32];  // global: virtual address; shared: offset in the TLS block
};

struct Site {
  uintptr_t ret;
  int space, kind, piece;
  std::vector<uint32_t> count;                // executions per thread of the current block
  std::vector<std::vector<Request>> reqs;     // per warp, request k at index k (k < kRequestCap)
  std::vector<uint32_t> warp_requests;        // per warp: requests of the current block
  bool used;                                  // touched in the current block
  // Totals over the launch (units: sectors for global, wavefronts for shared).
  uint64_t requests, lanes, units, ideal, bytes, analysed;
  double extra_units, extra_ideal, extra_bytes;  // extrapolated beyond the cap
};

bool g_active = false;
int g_error = 0;
Region g_regions[kMaxRegions];
int g_nregions = 0;
uintptr_t g_smem_lo = 0, g_smem_hi = 0;
gpuconv_emu_entry_fn g_entry = nullptr;
std::vector<uint64_t> g_blocks;  // sorted linear block indices to run; empty: all
bool g_all_blocks = true;
uint64_t g_cur_block = ~0ull;
bool g_cur_selected = false;
uint64_t g_blocks_run = 0;
unsigned g_nthreads = 0, g_nwarps = 0;

Site g_sites[kMaxSites];
int g_nsites = 0;
int g_table[kSiteTable];  // site index + 1, 0 = empty
std::vector<int> g_used_sites;

// Per-block distinct global load sectors (the L1 model: a block's loads reach L2 once each).
std::vector<uint64_t> g_l2_set;
std::vector<uint32_t> g_l2_used;
uint64_t g_l2_block_sectors = 0;
uint64_t g_l2_load_sectors = 0;
double g_l2_extra = 0;

inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void l2_reset() {
  if (g_l2_set.empty()) g_l2_set.assign(1u << 16, ~0ull);
  for (uint32_t i : g_l2_used) g_l2_set[i] = ~0ull;
  g_l2_used.clear();
  g_l2_block_sectors = 0;
}

void l2_insert(uint64_t sector) {
  if (2 * (g_l2_used.size() + 1) > g_l2_set.size()) {  // grow: rehash
    std::vector<uint64_t> old;
    old.swap(g_l2_set);
    g_l2_set.assign(old.size() * 2, ~0ull);
    g_l2_used.clear();
    for (uint64_t s : old)
      if (s != ~0ull) {
        uint32_t i = (uint32_t)(mix(s) & (g_l2_set.size() - 1));
        while (g_l2_set[i] != ~0ull) i = (i + 1) & (g_l2_set.size() - 1);
        g_l2_set[i] = s;
        g_l2_used.push_back(i);
      }
  }
  uint32_t i = (uint32_t)(mix(sector) & (g_l2_set.size() - 1));
  while (g_l2_set[i] != ~0ull) {
    if (g_l2_set[i] == sector) return;
    i = (i + 1) & (g_l2_set.size() - 1);
  }
  g_l2_set[i] = sector;
  g_l2_used.push_back(i);
  ++g_l2_block_sectors;
}

void mark_touched(uint64_t sector) {
  const uint64_t r = sector * 32 / kRegionSpacing;
  if (r >= (uint64_t)g_nregions) return;
  Region& reg = g_regions[r];
  const uint64_t s = sector - reg.vbase / 32;
  if (s / 64 < reg.touched.size()) reg.touched[s / 64] |= 1ull << (s % 64);
}

// ---- evaluating one request --------------------------------------------------------------------

struct GlobalCost { uint64_t sectors, ideal, bytes; };

GlobalCost global_cost(const Request& q, bool load) {
  uint64_t sec[64];
  uint64_t lo[32], hi[32];
  int ns = 0, n = 0;
  uint64_t bytes = 0;
  for (int l = 0; l < 32; ++l) {
    if (!((q.mask >> l) & 1u)) continue;
    const uint64_t a = q.addr[l], e = a + q.size[l];
    bytes += q.size[l];
    lo[n] = a;
    hi[n] = e;
    ++n;
    for (uint64_t s = a / 32; s <= (e - 1) / 32 && ns < 64; ++s) sec[ns++] = s;
  }
  std::sort(sec, sec + ns);
  const int nu = (int)(std::unique(sec, sec + ns) - sec);
  for (int i = 0; i < nu; ++i) {
    mark_touched(sec[i]);
    if (load) l2_insert(sec[i]);
  }
  // distinct bytes: the union of the lanes' byte intervals
  uint64_t order[32];
  for (int i = 0; i < n; ++i) order[i] = ((uint64_t)i);
  std::sort(order, order + n, [&](uint64_t x, uint64_t y) { return lo[x] < lo[y]; });
  uint64_t distinct = 0, cur_lo = 0, cur_hi = 0;
  bool open = false;
  for (int i = 0; i < n; ++i) {
    const uint64_t a = lo[order[i]], e = hi[order[i]];
    if (open && a <= cur_hi) {
      cur_hi = std::max(cur_hi, e);
    } else {
      if (open) distinct += cur_hi - cur_lo;
      cur_lo = a;
      cur_hi = e;
      open = true;
    }
  }
  if (open) distinct += cur_hi - cur_lo;
  return {(uint64_t)nu, (distinct + 31) / 32, bytes};
}

struct SharedCost { uint64_t wavefronts, ideal, bytes; };

SharedCost shared_cost(const Request& q) {
  int width = 0, active = 0;
  uint64_t bytes = 0;
  for (int l = 0; l < 32; ++l)
    if ((q.mask >> l) & 1u) {
      width = std::max(width, (int)q.size[l]);
      bytes += q.size[l];
      ++active;
    }
  const int phase_lanes = width > 8 ? 8 : width > 4 ? 16 : 32;
  uint64_t served[32 * 5];  // distinct words of the phases so far, sorted
  int nserved = 0;
  uint64_t wavefronts = 0;
  for (int p0 = 0; p0 < 32; p0 += phase_lanes) {
    uint64_t words[32 * 5];
    int nw = 0;
    for (int l = p0; l < p0 + phase_lanes; ++l) {
      if (!((q.mask >> l) & 1u)) continue;
      const uint64_t a = q.addr[l], e = a + q.size[l];
      for (uint64_t w = a / 4; w <= (e - 1) / 4 && nw < 32 * 5; ++w) words[nw++] = w;
    }
    if (!nw) continue;
    std::sort(words, words + nw);
    nw = (int)(std::unique(words, words + nw) - words);
    if (std::includes(served, served + nserved, words, words + nw)) continue;  // a broadcast of earlier data
    int per_bank[32] = {0};
    int worst = 0;
    for (int i = 0; i < nw; ++i) worst = std::max(worst, ++per_bank[words[i] % 32]);
    wavefronts += (uint64_t)worst;
    uint64_t merged[32 * 5];
    const int nm = (int)(std::set_union(served, served + nserved, words, words + nw, merged) - merged);
    std::copy(merged, merged + std::min(nm, 32 * 5), served);
    nserved = std::min(nm, 32 * 5);
  }
  const uint64_t ideal = ((uint64_t)active * (uint64_t)width + 127) / 128;
  return {wavefronts, ideal ? ideal : 1, bytes};
}

// ---- blocks -------------------------------------------------------------------------------------

void flush_block() {
  uint64_t load_requests = 0, load_analysed = 0;
  for (int si : g_used_sites) {
    Site& s = g_sites[si];
    for (unsigned w = 0; w < g_nwarps; ++w) {
      const uint32_t nreq = s.warp_requests[w];
      if (!nreq) continue;
      const uint32_t nan = std::min(nreq, kRequestCap);
      uint64_t units = 0, ideal = 0, bytes = 0;
      for (uint32_t k = 0; k < nan; ++k) {
        const Request& q = s.reqs[w][k];
        s.lanes += (uint64_t)__builtin_popcount(q.mask);
        if (s.space == SPACE_GLOBAL) {
          const GlobalCost c = global_cost(q, s.kind == KIND_LOAD);
          units += c.sectors;
          ideal += c.ideal;
          bytes += c.bytes;
        } else {
          const SharedCost c = shared_cost(q);
          units += c.wavefronts;
          ideal += c.ideal;
          bytes += c.bytes;
        }
      }
      s.requests += nreq;
      s.analysed += nan;
      s.units += units;
      s.ideal += ideal;
      s.bytes += bytes;
      if (nreq > nan) {
        const double f = (double)(nreq - nan) / nan;
        s.extra_units += f * units;
        s.extra_ideal += f * ideal;
        s.extra_bytes += f * bytes;
      }
      if (s.space == SPACE_GLOBAL && s.kind == KIND_LOAD) {
        load_requests += nreq;
        load_analysed += nan;
      }
      s.warp_requests[w] = 0;
    }
    std::fill(s.count.begin(), s.count.end(), 0u);
    s.used = false;
  }
  g_used_sites.clear();
  g_l2_load_sectors += g_l2_block_sectors;
  if (load_requests > load_analysed && load_analysed)
    g_l2_extra += (double)g_l2_block_sectors * (double)(load_requests - load_analysed) / (double)load_analysed;
  l2_reset();
}

int site_for(uintptr_t ret, int space, int kind, int piece) {
  uint64_t key = ((uint64_t)ret << 8) ^ ((uint64_t)space << 6) ^ ((uint64_t)kind << 5) ^ (uint64_t)piece;
  uint32_t i = (uint32_t)(mix(key) & (kSiteTable - 1));
  for (;;) {
    const int e = g_table[i];
    if (!e) break;
    const Site& s = g_sites[e - 1];
    if (s.ret == ret && s.space == space && s.kind == kind && s.piece == piece) return e - 1;
    i = (i + 1) & (kSiteTable - 1);
  }
  if (g_nsites >= kMaxSites) {
    g_error = 1;
    return -1;
  }
  Site& s = g_sites[g_nsites];
  s.ret = ret;
  s.space = space;
  s.kind = kind;
  s.piece = piece;
  s.count.assign(g_nthreads, 0u);
  s.reqs.assign(g_nwarps, std::vector<Request>());
  s.warp_requests.assign(g_nwarps, 0u);
  s.used = false;
  s.requests = s.lanes = s.units = s.ideal = s.bytes = s.analysed = 0;
  s.extra_units = s.extra_ideal = s.extra_bytes = 0;
  g_table[i] = ++g_nsites;
  return g_nsites - 1;
}

inline void record_one(uintptr_t ret, int space, int kind, int piece, uint64_t mapped, unsigned size) {
  const int si = site_for(ret, space, kind, piece);
  if (si < 0) return;
  Site& s = g_sites[si];
  const gpuconv_emu_dim& t = gpuconv_emu_st.thread_idx;
  const gpuconv_emu_dim& bd = gpuconv_emu_st.block_dim;
  const unsigned linear = t.x + bd.x * (t.y + bd.y * t.z);
  const unsigned warp = linear >> 5, lane = linear & 31u;
  if (!s.used) {
    s.used = true;
    g_used_sites.push_back(si);
  }
  const uint32_t k = s.count[linear]++;
  if (k + 1 > s.warp_requests[warp]) s.warp_requests[warp] = k + 1;
  if (k >= kRequestCap) return;
  std::vector<Request>& v = s.reqs[warp];
  if (v.size() <= k) {
    const size_t old = v.size();
    v.resize(std::max<size_t>(k + 1, old * 2 < kRequestCap ? std::max<size_t>(old * 2, 8) : kRequestCap));
    for (size_t j = old; j < v.size(); ++j) v[j].mask = 0;
  }
  Request& q = v[k];
  q.mask |= 1u << lane;
  q.size[lane] = (uint8_t)size;
  q.addr[lane] = mapped;
}

inline void record(const void* addr, unsigned size, int kind, void* ret_addr) {
  if (!g_active) return;
  const uintptr_t a = (uintptr_t)addr;
  int space;
  uint64_t mapped;
  if (a >= g_smem_lo && a < g_smem_hi) {
    space = SPACE_SHARED;
    mapped = a - g_smem_lo;
  } else {
    int r = 0;
    while (r < g_nregions && !(a >= g_regions[r].lo && a < g_regions[r].hi)) ++r;
    if (r == g_nregions) return;
    space = SPACE_GLOBAL;
    mapped = g_regions[r].vbase + (a - g_regions[r].lo);
  }
  const uintptr_t ret = (uintptr_t)ret_addr;
  if (size <= 16) {
    record_one(ret, space, kind, 0, mapped, size);
    return;
  }
  for (unsigned off = 0, piece = 0; off < size; off += 16, ++piece)
    record_one(ret, space, kind, (int)piece, mapped + off, std::min(16u, size - off));
}

struct TlsQuery {
  const char* addr;
  uintptr_t base;
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
  for (int i = 0; i < info->dlpi_phnum; ++i)
    if (info->dlpi_phdr[i].p_type == PT_TLS) {
      q->base = (uintptr_t)info->dlpi_tls_data;
      q->size = info->dlpi_phdr[i].p_memsz;
    }
  return 1;
}

}  // namespace

extern "C" {

// ---- the hooks GCC's thread-sanitizer instrumentation calls --------------------------------------

#define GPUCONV_PROF_HOOK(NAME, SIZE, KIND) \
  void NAME(void* p) { record(p, SIZE, KIND, __builtin_return_address(0)); }
GPUCONV_PROF_HOOK(__tsan_read1, 1, KIND_LOAD)
GPUCONV_PROF_HOOK(__tsan_read2, 2, KIND_LOAD)
GPUCONV_PROF_HOOK(__tsan_read4, 4, KIND_LOAD)
GPUCONV_PROF_HOOK(__tsan_read8, 8, KIND_LOAD)
GPUCONV_PROF_HOOK(__tsan_read16, 16, KIND_LOAD)
GPUCONV_PROF_HOOK(__tsan_write1, 1, KIND_STORE)
GPUCONV_PROF_HOOK(__tsan_write2, 2, KIND_STORE)
GPUCONV_PROF_HOOK(__tsan_write4, 4, KIND_STORE)
GPUCONV_PROF_HOOK(__tsan_write8, 8, KIND_STORE)
GPUCONV_PROF_HOOK(__tsan_write16, 16, KIND_STORE)
GPUCONV_PROF_HOOK(__tsan_unaligned_read2, 2, KIND_LOAD)
GPUCONV_PROF_HOOK(__tsan_unaligned_read4, 4, KIND_LOAD)
GPUCONV_PROF_HOOK(__tsan_unaligned_read8, 8, KIND_LOAD)
GPUCONV_PROF_HOOK(__tsan_unaligned_read16, 16, KIND_LOAD)
GPUCONV_PROF_HOOK(__tsan_unaligned_write2, 2, KIND_STORE)
GPUCONV_PROF_HOOK(__tsan_unaligned_write4, 4, KIND_STORE)
GPUCONV_PROF_HOOK(__tsan_unaligned_write8, 8, KIND_STORE)
GPUCONV_PROF_HOOK(__tsan_unaligned_write16, 16, KIND_STORE)
#undef GPUCONV_PROF_HOOK

void __tsan_read_range(void* p, size_t n) {
  if (n) record(p, (unsigned)std::min<size_t>(n, 1u << 20), KIND_LOAD, __builtin_return_address(0));
}
void __tsan_write_range(void* p, size_t n) {
  if (n) record(p, (unsigned)std::min<size_t>(n, 1u << 20), KIND_STORE, __builtin_return_address(0));
}
void __tsan_init(void) {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit(void) {}
void __tsan_vptr_read(void**) {}
void __tsan_vptr_update(void**, void*) {}

// ---- the profiler's interface (Python, through ctypes) -------------------------------------------

// regions: lo, hi pairs of the array arguments (merged and sorted by the caller); blocks: sorted
// linear indices of the blocks to run (nblocks 0: all); smem: the module's gpuconv_emu_smem.
int gpuconv_prof_begin(const unsigned long long* regions, int nregions, const unsigned long long* blocks,
                       unsigned long long nblocks, gpuconv_emu_entry_fn entry, gpuconv_emu_smem_fn smem,
                       unsigned nthreads) {
  if (nregions < 0 || nregions > kMaxRegions || !entry || !smem || nthreads == 0 || nthreads > 1024) return 1;
  for (int i = 0; i < g_nsites; ++i) {
    Site& s = g_sites[i];
    std::vector<uint32_t>().swap(s.count);
    std::vector<std::vector<Request>>().swap(s.reqs);
    std::vector<uint32_t>().swap(s.warp_requests);
  }
  g_nsites = 0;
  memset(g_table, 0, sizeof g_table);
  g_used_sites.clear();
  g_nregions = nregions;
  for (int i = 0; i < nregions; ++i) {
    Region& r = g_regions[i];
    r.lo = (uintptr_t)regions[2 * i];
    r.hi = (uintptr_t)regions[2 * i + 1];
    if (r.hi - r.lo >= kRegionSpacing) return 1;
    r.vbase = (uint64_t)i * kRegionSpacing;
    r.touched.assign(((r.hi - r.lo + 31) / 32 + 63) / 64, 0ull);
  }
  g_blocks.assign(blocks, blocks + nblocks);
  g_all_blocks = nblocks == 0;
  smem();  // makes sure this thread's TLS block of the module exists
  TlsQuery q = {(const char*)(void*)smem, 0, 0};
  dl_iterate_phdr(tls_callback, &q);
  if (!q.base) return 2;
  g_smem_lo = q.base;
  g_smem_hi = q.base + q.size;
  g_entry = entry;
  g_nthreads = nthreads;
  g_nwarps = (nthreads + 31) / 32;
  g_cur_block = ~0ull;
  g_cur_selected = false;
  g_blocks_run = 0;
  g_l2_load_sectors = 0;
  g_l2_extra = 0;
  l2_reset();
  g_error = 0;
  g_active = true;
  return 0;
}

// The launch entry while profiling: runs the kernel for the selected blocks only.
void gpuconv_prof_entry(void** args) {
  const gpuconv_emu_dim& b = gpuconv_emu_st.block_idx;
  const gpuconv_emu_dim& g = gpuconv_emu_st.grid_dim;
  const uint64_t linear = b.x + (uint64_t)g.x * (b.y + (uint64_t)g.y * b.z);
  if (linear != g_cur_block) {
    if (g_cur_selected) flush_block();
    g_cur_block = linear;
    g_cur_selected = g_all_blocks || std::binary_search(g_blocks.begin(), g_blocks.end(), linear);
    if (g_cur_selected) ++g_blocks_run;
  }
  if (g_cur_selected) g_entry(args);
}

// Ends the profile (the last block is evaluated); 0, or 1 when there were more than kMaxSites sites.
int gpuconv_prof_end(void) {
  if (g_active && g_cur_selected) flush_block();
  g_cur_selected = false;
  g_active = false;
  return g_error;
}

int gpuconv_prof_nsites(void) { return g_nsites; }

// out[0..8]: offset of the call in its library, space, kind, piece, requests, active lanes, units
// (sectors or wavefronts), ideal units, bytes; out[9..11]: the extrapolated units, ideal units and
// bytes beyond the analysed requests, times 1000, rounded; out[12]: analysed requests.
void gpuconv_prof_site(int i, unsigned long long* out, const char** library) {
  const Site& s = g_sites[i];
  Dl_info info;
  uintptr_t base = 0;
  *library = "";
  if (dladdr((void*)(s.ret - 1), &info) && info.dli_fbase) {
    base = (uintptr_t)info.dli_fbase;
    *library = info.dli_fname ? info.dli_fname : "";
  }
  out[0] = s.ret - 1 - base;
  out[1] = (unsigned long long)s.space;
  out[2] = (unsigned long long)s.kind;
  out[3] = (unsigned long long)s.piece;
  out[4] = s.requests;
  out[5] = s.lanes;
  out[6] = s.units;
  out[7] = s.ideal;
  out[8] = s.bytes;
  out[9] = (unsigned long long)(s.extra_units * 1000.0 + 0.5);
  out[10] = (unsigned long long)(s.extra_ideal * 1000.0 + 0.5);
  out[11] = (unsigned long long)(s.extra_bytes * 1000.0 + 0.5);
  out[12] = s.analysed;
}

// out: blocks run, distinct global load sectors summed over blocks (plus the extrapolated part,
// times 1000 in out[2]).
void gpuconv_prof_totals(unsigned long long* out) {
  out[0] = g_blocks_run;
  out[1] = g_l2_load_sectors;
  out[2] = (unsigned long long)(g_l2_extra * 1000.0 + 0.5);
}

// Distinct sectors of region i touched by any analysed request of the launch.
unsigned long long gpuconv_prof_region_sectors(int i) {
  if (i < 0 || i >= g_nregions) return 0;
  unsigned long long n = 0;
  for (uint64_t w : g_regions[i].touched) n += (unsigned long long)__builtin_popcountll(w);
  return n;
}

}  // extern "C"
