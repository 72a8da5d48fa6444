// The counter-based hash behind every random draw on the device (dropout masks, batch
// augmentation); gpuconv/counter_hash.py computes the same bits on the host.
//
// gc_mix32 is the "lowbias32" xorshift-multiply hash in uint32 arithmetic; a seed's 32-bit key
// is gc_mix32(lo ^ gc_mix32(hi ^ 0x9e3779b9)) from its low and high words.
#pragma once

__device__ inline unsigned gc_mix32(unsigned x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

__device__ inline unsigned gc_seed_key(int seed_lo, int seed_hi) {
    return gc_mix32((unsigned)seed_lo ^ gc_mix32((unsigned)seed_hi ^ 0x9e3779b9u));
}
