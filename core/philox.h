/*
 * Philox4x32-10 counter-based random numbers (Salmon et al., SC'11), the
 * generator cuRAND uses. Every random number in a run is a pure function of
 * (seed, stream, counter words), never of a stateful stream, so the CPU and
 * GPU backends draw identical numbers and a resumed run continues exactly.
 *
 * Header-only so that CUDA code compiles the very same function.
 */
#ifndef SHAKE_PHILOX_H
#define SHAKE_PHILOX_H

#include <stdint.h>

#ifdef __CUDACC__
#define PHILOX_FN __host__ __device__ static inline
#else
#define PHILOX_FN static inline
#endif

/* Streams: one per purpose, the first counter word. Never renumber them:
 * checkpoints and recorded seeds depend on these values. */
enum {
    RNG_INIT = 1,       /* parameter init: (tensor, element / 2) */
    RNG_SHUFFLE = 2,    /* epoch order: (epoch, image) */
    RNG_AUGMENT = 3,    /* flip and crop: (epoch, image) */
    RNG_SHAKE_FWD = 4,  /* alpha: (step, block, image) */
    RNG_SHAKE_BWD = 5,  /* beta: (step, block, image) */
    RNG_SUBSET = 6,     /* reduced training set: (class, image) */
    RNG_TEST = 7        /* tests and synthetic data */
};

typedef struct { uint32_t v[4]; } Philox4;

PHILOX_FN Philox4 philox4x32(uint64_t seed, uint32_t c0, uint32_t c1,
                             uint32_t c2, uint32_t c3)
{
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    uint32_t x0 = c0, x1 = c1, x2 = c2, x3 = c3;
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * x0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * x2;
        uint32_t y0 = (uint32_t)(p1 >> 32) ^ x1 ^ k0;
        uint32_t y1 = (uint32_t)p1;
        uint32_t y2 = (uint32_t)(p0 >> 32) ^ x3 ^ k1;
        uint32_t y3 = (uint32_t)p0;
        x0 = y0; x1 = y1; x2 = y2; x3 = y3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    Philox4 out = {{x0, x1, x2, x3}};
    return out;
}

/* 24 random bits as a float in [0, 1): exact, never 1.0. */
PHILOX_FN float philox_u01(uint32_t u)
{
    return (float)(u >> 8) * (1.0f / 16777216.0f);
}

/* One uniform [0, 1) for (stream, a, b, c). */
PHILOX_FN float rng_uniform(uint64_t seed, uint32_t stream, uint32_t a,
                            uint32_t b, uint32_t c)
{
    return philox_u01(philox4x32(seed, stream, a, b, c).v[0]);
}

/* One 32-bit word for (stream, a, b, c), for integer draws. */
PHILOX_FN uint32_t rng_u32(uint64_t seed, uint32_t stream, uint32_t a,
                           uint32_t b, uint32_t c)
{
    return philox4x32(seed, stream, a, b, c).v[0];
}

#endif
