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

#include "../core/data.h"
#include "../core/model.h"
#include "../core/util.h"

#include <stdint.h>

typedef struct Backend Backend;

typedef enum { PRECISION_FP32 = 0, PRECISION_BF16 = 1 } Precision;

typedef struct {
    int max_batch;              /* largest n passed to forward */
    int threads;                /* 0: all cores */
    int device;                 /* GPU ordinal (cuda) */
    Precision precision;        /* PRECISION_BF16: cuda only */
    /* cuda: the file that records the convolution algorithms picked
     * (core/algo_record.h), read before cuDNN is asked and kept up to date;
     * NULL: none. seed: another run's record, read when this one has none
     * yet (a run resumed from another folder). */
    const char *algo_record, *algo_record_seed;
} BackendOptions;

/* One training step, for backends that run it whole (train_step). */
typedef struct {
    const int *order;           /* the epoch's order of training images, host */
    int norder;                 /* its length */
    int offset, count;          /* this batch: order[offset .. offset + count) */
    uint64_t seed;
    int epoch;
    int64_t step;               /* 0-based iteration: the shake draws' counter */
    int augment;
    int forward, backward, level; /* ShakeMode, ShakeMode, ShakeLevel */
    float lr, momentum, wd;
} TrainStep;

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
     * x: (n, in_c, in_h, in_w) host, normalized images; NULL: the batch
     *   made by batch() (backends with set_data only).
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

    /*
     * Optional, NULL where the backend has none. set_data keeps the data
     * sets' bytes on the device (set 0: train, 1: test; either may be NULL);
     * batch then assembles data_batch's images for (set, idx, count, seed,
     * epoch, augment) there, bit for bit as data_batch does, and the next
     * forward with x = NULL computes on them. Labels stay the host's. A
     * backend has both or neither.
     */
    int (*set_data)(Backend *b, const Dataset *train, const Dataset *test, Err *e);
    int (*batch)(Backend *b, int set, const int *idx, int count, uint64_t seed, int epoch,
                 int augment, Err *e);
    /*
     * Optional, after set_data: one whole training step where the data is
     * -- batch, shake coefficients (shake_draw's), forward, softmax
     * cross-entropy (train.c's softmax_xent), backward, SGD update -- with
     * no host work but the launch. The loss and error sums stay there until
     * step_stats returns and clears them; bad_step is the first step whose
     * loss was not finite, -1 if none. Within an epoch the order must not
     * change (the backend keeps its copy per epoch).
     */
    int (*train_step)(Backend *b, const TrainStep *s, Err *e);
    int (*step_stats)(Backend *b, double *loss_sum, int64_t *wrong, int64_t *bad_step, Err *e);

    /* What it computes on, in a line for the run's records: the processor
     * or GPU and the libraries with their versions. */
    void (*describe)(const Backend *b, char *buf, size_t len);
} BackendOps;

extern const BackendOps backend_ref;   /* kernels/ref.c */
extern const BackendOps backend_cpu;   /* kernels/cpu.c (oneDNN) */
extern const BackendOps backend_cuda;  /* kernels/cuda.cu (CUDA, cuDNN, cuBLAS) */

/* Looks a backend up by name ("ref", "cpu", "cuda"); NULL if unknown or not built. */
const BackendOps *backend_find(const char *name);
/* Comma-separated names of the backends this binary has. */
const char *backend_names(void);

/* GPUs the cuda backend can use: 0 when it is not built or none is visible
 * (tests skip on 0). */
int backend_cuda_devices(void);

/*
 * The cuda backend's device-side random draws, for tests that compare them
 * with the host's (shake_draw, train.c's augmentation): alpha and beta
 * (nblocks, n) as shake_draw fills them, computed by a kernel from the same
 * Philox streams. Returns -1 with e set when the backend is not built.
 */
int backend_cuda_shake_draw(float *alpha, float *beta, int nblocks, int n, uint64_t seed,
                            int64_t step, int fwd, int bwd, int level, int device, Err *e);
/* How many training steps a cuda backend has run as a replayed CUDA graph
 * (tests: graphs are in use). Only for a backend made by backend_cuda. */
long backend_cuda_graph_launches(const Backend *b);
/* How many of the algorithm search's scratch buffers a cuda backend holds
 * (SHAKE_CUDA_FIND; 0 once the search is over). Tests only. */
int backend_cuda_search_buffers(const Backend *b);
/* The algorithms (cuDNN's numbers) that conv i of a cuda backend uses at
 * its current batch size: forward, backward data, backward filter into
 * algo; 1, or 0 where conv i has none (never runs, or not prepared yet), -1
 * past the last conv. Only for a backend made by backend_cuda (tests). */
int backend_cuda_conv_algos(const Backend *b, int i, int algo[3]);
/* How many blocks of a cuda backend run their branches' first convolutions
 * as one (SHAKE_CUDA_MERGE). Only for a backend made by backend_cuda. */
int backend_cuda_merged_blocks(const Backend *b);
/* data_batch (core/data.h) computed on the device from d's bytes: x
 * (count, c, h, w) and labels (count) as data_batch fills them. */
int backend_cuda_data_batch(float *x, int *labels, const Dataset *d, const int *idx, int count,
                            uint64_t seed, int epoch, int augment, int device, Err *e);

#endif
