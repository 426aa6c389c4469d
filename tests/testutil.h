/*
 * Helpers shared by the cmocka tests: scratch folders, seeded random arrays,
 * error measures, and running the `sweep` binary.
 */
#ifndef SHAKE_TESTUTIL_H
#define SHAKE_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "checkpoint.h"
#include "config.h"
#include "model.h"
#include "train.h"

/* A fresh folder under $TMPDIR (or /tmp); returns a static-lifetime copy. */
char *tu_tempdir(const char *tag);
/* Removes a folder tree made by tu_tempdir. */
void tu_rmtree(const char *path);

/* Uniform [lo, hi) from (seed, i) through Philox: reproducible fixtures. */
void tu_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi);

/* max_i |a_i - b_i| / max(max_i |b_i|, tiny): error relative to the
 * tensor's scale, which is what float32 accumulation order perturbs. */
double tu_rel_err(const float *a, const float *b, size_t n);
double tu_max_abs(const float *a, size_t n);

/* Mean softmax cross-entropy in double (for finite differences and
 * reference checks) and, if dlogits is not NULL, its gradient
 * (softmax - onehot) / n. */
double tu_xent(float *dlogits, const float *logits, const int *labels, int n, int classes);

/* Writes bytes to path; fails the test on error. */
void tu_write_file(const char *path, const void *data, size_t len);
/* Reads a whole file (caller frees); NULL if missing. */
void *tu_read_file(const char *path, size_t *len);

/*
 * Runs the sweep binary with the printf-style argument string through
 * /bin/sh, capturing stdout+stderr (caller frees *output, may pass NULL).
 * Returns the exit status (or -1 if it died by a signal).
 */
int tu_run_sweep(char **output, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * A CIFAR-10 binary folder in the real format: n_train records over
 * data_batch_1..5.bin (the first files take the remainder) and n_test in
 * test_batch.bin; random pixels and labels from seed. If test_is_train,
 * test_batch.bin holds the training records (n_test must equal n_train).
 */
void tu_write_cifar10(const char *dir, int n_train, int n_test, uint64_t seed,
                      int test_is_train);

/* model_build of spec into m, or the test fails with its message. */
void tu_model(Model *m, const ModelSpec *spec);

/* A run folder's checkpoint with the model its config describes on
 * CIFAR-shaped data (10 classes, 3x32x32); fails the test on error. */
typedef struct {
    Model m;
    float *params, *state, *mom;
    CheckpointMeta meta;
} TuCheckpoint;
void tu_checkpoint_load(TuCheckpoint *l, const char *dir, const TrainConfig *c);
void tu_checkpoint_free(TuCheckpoint *l);

/* The checkpoints in run folders a and b hold the very same run: step,
 * epoch, and bit for bit the parameters, statistics and momentum. */
void tu_assert_same_run(const char *a, const char *b, const TrainConfig *c);

/* train_run(c) must end with status want; fails the test naming the backend
 * and the error otherwise. */
void tu_train(const TrainConfig *c, int want);

/*
 * Bit-exact resume: c (its out ignored) trained straight into root/straight,
 * stopped after stop_step steps into root/part, resumed from that
 * checkpoint into root/cont; the last two must be the very same run.
 */
void tu_resume_case(const TrainConfig *c, const char *root, int64_t stop_step);

/* Path under the source tree (fixtures). Static buffer. */
const char *tu_source_path(const char *rel);

#endif
