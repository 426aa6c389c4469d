/*
 * One training run, start to finish: data, model, backend, the SGD loop with
 * shake coefficients and the cosine schedule, evaluation every epoch, a line
 * per epoch on stdout, a JSON-lines log and an atomic checkpoint in `out`.
 */
#ifndef SHAKE_TRAIN_H
#define SHAKE_TRAIN_H

#include <signal.h>
#include <stdio.h>

#include "config.h"
#include "util.h"

typedef struct {
    int epoch;                  /* 1-based */
    int epochs;
    int64_t step;               /* iterations done */
    double lr;                  /* of the epoch's last iteration */
    double train_loss, train_err; /* mean over the epoch's (augmented) batches */
    double test_loss, test_err; /* error as a fraction */
    double seconds;             /* training time of the epoch */
    double images_per_s;
} EpochStats;

/* Set (from a signal handler) to stop at the next step boundary: the run
 * writes its checkpoint and returns TRAIN_INTERRUPTED. */
extern volatile sig_atomic_t train_interrupt;

enum { TRAIN_FAILED = -1, TRAIN_DONE = 0, TRAIN_INTERRUPTED = 1, TRAIN_STOPPED = 2 };

/*
 * Runs cfg; progress lines go to `progress` (may be NULL). Returns TRAIN_DONE
 * when every epoch ran, TRAIN_STOPPED when `steps` ended it early (checkpoint
 * written), TRAIN_INTERRUPTED, or TRAIN_FAILED with the reason in e (a loss
 * that is not finite is "diverged").
 */
int train_run(const TrainConfig *cfg, FILE *progress, Err *e);

/* Called as a run goes, for callers that record it (the orchestrator). */
typedef struct {
    /* after each epoch's evaluation, before its checkpoint is written */
    void (*on_epoch)(void *ctx, const EpochStats *s);
    void *ctx;
    /* once the backend is set up, before the first step: what the run
     * computes on (the backend's describe line); may be NULL */
    void (*on_start)(void *ctx, const char *hardware);
} TrainHooks;

int train_run_hooked(const TrainConfig *cfg, FILE *progress, const TrainHooks *hooks,
                     Err *e);

/*
 * The config to resume checkpoint `path` with: the checkpoint's own config,
 * then the assignments given (key=value). Keys that shape the trajectory
 * (model, data, schedule, seed...) must keep the checkpoint's values; only
 * where it runs may change (backend, threads, data_dir, out, steps).
 */
int train_resume_config(TrainConfig *cfg, const char *path, char **assignments,
                        int n, Err *e);

typedef struct {
    double loss, err;
    int n;
} EvalResult;

/* Evaluates a checkpoint on its data set's test split. data_dir may be NULL
 * (the checkpoint's own). backend "" = the checkpoint's own. */
int eval_checkpoint(const char *path, const char *data_dir, const char *backend,
                    int threads, EvalResult *r, Err *e);

/* Mean cross-entropy over a batch, its gradient (already divided by n) and
 * the count of correct argmax predictions. dlogits may be NULL. */
double softmax_xent(float *dlogits, int *correct, const float *logits,
                    const int *labels, int n, int classes);

#endif
