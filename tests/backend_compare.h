/*
 * One backend against `ref`, the comparison that tests/test_backends.c (cpu)
 * and tests/test_cuda.c (cuda, float32 and bf16) run. A case is a small
 * network, a batch size and the shake modes; both backends start from the
 * same weights and see the same images and coefficients for three SGD steps.
 *
 * compare_case follows the two trajectories: training logits, running
 * statistics, every parameter gradient (tensor by tensor), evaluation logits
 * on a smaller batch through the same backend object, the parameters right
 * after load (exactly) and after the three steps. It suits backends that
 * agree to float32 rounding, whose trajectories stay together.
 *
 * compare_case_synced gives the tested backend ref's parameters, running
 * statistics and momentum before every step, so that each comparison starts
 * from common inputs, and checks its SGD step against sgd_nesterov applied
 * to its own gradients. It suits bf16, whose gradients differ from float32
 * ones by enough that two trajectories part after one step.
 */
#ifndef SHAKE_BACKEND_COMPARE_H
#define SHAKE_BACKEND_COMPARE_H

#include <stddef.h>

#include "backend.h"
#include "model.h"
#include "shake.h"

typedef struct {
    const char *name;
    ModelSpec spec;
    int n;                      /* batch of the training steps */
    ShakeMode fwd, bwd;
    ShakeLevel level;
} CompareCase;

/*
 * compare_case's bounds on tu_rel_err. `first`: what one computation from
 * common inputs gives (training logits and running statistics at every step,
 * gradients and evaluation logits at step 0). `steps`: what SGD steps have
 * let drift (evaluation logits after step 0, the parameters at the end).
 */
typedef struct {
    double first, steps;
} CompareTol;

/* compare_case_synced's bounds. */
typedef struct {
    double logits;              /* training and evaluation logits: tu_rel_err */
    double state;               /* running statistics: tu_rel_err */
    double grads;               /* all gradients as one vector: ||a - b|| / ||b|| */
    double update;              /* parameters and momentum after a step against
                                 * sgd_nesterov on the same gradients: tu_rel_err */
} CompareSyncTol;

/* Runs a backend call that reports through `ep`; fails the test on error. */
#define COMPARE_OK(call)                                  \
    do {                                                  \
        Err compare_err = {{0}};                          \
        Err *ep = &compare_err;                           \
        if ((call) != 0)                                  \
            fail_msg("%s: %s", #call, compare_err.msg);   \
    } while (0)

/* ops->create with o, its max_batch set to n; fails the test on error. */
Backend *compare_create(const BackendOps *ops, const Model *m, const BackendOptions *o, int n);

/* Fails the test when tu_rel_err(got, want) > tol (or either has a NaN);
 * returns that error. */
double compare_check(const char *what, const char *cname, const float *got, const float *want,
                     size_t count, double tol);

/* compare_check on each parameter tensor of `got` and `want` (params
 * arena layout, gradients say), each against its own scale. */
void compare_grads(const Model *m, const char *cname, const float *got, const float *want,
                   double tol);

/* Both comparisons of one case: ref runs with 2 threads in float32, the
 * tested backend with *o (its max_batch taken from the case). */
void compare_case(const BackendOps *ops, const BackendOptions *o, const CompareCase *c,
                  const CompareTol *tol);
void compare_case_synced(const BackendOps *ops, const BackendOptions *o, const CompareCase *c,
                         const CompareSyncTol *tol);

#endif
