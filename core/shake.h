/*
 * The shake coefficients: alpha (forward) and beta (backward) per block and
 * step, drawn from Philox streams keyed by (seed, step, block, image) so any
 * backend and any resumed run draws the same values.
 */
#ifndef SHAKE_SHAKE_H
#define SHAKE_SHAKE_H

#include <stdint.h>

typedef enum { SHAKE_EVEN = 0, SHAKE_SHAKE = 1, SHAKE_KEEP = 2 } ShakeMode;
typedef enum { LEVEL_BATCH = 0, LEVEL_IMAGE = 1 } ShakeLevel;

/*
 * alpha, beta: (nblocks, n), overwritten. fwd: EVEN or SHAKE. bwd: EVEN,
 * SHAKE (independent of alpha) or KEEP (beta = alpha). LEVEL_BATCH gives all
 * images of a block the value drawn for image 0. step: 0-based iteration.
 */
void shake_draw(float *alpha, float *beta, int nblocks, int n, uint64_t seed,
                int64_t step, ShakeMode fwd, ShakeMode bwd, ShakeLevel level);

#endif
