/*
 * The backend contract. A backend computes the network described by a Model
 * on one device. It owns its copies of the parameters, gradients, momentum
 * and batch-norm running statistics; the host moves them in and out in the
 * canonical layouts of model.h (PyTorch layouts), only when it must (start,
 * checkpoint, tests). Every backend computes the same function as `ref`.
 *
 * Coefficients come from the host, drawn by shake.h: alpha and beta are
 * (nblocks, n) arrays, branch 1 scaled by alpha and branch 2 by 1 - alpha in
 * the forward pass; in the backward pass branch 1 receives beta * g and
 * branch 2 (1 - beta) * g; the shortcut receives g.
 */
#ifndef SHAKE_BACKEND_H
#define SHAKE_BACKEND_H

#include "../core/model.h"
#include "../core/util.h"

typedef struct Backend Backend;

typedef struct {
    int max_batch;              /* largest n passed to forward */
    int threads;                /* 0: all cores */
} BackendOptions;

typedef struct {
    const char *name;
    Backend *(*create)(const Model *m, const BackendOptions *o, Err *e);
    void (*destroy)(Backend *b);

    /* host -> backend; momentum may be NULL (zeros) */
    int (*load)(Backend *b, const float *params, const float *state,
                const float *momentum, Err *e);
    /* backend -> host; any pointer may be NULL (skipped) */
    int (*store)(Backend *b, float *params, float *state, float *momentum,
                 float *grads, Err *e);

    /*
     * logits: (n, classes) host, overwritten.
     * x: (n, in_c, in_h, in_w) host, normalized images.
     * train = 1: batch statistics, running statistics updated (momentum
     *   BN_MOMENTUM, unbiased variance), activations kept for backward,
     *   alpha (nblocks, n) used.
     * train = 0: running statistics, both branches scaled by 0.5, alpha
     *   ignored, nothing kept.
     */
    int (*forward)(Backend *b, float *logits, const float *x,
                   const float *alpha, int n, int train, Err *e);
    /*
     * After a training forward with the same n. dlogits: (n, classes) host,
     * the gradient of the loss; beta (nblocks, n). Gradients are overwritten
     * (=), not accumulated.
     */
    int (*backward)(Backend *b, const float *dlogits, const float *beta,
                    int n, Err *e);
    /* SGD step over every parameter (optim.h's formula) with these settings. */
    int (*update)(Backend *b, float lr, float momentum, float wd, Err *e);
} BackendOps;

extern const BackendOps backend_ref;   /* kernels/ref.c */
extern const BackendOps backend_cpu;   /* kernels/cpu.c (oneDNN) */

/* Looks a backend up by name ("ref", "cpu"); NULL if unknown or not built. */
const BackendOps *backend_find(const char *name);
/* Comma-separated names of the backends this binary has. */
const char *backend_names(void);

#endif
