/*
 * Shake coefficients. alpha for (step, block, image) is the uniform of
 * Philox (seed, RNG_SHAKE_FWD, step, block, image); beta uses RNG_SHAKE_BWD,
 * so a Shake backward pass is independent of the forward draw. Batch level
 * uses image 0's value for the whole batch.
 */
#include "shake.h"

#include "philox.h"

static float draw(ShakeMode mode, uint64_t seed, uint32_t stream,
                  int64_t step, int block, int image)
{
    if (mode == SHAKE_EVEN)
        return 0.5f;
    return rng_uniform(seed, stream, (uint32_t)step, (uint32_t)block, (uint32_t)image);
}

void shake_draw(float *alpha, float *beta, int nblocks, int n, uint64_t seed,
                int64_t step, ShakeMode fwd, ShakeMode bwd, ShakeLevel level)
{
    for (int b = 0; b < nblocks; b++) {
        for (int i = 0; i < n; i++) {
            int image = level == LEVEL_BATCH ? 0 : i;
            float a = draw(fwd, seed, RNG_SHAKE_FWD, step, b, image);
            alpha[b * n + i] = a;
            beta[b * n + i] = bwd == SHAKE_KEEP ? a
                                                : draw(bwd, seed, RNG_SHAKE_BWD, step, b, image);
        }
    }
}
